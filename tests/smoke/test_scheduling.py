"""Smoke test (a): the real kube-scheduler places GPU pods on the fake fleet by product, and
a pod asking for a product the fleet lacks stays Pending with a FailedScheduling event."""

from __future__ import annotations

from typing import Any

import pytest

from tests.env import kube
from tests.env.cluster import ControlPlane
from tests.env.fleet import GPU_TAINT, Fleet

pytestmark = pytest.mark.cluster


def gpu_pod(name: str, product: str, command: list[str]) -> dict[str, Any]:
    affinity = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "nvidia.com/gpu.product", "operator": "In", "values": [product]}]}
                ]
            }
        }
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "affinity": affinity,
            "tolerations": [{"key": GPU_TAINT["key"], "operator": "Exists", "effect": "NoSchedule"}],
            "containers": [
                {"name": "main", "image": "atoll", "command": command, "resources": {"limits": {"nvidia.com/gpu": "1"}}}
            ],
        },
    }


def test_the_fleet_is_heterogeneous_and_labelled(fleet: Fleet, control_plane: ControlPlane) -> None:
    listed = control_plane.kubectl_json("get", "nodes")["items"]
    products = {n["metadata"]["labels"].get("nvidia.com/gpu.product") for n in listed} - {None}
    assert len(products) >= 4
    assert products == fleet.products
    for node in listed:
        labels = node["metadata"]["labels"]
        if "nvidia.com/gpu.product" not in labels:
            continue
        for key in ("memory", "count", "family", "compute.major"):
            assert labels[f"nvidia.com/gpu.{key}"], (node["metadata"]["name"], key)
        assert node["status"]["allocatable"]["nvidia.com/gpu"] == labels["nvidia.com/gpu.count"]
        assert GPU_TAINT in node["spec"]["taints"]
        assert kube.node_ready(node), node["metadata"]["name"]


def test_scheduler_binds_each_product_to_its_nodes(fleet: Fleet, core_v1: Any, namespace: str) -> None:
    pods = {}
    for index, product in enumerate(sorted(fleet.products)):
        pod = gpu_pod(f"gpu-{index}", product, ["python", "-c", "pass"])
        core_v1.create_namespaced_pod(namespace, pod)
        pods[pod["metadata"]["name"]] = product
    for name, product in pods.items():
        bound = kube.wait_for(
            lambda name=name: (kube.read_pod(core_v1, namespace, name) or {}).get("spec", {}).get("nodeName"),
            timeout=60,
            what=f"pod {name} bound",
        )
        assert bound in fleet.with_product(product), (name, product, bound)


def test_unknown_product_stays_pending_with_failed_scheduling(fleet: Fleet, core_v1: Any, namespace: str) -> None:
    assert "NVIDIA-B200" not in fleet.products
    core_v1.create_namespaced_pod(namespace, gpu_pod("b200", "NVIDIA-B200", ["python", "-c", "pass"]))
    event = kube.wait_for(
        lambda: [e for e in kube.events_for(core_v1, namespace, "b200") if e["reason"] == "FailedScheduling"],
        timeout=60,
        what="a FailedScheduling event",
    )[0]
    assert event["type"] == "Warning"
    assert "affinity" in event["message"], event["message"]
    pod = kube.read_pod(core_v1, namespace, "b200")
    assert pod is not None
    assert pod["status"]["phase"] == "Pending"
    assert not pod["spec"].get("nodeName")


def test_kwok_runs_pods_of_the_nodes_it_simulates(fleet: Fleet, core_v1: Any, namespace: str, pod_runtime: Any) -> None:
    pod = {
        "metadata": {"name": "cpu-pod"},
        "spec": {
            "nodeSelector": {"atoll.dev/pool": "cpu"},
            "containers": [{"name": "main", "image": "atoll", "command": ["sleep", "3600"]}],
        },
    }
    core_v1.create_namespaced_pod(namespace, pod)
    running = kube.wait_for_pod(core_v1, namespace, "cpu-pod", phases={"Running"})
    assert running["spec"]["nodeName"] in fleet.simulated()
    assert pod_runtime.state(namespace, "cpu-pod") is None  # kwok's stages, not a local process
