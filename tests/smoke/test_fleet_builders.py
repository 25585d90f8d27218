"""The fleet builders and the runtime's pure pod pieces, without a cluster: GPU Feature
Discovery labels, kwok vs executed nodes, large simulated fleets, and the kubelet's rules
for a container's environment and command."""

from __future__ import annotations

from collections import Counter

import pytest

from tests.env import fleet, pods


def test_default_fleet_has_five_gpu_products_executed_and_a_kwok_cpu_pool() -> None:
    nodes = fleet.default_fleet()
    names = [n["metadata"]["name"] for n in nodes]
    assert len(names) == len(set(names)) == 12
    assert fleet.products_of(nodes) == {p.product for p in fleet.PRODUCTS}
    families = {n["metadata"]["labels"].get("nvidia.com/gpu.family") for n in nodes} - {None}
    assert families == {"hopper", "ampere", "ada-lovelace", "turing"}
    for node in nodes:
        labels, annotations = node["metadata"]["labels"], node["metadata"]["annotations"]
        executed = labels.get(fleet.EXECUTE_LABEL) == "true"
        assert executed != ("kwok.x-k8s.io/node" in annotations)
        if "nvidia.com/gpu.product" in labels:
            assert executed
            assert node["status"]["capacity"]["nvidia.com/gpu"] == labels["nvidia.com/gpu.count"]
            assert node["spec"]["taints"] == [fleet.GPU_TAINT]
        else:
            assert not executed
            assert "nvidia.com/gpu" not in node["status"]["allocatable"]
    h100 = fleet.node(fleet.DEFAULT_POOLS[0], 0)["metadata"]["labels"]
    assert (h100["nvidia.com/gpu.memory"], h100["nvidia.com/gpu.compute.major"]) == ("81559", "9")


def test_simulated_fleet_spreads_kwok_nodes_over_the_products() -> None:
    nodes = fleet.simulated_fleet(1000)
    assert len({n["metadata"]["name"] for n in nodes}) == 1000
    per_product = Counter(n["metadata"]["labels"]["nvidia.com/gpu.product"] for n in nodes)
    assert set(per_product.values()) == {200}
    assert all(n["metadata"]["annotations"]["kwok.x-k8s.io/node"] == "fake" for n in nodes)
    assert not any(fleet.EXECUTE_LABEL in n["metadata"]["labels"] for n in nodes)
    assert len(fleet.simulated_fleet(7)) == 7
    with pytest.raises(ValueError, match="total"):
        fleet.simulated_fleet(-1)


POD = {"metadata": {"name": "p", "namespace": "ns", "uid": "u-1", "labels": {"a": "b"}}, "spec": {"nodeName": "n"}}


def lookup(objects: dict[str, dict[str, str]]) -> pods.Lookup:
    return lambda namespace, name: objects.get(f"{namespace}/{name}")


def test_environment_resolution_follows_the_kubelet() -> None:
    container = {
        "name": "c",
        "envFrom": [{"secretRef": {"name": "s"}, "prefix": "S_"}, {"configMapRef": {"name": "gone", "optional": True}}],
        "env": [
            {"name": "A", "value": "1"},
            {"name": "B", "value": "$(A)-$(MISSING)-$$(A)"},
            {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            {"name": "LABEL", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['a']"}}},
            {"name": "KEY", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "k"}}},
            {"name": "GPUS", "valueFrom": {"resourceFieldRef": {"resource": "limits.nvidia.com/gpu"}}},
            {"name": "MEM_MI", "valueFrom": {"resourceFieldRef": {"resource": "requests.memory", "divisor": "1Mi"}}},
        ],
        "resources": {"limits": {"nvidia.com/gpu": "2"}, "requests": {"memory": "1536Ki"}},
        "command": ["run", "$(A)"],
        "args": ["--node=$(NODE)"],
    }
    env = pods.resolve_env(
        POD, container, secret=lookup({"ns/s": {"x": "1", "bad-name!": "2"}}), config_map=lookup({"ns/cm": {"k": "v"}})
    )
    assert env == {
        "S_x": "1", "A": "1", "B": "1-$(MISSING)-$(A)", "NODE": "n", "LABEL": "b", "KEY": "v",
        "GPUS": "2", "MEM_MI": "2",
    }  # fmt: skip
    assert pods.command_of(container, env) == ["run", "1", "--node=n"]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ([{"name": "X", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "k"}}}], 'secret "nope" not found'),
        (
            [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "z"}}}],
            "couldn't find key z in ConfigMap ns/cm",
        ),
        ([{"name": "X", "valueFrom": {"fieldRef": {"fieldPath": "spec.hostname"}}}], "unsupported fieldRef"),
    ],
)
def test_missing_references_are_container_config_errors(env: list[dict[str, object]], message: str) -> None:
    with pytest.raises(pods.ContainerConfigError, match=message):
        pods.resolve_env(POD, {"name": "c", "env": env}, secret=lookup({}), config_map=lookup({"ns/cm": {"k": "v"}}))


def test_a_container_without_command_cannot_run_here() -> None:
    with pytest.raises(pods.ContainerConfigError, match="no command"):
        pods.command_of({"name": "c", "args": ["x"]}, {})
