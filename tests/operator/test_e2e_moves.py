"""An expert moves to faster GPUs that became free, at a checkpoint boundary, and resumes there.

The H100 nodes start full (other pods hold every GPU), so the experts start elsewhere. The
spec's speed table says an H100 is far faster than what they run on (their own measured
speed, CPU processes here, stands for the slow GPU); once the H100s are freed, the operator
plans a move, stops each expert right after its next checkpoint and restarts it on an H100,
where it resumes from that checkpoint. Moves are not failures.
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
from tests.operator.conftest import SECRET, OperatorProcess, apply

pytestmark = [pytest.mark.cluster, pytest.mark.minio, pytest.mark.e2e]

H100 = fleet_builders.H100.product


def hog(node: str, gpus: int) -> dict[str, Any]:
    """A pod holding every GPU of one node (a sleeping process under the pod runtime)."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"hog-{node}"},
        "spec": {
            "restartPolicy": "Never",
            "nodeSelector": {"kubernetes.io/hostname": node},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
            "containers": [
                {
                    "name": "hog",
                    "image": "busybox",
                    "command": ["python", "-c", "import time; time.sleep(3600)"],
                    "resources": {"limits": {"nvidia.com/gpu": str(gpus)}},
                }
            ],
        },
    }


def test_experts_move_to_faster_gpus_at_a_checkpoint(  # noqa: PLR0917 - fixtures
    control_plane: ControlPlane,
    atoll_crds: ControlPlane,
    fleet: fleet_builders.Fleet,
    pod_runtime: PodRuntimeProcess,
    namespace: str,
    store_secret: str,
    start_operator: Callable[..., OperatorProcess],
) -> None:
    h100s = fleet.with_product(H100)
    for node in h100s:
        apply(control_plane, namespace, hog(node, 8))
    slow = {product: 1.0 for product in fleet.products if product != H100}
    run = {
        "apiVersion": "atoll.dev/v1alpha1",
        "kind": "DDMRun",
        "metadata": {"name": "movers"},
        "spec": {
            "dataset": {"uri": "builtin://digits", "resolution": 8, "maxExamples": 200},
            "partition": {"clusters": 2, "features": "pixels", "fineClusters": 16, "sampleSize": 200},
            "expert": {"preset": "tiny", "steps": 400, "globalBatchSize": 16, "checkpointEvery": 10},
            "router": {"preset": "tiny", "steps": 10, "globalBatchSize": 16},
            "placement": {"gpu": {"maxPerExpert": 1}, "speeds": {H100: 1000.0, **slow}},
        },
    }
    start_operator(
        "--default-store", store_secret, "--default-store-secret", SECRET, "--max-gpus-per-pod", "1",
        "--move-check", "2",
    )  # fmt: skip
    apply(control_plane, namespace, run)

    def experts() -> dict[int, dict[str, Any]]:
        items = control_plane.kubectl_json("get", "ddmexperts", "-n", namespace)["items"]
        return {item["spec"]["expert"]: item.get("status") or {} for item in items}

    deadline = time.monotonic() + 300
    while not (len(found := experts()) == 2 and all(s.get("phase") == "Running" for s in found.values())):
        assert time.monotonic() < deadline, f"experts not running: {json.dumps(experts())}"
        time.sleep(1)
    assert all(not s["node"].startswith("h100") for s in experts().values()), "the H100s were full"
    for node in h100s:
        control_plane.kubectl("delete", "pod", f"hog-{node}", "-n", namespace, "--wait=false")

    def moved() -> bool:
        return all(s.get("moves") == 1 and s.get("phase") == "Running" for s in experts().values())

    deadline = time.monotonic() + 300
    while not moved():
        assert time.monotonic() < deadline, f"no move happened: {json.dumps(experts())}"
        time.sleep(1)
    for k, status in experts().items():
        assert status["node"] in h100s, f"expert {k} moved to {status['node']}"
        assert status["gpu"] == H100
        assert (status["attempt"], status["restarts"], status["moves"]) == (2, 1, 1)
        assert status.get("lastFailure") is None, "a move is not a failure"
        log = ""
        deadline = time.monotonic() + 120
        while '"resumed"' not in log:
            assert time.monotonic() < deadline, f"expert {k} did not resume on the H100"
            time.sleep(1)
            log = pod_runtime.logs(namespace, f"movers-expert-{k}-a2")
        resumed = next(json.loads(line) for line in log.splitlines() if '"resumed"' in line and line.startswith("{"))
        assert resumed["step"] >= 10, "it resumed from the checkpoint it stopped at"
    events = control_plane.kubectl_json("get", "events", "-n", namespace)["items"]
    reasons = [e["reason"] for e in events if e["involvedObject"]["kind"] == "DDMExpert"]
    assert reasons.count("MovePlanned") == 2
    assert reasons.count("Moving") == 2
    control_plane.kubectl("delete", "ddmrun", "movers", "-n", namespace, "--timeout=120s")
