"""A MinIO outage longer than the stages' store retry deadline, against the real control plane,
MinIO and operator. The attempts it ends (exit 5) are restarted with backoff and use up no
restart while the outage is shorter than failurePolicy.storeOutageSeconds: a run with
maxRestarts 1 outlasts more failed attempts than that and succeeds once MinIO is back. A run
whose storeOutageSeconds the same outage exceeds fails, its reason naming the store. Both run
side by side under one operator.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.env import fleet as fleet_builders
from tests.env.cluster import ControlPlane
from tests.env.minio import MinioServer
from tests.operator.conftest import SECRET, OperatorProcess, apply, phase, run_object, wait_run

pytestmark = [pytest.mark.cluster, pytest.mark.minio, pytest.mark.e2e]

RETRY = 2  # failurePolicy.storeRetrySeconds: a stage gives up on the store after this long (exit 5)
SHORT = 5  # storeOutageSeconds of the run the outage outlasts


def run(name: str, store_outage_seconds: int) -> dict[str, Any]:
    return {
        "apiVersion": "atoll.dev/v1alpha1",
        "kind": "DDMRun",
        "metadata": {"name": name},
        "spec": {
            "dataset": {"uri": "builtin://digits", "resolution": 8, "maxExamples": 64},
            "partition": {"clusters": 2, "features": "pixels", "fineClusters": 8, "sampleSize": 64},
            "expert": {"preset": "tiny", "steps": 10, "globalBatchSize": 8},
            "router": {"preset": "tiny", "steps": 10, "globalBatchSize": 8},
            "sampling": {"steps": 4},
            "evaluation": {"samples": 8, "strategies": ["top-1"]},
            "placement": {"gpu": {"maxPerExpert": 1}},
            "failurePolicy": {
                "maxRestarts": 1, "backoffSeconds": 1, "maxBackoffSeconds": 2,
                "storeRetrySeconds": RETRY, "storeOutageSeconds": store_outage_seconds,
            },
        },
    }  # fmt: skip


def test_attempts_ended_by_a_store_outage_use_no_restart_until_store_outage_seconds(  # noqa: PLR0917 - fixtures
    control_plane: ControlPlane,
    atoll_crds: ControlPlane,
    fleet: fleet_builders.Fleet,
    minio: MinioServer,
    namespace: str,
    store_secret: str,
    start_operator: Callable[..., OperatorProcess],
) -> None:
    start_operator("--default-store", store_secret, "--default-store-secret", SECRET)
    runs = {"outlasts": run("outlasts", 300), "gives-up": run("gives-up", SHORT)}
    for manifest in runs.values():
        apply(control_plane, namespace, manifest)

    def statuses() -> dict[str, dict[str, Any]]:
        return {name: run_object(control_plane, namespace, name).get("status") or {} for name in runs}

    # MinIO goes away once both runs have their spec.json in the store: their partitions start now.
    deadline = time.monotonic() + 120
    while not all(s.get("storeUri") for s in statuses().values()):
        assert time.monotonic() < deadline, f"spec.json never stored: {json.dumps(statuses())[:3000]}"
        time.sleep(0.5)
    minio.stop()
    stopped = time.monotonic()
    try:
        # Down until the second run gave up, and the first ended more attempts than maxRestarts allows.
        deadline = stopped + 120
        while True:
            now = statuses()
            partition = now["outlasts"].get("stages", {}).get("partition", {})
            if now["gives-up"].get("phase") == "Failed" and partition.get("attempt", 0) >= 3:
                break
            assert time.monotonic() < deadline, f"after {time.monotonic() - stopped:.0f} s: {json.dumps(now)[:3000]}"
            assert now["outlasts"].get("phase") != "Failed", f"an outage used up maxRestarts: {now['outlasts']}"
            time.sleep(1)
    finally:
        minio.start()

    gave_up = now["gives-up"]
    assert gave_up["reason"] == "StoreUnreachable", gave_up
    assert f"longer than failurePolicy.storeOutageSeconds ({SHORT})" in gave_up["message"], gave_up
    assert minio.endpoint in gave_up["message"], "the stage's own words name the store"

    done = wait_run(control_plane, namespace, "outlasts", lambda r: phase(r) == "Succeeded", timeout=600,
                    what="Succeeded after the outage")  # fmt: skip
    partition = done["status"]["stages"]["partition"]
    assert partition["attempt"] >= 3, partition
    assert partition["restarts"] == 0, f"attempts ended by the outage used no restart: {partition}"
    assert "unreachable" in partition["lastFailure"], partition
    assert minio.endpoint in partition["lastFailure"], partition
