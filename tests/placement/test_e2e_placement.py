"""Placement end to end: the real operator plans a run on the heterogeneous kwok fleet, its experts
land on the planned GPU products, and deleting the fastest node under an expert makes the run
plan again and finish. Every pod really trains (tiny preset) through the pod runtime.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from atoll.api import DDMRunSpec
from atoll.operator.placement import plan_run
from tests.env import fleet as fleet_builders
from tests.env.cluster import ControlPlane
from tests.env.runtime_process import PodRuntimeProcess
from tests.operator.conftest import (  # noqa: F401 - fixtures used by this module
    SECRET,
    OperatorProcess,
    apply,
    atoll_crds,
    phase,
    start_operator,
    store_secret,
    wait_run,
)

pytestmark = [pytest.mark.cluster, pytest.mark.minio, pytest.mark.e2e]

FASTEST = fleet_builders.H100.product


def small_run() -> dict[str, Any]:
    return {
        "apiVersion": "atoll.dev/v1alpha1",
        "kind": "DDMRun",
        "metadata": {"name": "placed"},
        "spec": {
            "dataset": {"uri": "builtin://digits", "resolution": 8, "maxExamples": 160},
            "partition": {"clusters": 2, "features": "pixels", "fineClusters": 16, "sampleSize": 160, "iterations": 5},
            "expert": {"preset": "tiny", "steps": 40, "globalBatchSize": 16, "checkpointEvery": 10},
            "router": {"preset": "tiny", "steps": 10, "globalBatchSize": 16, "checkpointEvery": 10},
            "sampling": {"strategy": "top-1", "steps": 2, "guidance": 1.0},
            "evaluation": {"samples": 4, "strategies": ["top-1"]},
            "failurePolicy": {"maxRestarts": 3, "backoffSeconds": 1, "maxBackoffSeconds": 4},
        },
    }


def experts(control_plane: ControlPlane, namespace: str) -> dict[int, dict[str, Any]]:
    items = control_plane.kubectl_json("get", "ddmexperts", "-n", namespace)["items"]
    return {item["spec"]["expert"]: item.get("status") or {} for item in items}


def test_experts_follow_the_plan_and_replan_when_the_fastest_node_goes(  # noqa: PLR0917 - fixtures
    control_plane: ControlPlane,
    atoll_crds: ControlPlane,  # noqa: F811
    fleet: fleet_builders.Fleet,
    pod_runtime: PodRuntimeProcess,
    core_v1: Any,
    namespace: str,
    store_secret: str,  # noqa: F811
    start_operator: Callable[..., OperatorProcess],  # noqa: F811
) -> None:
    run = small_run()
    # The plan the operator should follow, from the fleet as the API server has it.
    nodes = control_plane.kubectl_json("get", "nodes")["items"]
    spec = DDMRunSpec.model_validate(run["spec"]).model_copy()
    spec.placement.gpu.max_per_expert = 1  # the operator's --max-gpus-per-pod 1 on fake GPUs
    expected = plan_run(spec, nodes)
    assert {a.gpu_product for a in expected.assignments} == {FASTEST}

    start_operator("--default-store", store_secret, "--default-store-secret", SECRET, "--max-gpus-per-pod", "1")
    apply(control_plane, namespace, run)

    def both_running(_: dict[str, Any]) -> bool:
        statuses = experts(control_plane, namespace)
        return len(statuses) == 2 and all(s.get("phase") == "Running" and s.get("node") for s in statuses.values())

    wait_run(control_plane, namespace, "placed", both_running, timeout=420, what="both experts running")
    placed = experts(control_plane, namespace)
    for k, status in placed.items():
        assert status["gpu"] == FASTEST, f"expert {k} on {status['gpu']}, the plan says {FASTEST}"
        assert status["microBatch"] * status["gradAccum"] == 16
        assert status.get("predictedSeconds", 0) > 0

    # The fastest node under expert 0 disappears: the run plans again and finishes.
    lost = placed[0]["node"]
    manifest = next(n for n in fleet.nodes if n["metadata"]["name"] == lost)
    control_plane.kubectl("delete", "node", lost, "--wait=false")
    try:

        def moved(_: dict[str, Any]) -> bool:
            status = experts(control_plane, namespace)[0]
            return status.get("attempt", 0) >= 2 and status.get("phase") in ("Running", "Succeeded")

        wait_run(control_plane, namespace, "placed", moved, timeout=240, what="expert 0 placed again")
        again = experts(control_plane, namespace)[0]
        assert again["node"] != lost
        assert again["gpu"] == FASTEST, "the remaining H100 node is still the fastest place"
        wait_run(control_plane, namespace, "placed", lambda r: phase(r) == "Succeeded", timeout=600, what="Succeeded")
    finally:
        fleet_builders.apply(core_v1, [manifest])  # the next test gets the whole fleet back
