"""One stage across attempts (the per-stage decision): start, run, restart with backoff, give
up, never duplicate; done only by the done marker; the exit codes of the stage contract."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from atoll.api.spec import FailurePolicy
from atoll.api.status import StageStatus
from atoll.operator.attempts import StageInputs, backoff, decide_stage
from atoll.operator.views import PodView
from atoll.progress import StageProgress
from atoll.stages import ExitCode

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
POLICY = FailurePolicy(max_restarts=2, backoff_seconds=10, max_backoff_seconds=25)


def pod(attempt: int, phase: str = "Running", **changes: object) -> PodView:
    values: dict[str, object] = {
        "name": f"r-expert-0-a{attempt}",
        "namespace": "ns",
        "run": "r",
        "stage": "expert",
        "expert": 0,
        "attempt": attempt,
        "phase": phase,
        "node": "a100-0",
        "gpus": 1,
        "gpu_product": "NVIDIA-A100",
    }
    values.update(changes)
    return PodView(**values)  # type: ignore[arg-type]


def inputs(status: StageStatus, pods: list[PodView], **changes: object) -> StageInputs:
    values: dict[str, object] = {
        "ready": True,
        "pods": pods,
        "status": status,
        "progress": None,
        "done": None,
        "claimed_attempt": 0,
        "nodes": frozenset({"a100-0", "t4-0"}),
        "policy": POLICY,
        "now": T0,
    }
    values.update(changes)
    return StageInputs(**values)  # type: ignore[arg-type]


def failed(attempt: int, message: str = "error: CUDA out of memory", at: datetime = T0) -> PodView:
    return pod(attempt, "Failed", exit_code=1, message=message, finished_at=at)


def test_waiting_then_first_attempt() -> None:
    assert decide_stage(inputs(StageStatus(), [], ready=False)).status.phase == "Waiting"
    first = decide_stage(inputs(StageStatus(), []))
    assert first.create_attempt == 1
    assert first.status.attempt == 1
    assert first.status.restarts == 0
    # A store that already holds attempt 4 (a re-applied run) continues above it.
    assert decide_stage(inputs(StageStatus(), [], claimed_attempt=4)).create_attempt == 5


def test_a_running_pod_is_left_alone_and_reported() -> None:
    progress = StageProgress(stage="expert", expert=0, attempt=1, state="running", step=40, total_steps=100, loss=0.5)
    decision = decide_stage(inputs(StageStatus(attempt=1, phase="Pending"), [pod(1)], progress=progress))
    assert decision.create_attempt is None
    assert not decision.delete_pods
    status = decision.status
    assert (status.phase, status.step, status.total_steps, status.loss, status.node, status.gpu) == (
        "Running", 40, 100, 0.5, "a100-0", "NVIDIA-A100",
    )  # fmt: skip


def test_a_stage_done_shows_its_last_step_even_when_its_last_heartbeat_trails_the_marker() -> None:
    """A final status is never written again: it must not keep the step of a heartbeat older
    than the done marker (written after the last step)."""
    trailing = StageProgress(stage="expert", expert=0, attempt=1, state="running", step=56, total_steps=60)
    status = decide_stage(
        inputs(StageStatus(attempt=1, phase="Running"), [pod(1)], progress=trailing, done=True)
    ).status
    assert (status.phase, status.step, status.total_steps) == ("Succeeded", 60, 60)


def test_done_only_by_the_done_marker() -> None:
    """One rule: the stage is done when its done marker exists; an exit 0 or a `done`
    heartbeat alone wait for the store to show it, and an exit 0 without it is a failure."""
    exited = [pod(1, "Succeeded", exit_code=0)]
    done = StageProgress(stage="expert", expert=0, attempt=1, state="done", step=100, total_steps=100)
    assert decide_stage(inputs(StageStatus(attempt=1), exited, done=True)).status.phase == "Succeeded"
    assert decide_stage(inputs(StageStatus(attempt=1), [], progress=done, done=True)).status.phase == "Succeeded"
    finishing = decide_stage(inputs(StageStatus(attempt=1, phase="Running"), exited, progress=done))
    assert (finishing.status.phase, finishing.create_attempt) == ("Running", None)
    assert decide_stage(inputs(StageStatus(attempt=1), [pod(1)], progress=done)).status.phase == "Running"
    missing = decide_stage(inputs(StageStatus(attempt=1, phase="Running"), exited, done=False))
    assert missing.status.phase == "Restarting"
    assert "done marker is missing" in (missing.status.last_failure or "")


def test_failure_waits_out_the_backoff_then_starts_the_next_attempt() -> None:
    status = StageStatus(attempt=1, phase="Running")
    first = decide_stage(inputs(status, [failed(1)], now=T0 + timedelta(seconds=3)))
    assert first.status.phase == "Restarting"
    assert first.create_attempt is None
    assert first.status.restart_after == T0 + timedelta(seconds=10)
    assert first.status.last_failure == "error: CUDA out of memory"
    again = decide_stage(inputs(first.status, [failed(1)], now=T0 + timedelta(seconds=11)))
    assert again.create_attempt == 2
    assert again.status.restarts == 1
    assert again.status.phase == "Pending"
    assert backoff(POLICY, 1) == timedelta(seconds=20)
    assert backoff(POLICY, 5) == timedelta(seconds=25)


def test_out_of_restarts_fails_with_the_reason() -> None:
    status = StageStatus(attempt=3, restarts=2, phase="Running", last_failure="x", last_failure_attempt=2)
    progress = StageProgress(
        stage="expert", expert=0, attempt=3, state="failed", step=70, error="boom\nerror: NaN loss"
    )
    decision = decide_stage(inputs(status, [failed(1), failed(2), failed(3)], progress=progress))
    assert decision.failed
    assert decision.create_attempt is None
    assert "maxRestarts is 2" in (decision.status.message or "")
    assert "NaN loss" in (decision.status.message or "")
    # Final: nothing ever restarts it again.
    assert decide_stage(inputs(decision.status, [], now=T0 + timedelta(hours=1))).status.phase == "Failed"


def test_the_same_error_twice_before_any_progress_is_bad_input() -> None:
    message = "error: dataset /data/missing does not exist"
    status = StageStatus(attempt=2, restarts=1, phase="Running", last_failure=message, last_failure_attempt=1)
    decision = decide_stage(inputs(status, [failed(1, message), failed(2, message)]))
    assert decision.failed
    assert "same error" in (decision.status.message or "")
    # With progress in between it is an ordinary failure and restarts.
    progress = StageProgress(stage="expert", expert=0, attempt=2, state="running", step=300)
    assert not decide_stage(inputs(status, [failed(1, message), failed(2, message)], progress=progress)).failed


def test_usage_errors_are_never_retried() -> None:
    decision = decide_stage(inputs(StageStatus(attempt=1), [pod(1, "Failed", exit_code=2, message="bad flag")]))
    assert decision.failed
    assert "exit 2" in (decision.status.message or "")


def test_bad_input_fails_at_once() -> None:
    """Exit 4: the spec or the data is wrong; the first failure is the last, restarts left or not."""
    bad = pod(1, "Failed", exit_code=ExitCode.BAD_INPUT, message="error: dataset.uri '/d' does not exist")
    decision = decide_stage(inputs(StageStatus(attempt=1, phase="Running"), [bad]))
    assert decision.failed
    assert decision.create_attempt is None
    assert decision.status.restarts == 0
    assert "bad input" in (decision.status.message or "")
    assert "does not exist" in (decision.status.message or "")


def test_a_fenced_attempt_is_no_failure() -> None:
    """Exit 3: a newer attempt claimed the stage. The next attempt starts above the claim at
    once, and it counts against no restart budget (maxRestarts 0 here)."""
    policy = FailurePolicy(max_restarts=0, backoff_seconds=10)
    fenced = pod(2, "Failed", exit_code=ExitCode.FENCED, message="error: attempt 2 is fenced")
    decision = decide_stage(inputs(StageStatus(attempt=2, phase="Running"), [fenced], claimed_attempt=3, policy=policy))
    assert not decision.failed
    assert decision.create_attempt == 4
    assert (decision.status.restarts, decision.status.last_failure) == (0, None)


def test_a_failed_pod_creation_is_retried_as_the_same_attempt() -> None:
    status = StageStatus(attempt=1, phase="Pending", pod="r-expert-0-a1")
    decision = decide_stage(inputs(status, [], creation_failed="cannot create pod r-expert-0-a1: 500 Internal"))
    assert (decision.create_attempt, decision.status.restarts, decision.status.phase) == (1, 0, "Pending")
    assert "500" in (decision.status.message or "")


def test_a_pod_on_a_vanished_node_is_deleted_and_replaced_at_once() -> None:
    stranded = pod(1, node="h100-9")
    decision = decide_stage(inputs(StageStatus(attempt=1, phase="Running"), [stranded]))
    assert decision.delete_pods == ("r-expert-0-a1",)
    assert decision.create_attempt == 2
    assert "h100-9" in (decision.status.last_failure or "")


def test_a_deleted_pod_counts_as_a_failed_attempt() -> None:
    decision = decide_stage(
        inputs(StageStatus(attempt=2, restarts=1, phase="Running", pod="r-expert-0-a2"), [failed(1)])
    )
    assert decision.create_attempt == 3
    assert decision.status.restarts == 2


def test_the_same_observation_gives_the_same_decision() -> None:
    observation = inputs(StageStatus(attempt=1, phase="Running"), [failed(1)], now=T0 + timedelta(seconds=1))
    assert decide_stage(observation) == decide_stage(observation)


def test_a_move_to_faster_gpus_is_no_failure_and_restarts_at_once() -> None:
    status = StageStatus(attempt=1, phase="Running", pod="r-expert-0-a1")
    stopping = pod(1, deleting=True)
    decision = decide_stage(inputs(status, [stopping], moving=True))
    assert decision.create_attempt == 2
    assert (decision.status.restarts, decision.status.moves) == (1, 1)
    assert decision.status.last_failure is None
    # Moves do not use up failurePolicy.maxRestarts (2 here): three moves, then a real failure restarts.
    moved = StageStatus(attempt=4, restarts=3, moves=3, phase="Running")
    assert not decide_stage(inputs(moved, [failed(4)], now=T0 + timedelta(minutes=5))).failed
