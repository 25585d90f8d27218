"""Reading Node objects: which nodes a run may use, and the reason for every one it may not."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from kubernetes import client

from atoll.api.spec import PlacementSpec, Toleration
from atoll.operator.placement import read_fleet
from atoll.operator.placement.gpus import canonical_product, lookup
from tests.placement.fleets import NOW, PRODUCTS, node

H100, L4, T4 = PRODUCTS[0], PRODUCTS[5], PRODUCTS[8]


def only_reason(nodes: list[dict[str, Any]], **options: Any) -> tuple[str, str]:
    fleet = read_fleet(nodes, now=NOW, **options)
    assert fleet.nodes == ()
    (exclusion,) = fleet.excluded
    return exclusion.kind, exclusion.reason


def test_a_healthy_gfd_node_is_usable() -> None:
    fleet = read_fleet([node("a", H100, 8)], now=NOW)
    (gpu,) = fleet.nodes
    assert (gpu.name, gpu.product, gpu.memory_mib, gpu.gpus, gpu.free_gpus, gpu.compute_major) == (
        "a",
        "NVIDIA-H100-80GB-HBM3",
        81559,
        8,
        8,
        9,
    )


@pytest.mark.parametrize(
    ("state", "kind", "reason"),
    [
        ("cordoned", "cordoned", "cordoned (spec.unschedulable)"),
        ("notready", "not-ready", "NotReady (KubeletReady)"),
        ("unhealthy", "unhealthy", "GPU unhealthy: gpu 0: 2 uncorrected ECC errors"),
        ("stale", "stale", "agent heartbeat 1800s old (limit 180s)"),
        ("tainted", "constraint", "taint dedicated=inference:NoSchedule not tolerated (placement.tolerations)"),
        ("no-gpu", "no-gpu", "no allocatable nvidia.com/gpu"),
    ],
)
def test_unusable_states_are_excluded_with_their_reason(state: str, kind: str, reason: str) -> None:
    assert only_reason([node("a", H100, 8, state)]) == (kind, reason)


def test_placement_constraints() -> None:
    t4 = node("t4", T4, 4, extra_labels={"pool": "batch"})
    assert only_reason([t4], placement=PlacementSpec.model_validate({"gpu": {"minMemoryGiB": 16}})) == (
        "constraint",
        "15.0 GiB GPUs < placement.gpu.minMemoryGiB 16",
    )
    assert only_reason([t4], placement=PlacementSpec.model_validate({"gpu": {"products": ["NVIDIA-L4"]}})) == (
        "constraint",
        "Tesla-T4 not in placement.gpu.products",
    )
    assert only_reason([t4], placement=PlacementSpec.model_validate({"nodeSelector": {"pool": "train"}})) == (
        "constraint",
        "label pool=train missing (placement.nodeSelector)",
    )
    assert only_reason([t4], needs_bf16=True) == (
        "constraint",
        "Tesla-T4 has no bf16 (compute capability 7) and precision is bf16",
    )
    # products match however NVML or GFD spell them
    allowed = PlacementSpec.model_validate({"gpu": {"products": ["Tesla T4"]}, "nodeSelector": {"pool": "batch"}})
    assert [n.name for n in read_fleet([t4], placement=allowed, now=NOW).nodes] == ["t4"]


def test_tolerations_follow_kubernetes_rules() -> None:
    tainted = node("a", L4, 4, "tainted")  # dedicated=inference:NoSchedule (and the GPU taint)
    for toleration in (
        Toleration(key="dedicated", operator="Equal", value="inference"),
        Toleration(key="dedicated", operator="Exists", effect="NoSchedule"),
        Toleration(operator="Exists"),
    ):
        placement = PlacementSpec(tolerations=[toleration])
        assert [n.name for n in read_fleet([tainted], placement=placement, now=NOW).nodes] == ["a"], toleration
    for toleration in (
        Toleration(key="dedicated", operator="Equal", value="training"),
        Toleration(key="dedicated", operator="Exists", effect="NoExecute"),
    ):
        assert read_fleet([tainted], placement=PlacementSpec(tolerations=[toleration]), now=NOW).nodes == ()


def test_gpus_used_by_other_pods_lower_capacity() -> None:
    fleet = read_fleet([node("a", H100, 8), node("b", H100, 2)], used_gpus={"a": 3, "b": 2}, now=NOW)
    assert [(n.name, n.free_gpus) for n in fleet.nodes] == [("a", 5)]
    assert fleet.exclusion("b") is not None
    assert fleet.excluded[0].reason == "all 2 GPUs in use by other pods"


def test_no_agent_means_gfd_labels_alone_decide() -> None:
    assert [n.name for n in read_fleet([node("a", L4, 4, agent=False)], now=NOW).nodes] == ["a"]


def test_agent_annotations_stand_in_for_missing_gfd_labels() -> None:
    bare = node("a", L4, 4)
    for key in ("nvidia.com/gpu.product", "nvidia.com/gpu.memory", "nvidia.com/gpu.compute.major"):
        del bare["metadata"]["labels"][key]
    assert only_reason([bare])[0] == "bad-node"
    bare["metadata"]["annotations"]["atoll.dev/gpu-product"] = "NVIDIA-L4"
    bare["metadata"]["annotations"]["atoll.dev/gpu-memory-mib"] = "23034"
    (gpu,) = read_fleet([bare], now=NOW).nodes
    assert (gpu.product, gpu.memory_mib) == ("NVIDIA-L4", 23034)


def test_unreadable_labels_and_annotations_exclude_the_node_with_the_field_named() -> None:
    broken = node("a", L4, 4)
    broken["metadata"]["labels"]["nvidia.com/gpu.memory"] = "lots"
    assert only_reason([broken]) == ("bad-node", "nvidia.com/gpu.memory is not an integer: 'lots'")
    broken["metadata"]["labels"]["nvidia.com/gpu.memory"] = "0"
    assert only_reason([broken]) == ("bad-node", "nvidia.com/gpu.memory must be a positive number of MiB, got '0'")
    broken = node("a", L4, 4)
    broken["status"]["allocatable"]["nvidia.com/gpu"] = "four"
    assert only_reason([broken]) == ("bad-node", "status.allocatable[nvidia.com/gpu] is not an integer: 'four'")
    broken = node("a", L4, 4)
    broken["metadata"]["annotations"]["atoll.dev/gpu-heartbeat"] = "yesterday"
    assert only_reason([broken]) == ("stale", "unreadable atoll.dev/gpu-heartbeat annotation 'yesterday'")


def test_kubernetes_client_models_and_operator_views_are_accepted() -> None:
    raw = node("a", H100, 8)
    model = client.ApiClient()._ApiClient__deserialize(raw, "V1Node")  # what CoreV1Api.read_node returns
    assert isinstance(model, client.V1Node)
    assert read_fleet([model], now=NOW).nodes == read_fleet([raw], now=NOW).nodes
    view = SimpleNamespace(
        name="a",
        labels=raw["metadata"]["labels"],
        annotations=raw["metadata"]["annotations"],
        gpus=8,
        unschedulable=False,
        ready=True,
        taints=tuple(raw["spec"]["taints"]),
    )
    assert read_fleet([view], now=NOW).nodes == read_fleet([raw], now=NOW).nodes
    with pytest.raises(TypeError, match="expected a Node mapping"):
        read_fleet([42], now=NOW)


@pytest.mark.parametrize(
    ("label", "key"),
    [
        ("NVIDIA-H100-80GB-HBM3", "H100-SXM"),
        ("NVIDIA-H100-PCIe", "H100-PCIe"),
        ("NVIDIA-H100-NVL", "H100-NVL"),
        ("NVIDIA-H200", "H200"),
        ("NVIDIA-A100-SXM4-40GB", "A100"),
        ("NVIDIA-A100-80GB-PCIe", "A100-PCIe"),
        ("NVIDIA-L40S", "L40S"),
        ("NVIDIA-L40", "L40"),
        ("NVIDIA-L4", "L4"),
        ("NVIDIA-GeForce-RTX-4090", "RTX-4090"),
        ("NVIDIA-A10G", "A10G"),
        ("NVIDIA-A10", "A10"),
        ("Tesla-T4", "T4"),
        ("Tesla-V100-SXM2-16GB", "V100"),
        ("NVIDIA GeForce RTX 3090", "RTX-3090"),
    ],
)
def test_catalogue_matches_gfd_and_nvml_names(label: str, key: str) -> None:
    entry = lookup(label)
    assert entry is not None
    assert entry.key == key


def test_unknown_and_mig_products_are_not_catalogued() -> None:
    assert lookup("NVIDIA-A100-SXM4-40GB-MIG-1g.5gb") is None
    assert lookup("Radeon-Instinct-MI300X") is None
    assert canonical_product(" NVIDIA  H100 80GB HBM3 ") == "NVIDIA-H100-80GB-HBM3"
