"""The planner weighs host CPU, against the real control plane, MinIO, scheduler and operator: a
node whose CPU another pod holds is left out, and the run's experts are pinned to a node whose
free CPU and memory hold their pods, where the scheduler binds them.

Every CPU of the H100 node with free GPUs is held by a pod without GPUs, every GPU of the other
H100 node by another pod, and the spec's speed table makes an H100 far faster than anything
else: a planner that counted GPUs alone pinned both experts to the first H100, where their pods
stayed Pending. The test ends once both expert pods run (the rest of the run is the ordinary
pipeline, tested elsewhere).
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
from tests.operator.conftest import SECRET, OperatorProcess, apply, condition, holder_pod, pods, run_object

pytestmark = [pytest.mark.cluster, pytest.mark.minio, pytest.mark.e2e]

H100 = fleet_builders.H100.product


def test_experts_are_placed_off_a_node_whose_cpu_other_pods_hold(  # noqa: PLR0917 - fixtures
    control_plane: ControlPlane,
    atoll_crds: ControlPlane,
    fleet: fleet_builders.Fleet,
    pod_runtime: PodRuntimeProcess,
    namespace: str,
    store_secret: str,
    start_operator: Callable[..., OperatorProcess],
) -> None:
    held, full = sorted(fleet.with_product(H100))
    cpus = next(n for n in fleet.nodes if n["metadata"]["name"] == held)["status"]["allocatable"]["cpu"]
    holders = {
        "cpu-holder": holder_pod("cpu-holder", held, {"cpu": cpus}),
        "gpu-holder": holder_pod("gpu-holder", full, {"nvidia.com/gpu": "8"}),
    }
    for manifest in holders.values():
        apply(control_plane, namespace, manifest)
    slow = {product: 1.0 for product in fleet.products if product != H100}
    run = {
        "apiVersion": "atoll.dev/v1alpha1",
        "kind": "DDMRun",
        "metadata": {"name": "cpu-aware"},
        "spec": {
            "dataset": {"uri": "builtin://digits", "resolution": 8, "maxExamples": 64},
            "partition": {"clusters": 2, "features": "pixels", "fineClusters": 8, "sampleSize": 64},
            "expert": {"preset": "tiny", "steps": 10, "globalBatchSize": 8},
            "router": {"preset": "tiny", "steps": 10, "globalBatchSize": 8},
            "sampling": {"steps": 4},
            "evaluation": {"samples": 8, "strategies": ["top-1"]},
            "placement": {"gpu": {"maxPerExpert": 1}, "speeds": {H100: 1000.0, **slow}},
        },
    }
    start_operator("--default-store", store_secret, "--default-store-secret", SECRET)
    try:
        apply(control_plane, namespace, run)

        def expert_pods() -> list[dict[str, Any]]:
            found = pods(control_plane, namespace, "cpu-aware")
            return [p for p in found if p["metadata"]["labels"].get("atoll.dev/stage") == "expert"]

        def seen() -> str:
            where = [(p["metadata"]["name"], p["spec"].get("nodeName"), p["status"]) for p in expert_pods()]
            status = run_object(control_plane, namespace, "cpu-aware").get("status")
            return f"expert pods {json.dumps(where)[:2000]}; run {json.dumps(status)[:2000]}"

        def running() -> bool:
            found = expert_pods()
            return len(found) == 2 and all(p["status"].get("phase") == "Running" for p in found)

        deadline = time.monotonic() + 300  # the partition first: half a minute when idle, minutes under load
        while not running():
            assert time.monotonic() < deadline, f"the experts do not run: {seen()}"
            time.sleep(1)
        for pod in expert_pods():
            node = pod["spec"]["nodeName"]
            assert node not in (held, full), f"{pod['metadata']['name']} on {node}"
            planned = pod["metadata"]["annotations"]["atoll.dev/planned-node"]
            assert planned == node, "pinned to the node the plan chose, which took it"
            assert pod["metadata"]["labels"]["atoll.dev/attempt"] == "1", "placed right the first time"
        assert condition(run_object(control_plane, namespace, "cpu-aware"), "Schedulable").get("status") != "False"
    finally:
        control_plane.kubectl(
            "delete", "pod", *holders, "-n", namespace, "--ignore-not-found", "--timeout=60s", check=False
        )
