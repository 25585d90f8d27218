"""Nothing wedges, against the real control plane and MinIO: a store the operator cannot write
and a pod the API server refuses for good fail their runs with the reason; a pod no node can
take shows Schedulable=False with the scheduler's reason within a minute. All three run side by
side under one operator, which survives them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.env import fleet as fleet_builders
from tests.env.cluster import ControlPlane
from tests.operator.conftest import SECRET, OperatorProcess, apply, condition, phase, pods, run_object

pytestmark = [pytest.mark.cluster, pytest.mark.minio, pytest.mark.e2e]


def run(name: str, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "dataset": {"uri": "builtin://digits", "resolution": 8},
        "partition": {"clusters": 2, "features": "pixels", "fineClusters": 4, "sampleSize": 64, "iterations": 3},
        "expert": {"preset": "tiny", "steps": 10, "globalBatchSize": 8},
        "router": {"preset": "tiny", "steps": 10, "globalBatchSize": 8},
        "failurePolicy": {"maxRestarts": 3, "backoffSeconds": 1, "maxBackoffSeconds": 2},
    }
    body.update(spec)
    return {"apiVersion": "atoll.dev/v1alpha1", "kind": "DDMRun", "metadata": {"name": name}, "spec": body}


def test_runs_that_used_to_hang_fail_or_say_what_they_wait_for(  # noqa: PLR0917 - fixtures
    control_plane: ControlPlane,
    atoll_crds: ControlPlane,
    fleet: fleet_builders.Fleet,
    namespace: str,
    store_secret: str,
    start_operator: Callable[..., OperatorProcess],
    tmp_path: Path,
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("a file where the store's directory would be")
    operator = start_operator("--default-store", store_secret, "--default-store-secret", SECRET)
    runs = {
        "unwritable": run("unwritable", storage={"uri": str(blocker / "runs")}),
        "refused": run("refused", template={"priorityClassName": "no-such-priority-class"}),
        "unschedulable": run("unschedulable", placement={"memoryPerGpuGiB": 4000}),
    }
    started = time.monotonic()
    for manifest in runs.values():
        apply(control_plane, namespace, manifest)

    objects: dict[str, dict[str, Any]] = {}
    schedulable_at = None
    deadline = started + 300
    while time.monotonic() < deadline:
        objects = {name: run_object(control_plane, namespace, name) for name in runs}
        if schedulable_at is None and condition(objects["unschedulable"], "Schedulable").get("status") == "False":
            schedulable_at = time.monotonic() - started
        if schedulable_at is not None and phase(objects["unwritable"]) == phase(objects["refused"]) == "Failed":
            break
        time.sleep(1)
    statuses = {name: o.get("status") or {} for name, o in objects.items()}
    dump = json.dumps(statuses)[:4000]

    assert statuses["unwritable"].get("phase") == "Failed", dump
    assert statuses["unwritable"]["reason"] == "StoreUnwritable", dump
    assert "a-file" in statuses["unwritable"]["message"]
    assert pods(control_plane, namespace, "unwritable") == []

    assert statuses["refused"].get("phase") == "Failed", dump
    assert statuses["refused"]["reason"] == "PartitionFailed", dump
    assert "no-such-priority-class" in statuses["refused"]["message"], "the API server's own message"
    assert "refused" in statuses["refused"]["message"]

    assert schedulable_at is not None, dump
    assert schedulable_at < 60, f"Schedulable=False after {schedulable_at:.0f} s"
    unschedulable = condition(objects["unschedulable"], "Schedulable")
    assert unschedulable["reason"] == "Unschedulable"
    assert "memory" in unschedulable["message"], unschedulable
    assert statuses["unschedulable"].get("phase") != "Failed", "waiting for a node is not a failure"
    assert operator.alive
