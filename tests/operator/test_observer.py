"""The observe step against the real API server and MinIO: a heartbeat written by an attempt
older than the stage's claim is not observed, and "done" comes only from a done marker
written under the claim — the decision then never takes a stale `done` for a finished stage.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from atoll.api.load import dump_spec_json
from atoll.api.spec import DDMRunSpec
from atoll.operator.kube import Kube
from atoll.operator.reconcile import RunMemory, decide
from atoll.operator.reconcile.actions import PatchExpertStatus
from atoll.operator.reconcile.observer import IndexSnapshot, Observer
from atoll.operator.reconcile.store_reader import RunStores
from atoll.operator.settings import OperatorSettings
from atoll.progress import StageProgress
from atoll.stages import StageJob
from atoll.store.fencing import claim
from atoll.trainer.fence import write_done
from tests.env.cluster import ControlPlane
from tests.env.minio import MinioServer
from tests.operator.conftest import SECRET

from .situations import FLEET, SPEC, T0, UID, expert, pod

pytestmark = [pytest.mark.cluster, pytest.mark.minio]


def run_body(namespace: str) -> dict[str, Any]:
    spec = copy.deepcopy(SPEC)
    del spec["storage"]  # the operator's default store: MinIO, with the Secret of the namespace
    return {
        "metadata": {"name": "r", "namespace": namespace, "uid": UID, "generation": 1},
        "spec": spec,
        "status": {
            "phase": "Training",
            "storeUri": "set",
            "clusterSizes": [100, 101],
            "stages": {"partition": {"phase": "Succeeded", "attempt": 1}},
        },
    }


def test_stale_heartbeats_are_not_observed_and_done_needs_the_marker(
    control_plane: ControlPlane, namespace: str, minio: MinioServer, store_secret: str
) -> None:
    from atoll.store.s3 import S3Store

    body = run_body(namespace)
    store = S3Store.from_uri(f"{store_secret}/{namespace}/r", env=minio.env())
    store.put_bytes("spec.json", dump_spec_json(DDMRunSpec.model_validate(body["spec"])).encode())
    zero, one = StageJob("expert", 0), StageJob("expert", 1)

    def beat(job: StageJob, attempt: int, state: str, step: int) -> bytes:
        return StageProgress(stage="expert", expert=job.expert, attempt=attempt, state=state, step=step).to_json()

    # Expert 0: attempt 1 wrote `done`, but attempt 2 has claimed the stage since (its pod runs).
    claim(store, zero.prefix, 1, ())
    store.put_bytes(f"{zero.prefix}/progress.json", beat(zero, 1, "done", 100))
    claim(store, zero.prefix, 2, ())
    # Expert 1: attempt 1 holds the claim and wrote its done marker under it.
    claim(store, one.prefix, 1, ())
    write_done(store, one, 1, {"step": 100})
    store.put_bytes(f"{one.prefix}/progress.json", beat(one, 1, "done", 100))

    settings = OperatorSettings(default_store=store_secret, default_store_secret=SECRET, store_poll_seconds=0)
    observer = Observer(Kube(control_plane.api_client()), settings, RunStores())
    running = {"phase": "Running", "node": "a100-0", "gpus": 1}
    indexes = IndexSnapshot(
        experts=(expert(0, {**running, "attempt": 2, "pod": "r-expert-0-a2"}), expert(1, {**running, "attempt": 1})),
        pods=(pod("expert", 2, expert_index=0), pod("expert", 1, expert_index=1)),
        nodes=FLEET,
    )
    observation = observer.observe(body, indexes, RunMemory(), now=T0, monotonic=100.0)

    snapshot = observation.store
    assert snapshot.outage is None
    assert snapshot.claims["expert-0"] == 2
    assert "expert-0" not in snapshot.progress, "attempt 1's heartbeat is older than the claim"
    assert not snapshot.done.get("expert-0")
    assert snapshot.progress["expert-1"].state == "done"
    assert snapshot.done["expert-1"] is True

    decision = decide(observation, RunMemory(), settings)
    phases = {p.expert: p.status.phase for p in decision.of(PatchExpertStatus)}
    assert phases.get(1) == "Succeeded"
    assert phases.get(0, "Running") == "Running", "a stale `done` never finishes expert 0"
