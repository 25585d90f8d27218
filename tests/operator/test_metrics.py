"""The operator's metrics and probes without a cluster: series built from what a tick decided,
served over HTTP with /healthz and /readyz that follow the event loop and leadership.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta

from prometheus_client.parser import text_string_to_metric_families

from atoll.api.status import CheckpointStatus, Condition, DDMExpertStatus, DDMRunStatus
from atoll.operator.metrics import OperatorMetrics
from atoll.operator.probes import Health, serve

NOW = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)
SPEC = {"expert": {"preset": "tiny", "steps": 60, "globalBatchSize": 16, "checkpointEvery": 10}}


class Switch:
    """A leadership a test turns on and off."""

    def __init__(self, acting: bool = True) -> None:
        self.on = acting
        self.term = 1
        self.elected = True

    def acting(self) -> bool:
        return self.on


def samples(metrics: OperatorMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client import generate_latest

    text = generate_latest(metrics.registry).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def training_run() -> tuple[DDMRunStatus, dict[int, DDMExpertStatus]]:
    status = DDMRunStatus(
        phase="Training",
        experts_total=2,
        experts_ready=1,
        progress_fraction=0.5,
        conditions=[Condition(type="Degraded", status="True", reason="HeartbeatStale", last_transition_time=NOW)],
    )
    running = DDMExpertStatus(
        phase="Running", attempt=2, restarts=1, step=30, total_steps=60, loss=0.25, samples_per_second=32.0,
        heartbeat_time=NOW, predicted_seconds=100.0, start_time=NOW - timedelta(seconds=50),
        last_checkpoint=CheckpointStatus(step=20, time=NOW - timedelta(seconds=40), uri="s3://b/ckpt"),
    )  # fmt: skip
    done = DDMExpertStatus(
        phase="Succeeded", attempt=1, step=60, total_steps=60, loss=0.1, samples_per_second=16.0,
        predicted_seconds=90.0, start_time=NOW - timedelta(seconds=120), completion_time=NOW - timedelta(seconds=5),
    )  # fmt: skip
    return status, {0: running, 1: done}


def test_series_follow_the_decided_statuses() -> None:
    wall = NOW.timestamp() + 10
    metrics = OperatorMetrics(Switch(), wall=lambda: wall)
    status, experts = training_run()
    metrics.record_run(("ns", "digits"), status, experts, SPEC)
    got = samples(metrics)

    def run(**more: str) -> tuple[tuple[str, str], ...]:
        return tuple(sorted({"namespace": "ns", "run": "digits", **more}.items()))

    def expert(k: int) -> tuple[tuple[str, str], ...]:
        return run(expert=str(k))

    assert got[("atoll_runs", (("phase", "Training"),))] == 1
    assert got[("atoll_runs", (("phase", "Succeeded"),))] == 0
    assert got[("atoll_experts", (("state", "Running"),))] == 1
    assert got[("atoll_experts", (("state", "Succeeded"),))] == 1
    assert got[("atoll_run_phase", run(phase="Training"))] == 1
    assert got[("atoll_run_condition", run(type="Degraded"))] == 1
    assert got[("atoll_run_progress_ratio", run())] == 0.5
    assert got[("atoll_stage_restarts", run(stage="expert-0"))] == 1
    assert got[("atoll_expert_step", expert(0))] == 30
    assert got[("atoll_expert_loss", expert(0))] == 0.25
    assert got[("atoll_expert_samples_per_second", expert(0))] == 32
    assert got[("atoll_expert_steps_per_second", expert(0))] == 2.0  # 32 samples/s ÷ 16 per step
    # 30 steps left at 2 steps/s from the heartbeat; the finished one finished when it did.
    assert got[("atoll_expert_observed_finish_timestamp_seconds", expert(0))] == NOW.timestamp() + 15
    assert got[("atoll_expert_observed_finish_timestamp_seconds", expert(1))] == NOW.timestamp() - 5
    # Attempt 2 was first seen now (wall); attempt 1 started with the stage.
    assert got[("atoll_expert_predicted_finish_timestamp_seconds", expert(0))] == wall + 100
    assert got[("atoll_expert_predicted_finish_timestamp_seconds", expert(1))] == NOW.timestamp() - 120 + 90
    assert got[("atoll_expert_checkpoint_age_seconds", expert(0))] == 50  # committed 40 s before NOW, scraped at +10
    assert ("atoll_expert_checkpoint_age_seconds", expert(1)) not in got, "only running experts age"
    assert got[("atoll_expert_checkpoint_interval_seconds", expert(0))] == 5.0  # 10 steps at 2 steps/s
    assert got[("atoll_leader", ())] == 1

    metrics.runs.forget(("ns", "digits"))
    assert not any(name.startswith("atoll_expert_") for name, _ in samples(metrics)), "a forgotten run leaves nothing"
    assert samples(metrics)[("atoll_runs", (("phase", "Training"),))] == 0


def test_probes_follow_the_loop_and_the_leadership() -> None:
    leadership = Switch()
    clock = [100.0]
    health = Health(leadership, stall_seconds=30, monotonic=lambda: clock[0])
    metrics = OperatorMetrics(leadership)
    server = serve(metrics, health, "127.0.0.1", 0)
    base = f"http://127.0.0.1:{server.server_port}"

    def get(path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(base + path, timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            with error:
                return error.code, error.read().decode()

    try:
        assert get("/readyz")[0] == 503, "not ready before the event loop beats"
        health.started()
        health.beat()
        assert get("/healthz")[0] == 200
        assert get("/readyz") == (200, "ready: leader, 0 run(s)\n")
        health.run_started()
        clock[0] += 31  # the loop stalls: neither live nor ready
        assert get("/healthz")[0] == 503
        health.beat()
        code, body = get("/readyz")
        assert code == 503
        assert "no reconcile tick" in body
        health.ticked()
        assert get("/readyz")[0] == 200
        leadership.on = False
        clock[0] += 31
        health.beat()
        code, body = get("/readyz")
        assert code == 200
        assert body.startswith("ready: standby"), body
        code, body = get("/metrics")
        assert code == 200
        assert "atoll_leader 0.0" in body
        assert "atoll_reconcile_seconds_bucket" in body
        assert get("/nothing")[0] == 404
    finally:
        server.shutdown()
        server.server_close()
