"""A pinned expert pod that its planned node never takes, against the real control plane, MinIO,
scheduler and operator: once failurePolicy.pendingTimeoutSeconds has passed, the pod is deleted
and the expert placed again on another node (no restart counted), with a Warning Event and the
expert's lastFailure saying why; meanwhile the run shows Schedulable=False with the scheduler's
reason. The test ends once the new pods run on their new nodes (the rest of the run is the
ordinary pipeline, tested elsewhere).

How a pinned pod stays Pending: the planner weighs GPUs, CPU and memory, not inter-pod
anti-affinity. A pod on the H100 node with free GPUs refuses expert pods beside it (a required
anti-affinity of its own), every GPU of the other H100 node is held by another pod, and the
spec's speed table makes an H100 far faster than anything else: the plan pins both experts to
the first node, which the scheduler refuses for the existing pod's anti-affinity.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.env import fleet as fleet_builders
from tests.env.cluster import ControlPlane
from tests.env.runtime_process import PodRuntimeProcess
from tests.operator.conftest import SECRET, OperatorProcess, apply, condition, holder_pod, phase, run_object

pytestmark = [pytest.mark.cluster, pytest.mark.minio, pytest.mark.e2e]

H100 = fleet_builders.H100.product
TIMEOUT = 10  # failurePolicy.pendingTimeoutSeconds (its lower bound)
NO_EXPERTS_BESIDE = {
    "podAntiAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": {"atoll.dev/stage": "expert"}}, "topologyKey": "kubernetes.io/hostname"}
        ]
    }
}
"""A pod's required anti-affinity against expert pods on its node: kube-scheduler keeps them off it."""


def test_a_pod_its_planned_node_never_takes_is_placed_elsewhere_after_the_timeout(  # noqa: PLR0917 - fixtures
    control_plane: ControlPlane,
    atoll_crds: ControlPlane,
    fleet: fleet_builders.Fleet,
    pod_runtime: PodRuntimeProcess,
    namespace: str,
    store_secret: str,
    start_operator: Callable[..., OperatorProcess],
) -> None:
    blocked, full = sorted(fleet.with_product(H100))
    holders = {
        "loner": holder_pod("loner", blocked, {"cpu": "100m"}, affinity=NO_EXPERTS_BESIDE),
        "gpu-holder": holder_pod("gpu-holder", full, {"nvidia.com/gpu": "8"}),
    }
    for manifest in holders.values():
        apply(control_plane, namespace, manifest)
    slow = {product: 1.0 for product in fleet.products if product != H100}
    run = {
        "apiVersion": "atoll.dev/v1alpha1",
        "kind": "DDMRun",
        "metadata": {"name": "pinned"},
        "spec": {
            "dataset": {"uri": "builtin://digits", "resolution": 8, "maxExamples": 64},
            "partition": {"clusters": 2, "features": "pixels", "fineClusters": 8, "sampleSize": 64},
            "expert": {"preset": "tiny", "steps": 10, "globalBatchSize": 8},
            "router": {"preset": "tiny", "steps": 10, "globalBatchSize": 8},
            "sampling": {"steps": 4},
            "evaluation": {"samples": 8, "strategies": ["top-1"]},
            "placement": {"gpu": {"maxPerExpert": 1}, "speeds": {H100: 1000.0, **slow}},
            "failurePolicy": {
                "maxRestarts": 1, "backoffSeconds": 1, "maxBackoffSeconds": 2, "pendingTimeoutSeconds": TIMEOUT,
            },
        },
    }  # fmt: skip
    start_operator("--default-store", store_secret, "--default-store-secret", SECRET)
    try:
        apply(control_plane, namespace, run)

        def experts() -> dict[int, dict[str, Any]]:
            items = control_plane.kubectl_json("get", "ddmexperts", "-n", namespace)["items"]
            return {item["spec"]["expert"]: item.get("status") or {} for item in items}

        def pod(name: str) -> dict[str, Any] | None:
            found = control_plane.kubectl("get", "pod", name, "-n", namespace, "-o", "json", check=False)
            return json.loads(found.stdout) if found.returncode == 0 else None

        unschedulable: dict[str, Any] = {}

        def watch_schedulable() -> None:
            seen = condition(run_object(control_plane, namespace, "pinned"), "Schedulable")
            if not unschedulable and seen.get("status") == "False":
                unschedulable.update(seen)

        # After the timeout: deleted, placed again elsewhere, running there.
        def placed_elsewhere() -> bool:
            watch_schedulable()
            found = experts()
            if len(found) != 2:
                return False
            for k, status in found.items():
                if status.get("attempt", 0) < 2 or status.get("node") in (None, blocked):
                    return False
                again = pod(f"pinned-expert-{k}-a{status['attempt']}")
                if again is None or again["spec"].get("nodeName") in (None, blocked):
                    return False
                if again["status"].get("phase") != "Running":
                    return False
            return True

        deadline = time.monotonic() + 300  # the partition first, then the timeout
        while not placed_elsewhere():
            assert time.monotonic() < deadline, (
                f"not placed elsewhere: {json.dumps(experts())[:2000]}"
                f" {json.dumps(run_object(control_plane, namespace, 'pinned').get('status'))[:2000]}"
            )
            time.sleep(1)
        assert unschedulable.get("reason") == "Unschedulable", unschedulable
        assert "anti-affinity" in unschedulable["message"], unschedulable
        for k, status in experts().items():
            assert (status["attempt"], status["restarts"]) == (2, 0), f"expert {k}: a wrong placement is no failure"
            waited = f"on its planned node {blocked} (failurePolicy.pendingTimeoutSeconds is {TIMEOUT})"
            assert waited in status["lastFailure"], f"the plan pinned expert {k} to the H100 the loner refuses"
            assert "anti-affinity" in status["lastFailure"], status
            assert pod(f"pinned-expert-{k}-a1") is None, "the pod that waited is deleted"
        events = control_plane.kubectl_json("get", "events", "-n", namespace)["items"]
        timeouts = [e for e in events if e["reason"] == "PendingTimeout"]
        assert sorted(e["involvedObject"]["name"] for e in timeouts) == ["pinned-expert-0", "pinned-expert-1"]
        assert all(e["type"] == "Warning" and blocked in e["message"] for e in timeouts), timeouts
        assert phase(run_object(control_plane, namespace, "pinned")) == "Training"
    finally:
        control_plane.kubectl(
            "delete", "pod", *holders, "-n", namespace, "--ignore-not-found", "--timeout=60s", check=False
        )
