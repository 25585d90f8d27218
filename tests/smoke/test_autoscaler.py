"""Smoke test of the autoscaler in the test environment: Karpenter's kwok provider creates a
node of the GPU product a pending pod asks for, labelled the way GPU Feature Discovery labels
the static fleet, and removes it once the pod is gone. Plus its pure builders."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest

from atoll.operator.placement.autoscalers import protecting_annotations
from tests.env import fleet, kube
from tests.env import karpenter as karpenter_env
from tests.env.cluster import KWOK_NODE_ANNOTATION, ControlPlane
from tests.env.karpenter import GPU_INSTANCE_TYPES, Karpenter, instance_types, node_class, node_pool

OPT_IN_TAINT = {"key": "atoll.dev/autoscaling-test", "value": "true", "effect": "NoSchedule"}
"""Only pods tolerating it make these NodePools grow: other tests' pending pods in the shared
control plane never do."""


def test_instance_types_declare_every_product_with_its_labels_and_price() -> None:
    documents = {document["name"]: document for document in instance_types()}
    products = {kind.gpu.product for kind in GPU_INSTANCE_TYPES}
    assert products == {gpu.product for gpu in fleet.PRODUCTS}
    for kind in GPU_INSTANCE_TYPES:
        document = documents[kind.name]
        assert document["resources"]["nvidia.com/gpu"] == str(kind.gpus)
        on_demand, spot = document["offerings"]
        assert on_demand["Price"] == pytest.approx(kind.gpus * kind.price_per_gpu_hour)
        assert spot["Price"] < on_demand["Price"]
        labels = {r["key"]: r["values"][0] for r in on_demand["Requirements"]}
        assert labels["karpenter.sh/capacity-type"] == "on-demand"
        assert labels == {**labels, **fleet.gpu_labels(kind.gpu, kind.gpus)}
    h100, t4 = (next(k for k in GPU_INSTANCE_TYPES if k.gpu == gpu) for gpu in (fleet.H100, fleet.T4))
    assert h100.price_per_gpu_hour > t4.price_per_gpu_hour
    json.dumps(instance_types())  # the file Karpenter reads


def test_node_pool_limits_gpus_of_one_product() -> None:
    pool = node_pool("l4", fleet.L4, limit_gpus=8, consolidate_after_s=5)
    spec = pool["spec"]
    assert spec["limits"] == {"nvidia.com/gpu": "8"}
    assert {"key": "nvidia.com/gpu.product", "operator": "In", "values": [fleet.L4.product]} in spec["template"][
        "spec"
    ]["requirements"]
    assert spec["template"]["metadata"]["labels"] == {fleet.POOL_LABEL: "l4"}
    assert spec["template"]["spec"]["taints"] == [fleet.GPU_TAINT]
    assert spec["disruption"] == {"consolidationPolicy": "WhenEmpty", "consolidateAfter": "5s"}
    assert node_class(registration_delay_s=30)["spec"] == {"nodeRegistrationDelay": "30s"}
    with pytest.raises(ValueError, match="limit_gpus"):
        node_pool("l4", fleet.L4, limit_gpus=-1)


def _gpu_pod(name: str, product: str, pool: str) -> dict[str, Any]:
    """A pod for one GPU of `product` from NodePool `pool`, annotated like Atoll's stage pods."""
    term = {"matchExpressions": [{"key": "nvidia.com/gpu.product", "operator": "In", "values": [product]}]}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "annotations": protecting_annotations()},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 0,
            "nodeSelector": {fleet.POOL_LABEL: pool},
            "affinity": {
                "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [term]}}
            },
            "tolerations": [
                {"key": fleet.GPU_TAINT["key"], "operator": "Exists", "effect": "NoSchedule"},
                {"key": OPT_IN_TAINT["key"], "operator": "Exists", "effect": "NoSchedule"},
            ],
            "containers": [
                {
                    "name": "main",
                    "image": "atoll",
                    "command": ["sleep", "3600"],
                    "resources": {
                        "requests": {"cpu": "100m", "memory": "64Mi"},
                        "limits": {"nvidia.com/gpu": "1"},
                    },
                }
            ],
        },
    }


def _node(control_plane: ControlPlane, name: str) -> dict[str, Any] | None:
    result = control_plane.kubectl("get", "node", name, "-o", "json", check=False)
    return json.loads(result.stdout) if result.returncode == 0 else None


def _finish(core_v1: Any, namespace: str, name: str) -> None:
    """What a kubelet reports when the pod's process exits 0 (kwok never completes a bare pod)."""
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    terminated = {"exitCode": 0, "reason": "Completed", "startedAt": now, "finishedAt": now}
    status = {
        "phase": "Succeeded",
        "containerStatuses": [
            {"name": "main", "image": "atoll", "imageID": "", "ready": False, "restartCount": 0,
             "state": {"terminated": terminated}}
        ],
    }  # fmt: skip
    core_v1.patch_namespaced_pod_status(name, namespace, {"status": status})


def test_pending_gpu_pods_get_nodes_of_their_product_up_to_the_limit_which_go_away_once_the_pods_are_done(
    control_plane: ControlPlane, core_v1: Any, karpenter: Karpenter, namespace: str
) -> None:
    suffix = uuid.uuid4().hex[:6]
    pools = {gpu: f"{karpenter_env.slug(gpu)}-{suffix}" for gpu in (fleet.L4, fleet.T4)}
    limits = {fleet.L4: 1, fleet.T4: 4}
    manifests = [node_class(f"test-{suffix}")] + [
        node_pool(
            name, gpu, limit_gpus=limits[gpu], consolidate_after_s=5,
            taints=(fleet.GPU_TAINT, OPT_IN_TAINT), node_class_name=f"test-{suffix}",
        )
        for gpu, name in pools.items()
    ]  # fmt: skip
    control_plane.kubectl("apply", "-f", "-", input="\n---\n".join(json.dumps(m) for m in manifests))
    started = time.monotonic()
    pods = {gpu: f"wants-{karpenter_env.slug(gpu)}" for gpu in pools}
    for gpu, name in pods.items():
        core_v1.create_namespaced_pod(namespace, _gpu_pod(name, gpu.product, pools[gpu]))
    nodes = {}
    for gpu, name in pods.items():
        try:
            pod = kube.wait_for_pod(core_v1, namespace, name, phases=("Running",), timeout=120)
        except TimeoutError as error:
            raise AssertionError(f"{error}\nKarpenter's log ends:\n{karpenter.log_tail()}") from None
        node = _node(control_plane, pod["spec"]["nodeName"])
        assert node is not None
        nodes[gpu] = node["metadata"]["name"]
        labels = node["metadata"]["labels"]
        assert labels["karpenter.sh/nodepool"] == pools[gpu]
        assert labels[fleet.POOL_LABEL] == pools[gpu]
        assert labels["node.kubernetes.io/instance-type"] == f"{karpenter_env.slug(gpu)}-1x"  # cheapest that fits
        assert {key: labels[key] for key in fleet.gpu_labels(gpu, 1)} == fleet.gpu_labels(gpu, 1)
        assert node["status"]["allocatable"]["nvidia.com/gpu"] == "1"
        assert fleet.GPU_TAINT in node["spec"]["taints"]
        assert node["metadata"]["annotations"][KWOK_NODE_ANNOTATION] == "fake"  # kwok runs it, not the pod runtime
        assert fleet.EXECUTE_LABEL not in labels
    provisioned_s = time.monotonic() - started

    # The L4 NodePool may hold one GPU: one more L4 pod stays Pending, and Karpenter says why.
    core_v1.create_namespaced_pod(namespace, _gpu_pod("one-too-many", fleet.L4.product, pools[fleet.L4]))
    kube.wait_for(
        lambda: [e for e in kube.events_for(core_v1, namespace, "one-too-many") if "exceed limits" in e["message"]],
        timeout=60,
        what="Karpenter's event that the L4 NodePool is at its GPU limit",
    )
    assert (kube.read_pod(core_v1, namespace, "one-too-many") or {})["status"]["phase"] == "Pending"
    assert (
        len(control_plane.kubectl_json("get", "nodes", "-l", f"karpenter.sh/nodepool={pools[fleet.L4]}")["items"]) == 1
    )
    core_v1.delete_namespaced_pod("one-too-many", namespace, grace_period_seconds=0)

    # One pod is deleted; the other finishes and stays, still annotated do-not-disrupt: a
    # finished pod must not hold its node.
    started = time.monotonic()
    core_v1.delete_namespaced_pod(pods[fleet.L4], namespace, grace_period_seconds=0)
    _finish(core_v1, namespace, pods[fleet.T4])
    finished = kube.read_pod(core_v1, namespace, pods[fleet.T4])
    assert finished is not None
    assert finished["status"]["phase"] == "Succeeded"
    assert finished["spec"]["nodeName"] == nodes[fleet.T4]  # pod GC takes it only once the node is gone
    for gpu, name in nodes.items():
        kube.wait_for(
            lambda name=name: _node(control_plane, name) is None,
            timeout=180,
            what=f"Karpenter to remove the node {name} of {gpu.product}",
            interval=1.0,
        )
    removed_s = time.monotonic() - started
    for name in pools.values():
        claims = control_plane.kubectl(
            "get", "nodeclaims.karpenter.sh", "-l", f"karpenter.sh/nodepool={name}", "-o", "name"
        )
        assert claims.stdout.split() == []
    print(
        f"2 nodes provisioned, pods Running in {provisioned_s:.1f}s; removed {removed_s:.1f}s after the pods were done"
    )
