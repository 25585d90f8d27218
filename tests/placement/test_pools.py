"""NodePools and declared pools read as growable capacity: product, GPU headroom, provisioning
delay, price, node labels; a bad declaration names its field."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from atoll.api.errors import SpecError
from atoll.api.load import parse_manifest
from atoll.operator.placement.pools import DEFAULT_PROVISIONING_SECONDS, declared_pools, read_node_pools
from tests.env import fleet
from tests.env.karpenter import dev_node_pools, node_pool


def _with(manifest: dict[str, Any], **annotations: str) -> dict[str, Any]:
    changed = copy.deepcopy(manifest)
    changed["metadata"]["annotations"] = annotations
    return changed


def test_every_product_node_pool_is_a_pool_with_its_gpu_headroom() -> None:
    manifests = [m for m in dev_node_pools() if m["kind"] == "NodePool"]
    manifests[2]["status"] = {"resources": {"nvidia.com/gpu": "3", "cpu": "36"}}  # autoscaled-l4 holds 3 GPUs
    read = read_node_pools(manifests)
    assert read.skipped == ()
    by_pool = {pool.pool: pool for pool in read.pools}
    assert set(by_pool) == {
        "autoscaled-h100",
        "autoscaled-a100-40gb",
        "autoscaled-l4",
        "autoscaled-rtx4090",
        "autoscaled-t4",
    }
    l4 = by_pool["autoscaled-l4"]
    assert (l4.product, l4.max_gpus, l4.gpus_in_use, l4.headroom_gpus) == (fleet.L4.product, 8, 3, 5)
    assert by_pool["autoscaled-h100"].product == fleet.H100.product
    assert by_pool["autoscaled-h100"].headroom_gpus == 16
    assert l4.provisioning_seconds == DEFAULT_PROVISIONING_SECONDS
    assert l4.cost_per_gpu_hour is None


def test_annotations_give_the_provisioning_delay_and_price() -> None:
    manifest = _with(node_pool("t4", fleet.T4, limit_gpus=4), **{
        "atoll.dev/provisioning-seconds": "90", "atoll.dev/cost-per-gpu-hour": "0.35"
    })  # fmt: skip
    (pool,) = read_node_pools([manifest]).pools
    assert (pool.provisioning_seconds, pool.cost_per_gpu_hour) == (90.0, 0.35)


def test_a_pool_over_its_limit_has_no_headroom_and_one_without_a_limit_is_unbounded() -> None:
    over = node_pool("t4", fleet.T4, limit_gpus=4)
    over["status"] = {"resources": {"nvidia.com/gpu": "6"}}
    unbounded = node_pool("l4", fleet.L4, limit_gpus=4)
    del unbounded["spec"]["limits"]
    pools = {pool.pool: pool for pool in read_node_pools([over, unbounded]).pools}
    assert pools["t4"].headroom_gpus == 0
    assert pools["l4"].headroom_gpus is None


def test_a_template_label_names_the_product_and_several_products_share_one_limit() -> None:
    labelled = node_pool("h100", fleet.H100, limit_gpus=8)
    labelled["spec"]["template"]["spec"]["requirements"] = []
    labelled["spec"]["template"]["metadata"]["labels"]["nvidia.com/gpu.product"] = fleet.H100.product
    mixed = node_pool("ada", fleet.L4, limit_gpus=8)
    mixed["spec"]["template"]["spec"]["requirements"][0]["values"] = [fleet.L4.product, fleet.RTX_4090.product]
    read = read_node_pools([labelled, mixed])
    assert [(p.pool, p.product) for p in read.pools] == [
        ("ada", fleet.RTX_4090.product), ("ada", fleet.L4.product), ("h100", fleet.H100.product)
    ]  # fmt: skip
    assert {p.max_gpus for p in read.pools if p.pool == "ada"} == {8}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda m: m["spec"]["template"]["spec"].update(requirements=[]), "no GPU product"),
        (
            lambda m: m["spec"]["template"]["spec"]["requirements"][0].update(operator="NotIn"),
            "spec.template.spec.requirements",
        ),
        (lambda m: m["spec"]["limits"].update({"nvidia.com/gpu": "1500m"}), "spec.limits.nvidia.com/gpu"),
        (
            lambda m: m["metadata"].update(annotations={"atoll.dev/provisioning-seconds": "soon"}),
            "provisioning-seconds",
        ),
        (lambda m: m["metadata"].update(annotations={"atoll.dev/cost-per-gpu-hour": "-1"}), "cost-per-gpu-hour"),
        (lambda m: m["metadata"].update(deletionTimestamp="2026-12-01T00:00:00Z"), "being deleted"),
    ],
)
def test_a_node_pool_the_planner_cannot_use_is_skipped_with_the_field(change: Any, field: str) -> None:
    manifest = node_pool("bad", fleet.T4, limit_gpus=4)
    change(manifest)
    good = node_pool("good", fleet.L4, limit_gpus=4)
    read = read_node_pools([manifest, good])
    assert [pool.pool for pool in read.pools] == ["good"]
    ((name, reason),) = read.skipped
    assert name == "bad"
    assert field in reason


def _manifest(pools: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "atoll.dev/v1alpha1",
        "kind": "DDMRun",
        "metadata": {"name": "r"},
        "spec": {"dataset": {"uri": "builtin://digits"}, "placement": {"pools": pools}},
    }


def test_declared_pools_count_the_gpus_their_nodes_hold_against_their_limit() -> None:
    pools = [
        {"name": "autoscaled-l4", "product": fleet.L4.product, "maxGpus": 4, "provisioningSeconds": 45},
        {
            "name": "gpu-a100",
            "product": fleet.A100_40GB.product,
            "maxGpus": 16,
            "gpusPerNode": 8,
            "costPerGpuHour": 1.5,
            "nodeLabels": {"eks.amazonaws.com/nodegroup": "gpu-a100"},
        },
    ]
    spec = parse_manifest(_manifest(pools), "run.yaml").spec
    nodes = [
        {
            "metadata": {"name": "l4-new", "labels": {"karpenter.sh/nodepool": "autoscaled-l4"}},
            "status": {"allocatable": {"nvidia.com/gpu": "1"}},
        },
        {
            "metadata": {"name": "a100-1", "labels": {"eks.amazonaws.com/nodegroup": "gpu-a100"}},
            "status": {"allocatable": {"nvidia.com/gpu": "8"}},
        },
        {"metadata": {"name": "other", "labels": {}}, "status": {"allocatable": {"nvidia.com/gpu": "8"}}},
    ]
    l4, a100 = declared_pools(spec.placement.pools, nodes)
    assert (l4.pool, l4.product, l4.max_gpus, l4.gpus_in_use, l4.headroom_gpus) == (
        "autoscaled-l4", fleet.L4.product, 4, 1, 3
    )  # fmt: skip
    assert (l4.provisioning_seconds, l4.cost_per_gpu_hour, l4.gpus_per_node) == (45, None, None)
    assert l4.node_labels == {"karpenter.sh/nodepool": "autoscaled-l4"}
    assert l4.placeholder == f"autoscaled-l4:{fleet.L4.product}"
    assert (a100.headroom_gpus, a100.gpus_per_node, a100.cost_per_gpu_hour) == (8, 8, 1.5)
    assert a100.node_labels == {"eks.amazonaws.com/nodegroup": "gpu-a100"}
    assert read_node_pools([node_pool("l4", fleet.L4, limit_gpus=4)]).pools[0].node_labels == {
        "karpenter.sh/nodepool": "l4"
    }


@pytest.mark.parametrize(
    ("pools", "field"),
    [
        ([{"name": "l4", "product": "NVIDIA-L4"}], "spec.placement.pools[0].maxGpus"),
        ([{"name": "l4", "product": "NVIDIA-L4", "maxGpus": 0}], "spec.placement.pools[0].maxGpus"),
        ([{"name": "l4", "product": "NVIDIA-L4", "maxGpus": 2, "provisioningSeconds": -1}], "provisioningSeconds"),
        ([{"name": "l 4", "product": "NVIDIA-L4", "maxGpus": 2}], "spec.placement.pools[0].name"),
        ([{"name": "l4", "product": "NVIDIA-L4", "maxGpus": 2, "nodeLabels": {"bad key!": "x"}}], "nodeLabels"),
        ([{"name": "l4", "product": "NVIDIA-L4", "maxGpus": 2, "speed": 3}], "spec.placement.pools[0].speed"),
        ([{"name": "l4", "product": "NVIDIA-L4", "maxGpus": 2}] * 2, "spec.placement.pools"),
    ],
)
def test_a_bad_pool_declaration_names_the_field(pools: list[dict[str, Any]], field: str) -> None:
    with pytest.raises(SpecError) as caught:
        parse_manifest(_manifest(pools), "run.yaml")
    assert field in str(caught.value)
