"""The life of one stage across its attempts: start, watch, restart with backoff, give up.

`decide_stage` looks at a stage's pods, its last status, its current heartbeat and its done
marker and says what the stage is and what to do next (create attempt N, delete a pod
stranded on a vanished node). A stage is done when its done marker exists (atoll.stages);
the exit codes of the stage contract decide the rest: 3 (fenced) is no failure, 2 and 4
(bad arguments, bad input) fail at once. Level-based and pure: the same observation always
gives the same decision, so a restarted operator continues where the last one was.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from atoll.api.spec import FailurePolicy
from atoll.api.status import CheckpointStatus, StageStatus
from atoll.operator.views import PodView
from atoll.progress import StageProgress
from atoll.stages import ExitCode

MESSAGE_LIMIT = 400


@dataclass(frozen=True, kw_only=True)
class StageInputs:
    """What the reconciler observed about one stage."""

    ready: bool
    """Its inputs exist (the stages it depends on succeeded)."""
    pods: Sequence[PodView]
    """Every attempt's pod of this stage that still exists."""
    status: StageStatus
    """The status written at the last tick."""
    progress: StageProgress | None
    """The stage's current heartbeat (None: absent, unreadable, or written by an attempt older
    than the claim)."""
    done: bool | None
    """Whether its done marker exists (None: the store has not said yet)."""
    claimed_attempt: int
    """The newest attempt claimed in the store (attempt.json; 0: none or unknown)."""
    nodes: frozenset[str] | None
    """Names of the nodes that exist (None: unknown, nothing is declared lost)."""
    policy: FailurePolicy
    now: datetime
    moving: bool = False
    """The operator ended the current attempt itself to move the stage to faster GPUs."""
    creation_failed: str | None = None
    """Why the pod of the current attempt could not be created (it is created again)."""


@dataclass(frozen=True)
class StageDecision:
    """The stage's new status and the actions that bring the cluster toward it."""

    status: StageStatus
    create_attempt: int | None = None
    """Create the pod of this attempt now."""
    delete_pods: tuple[str, ...] = field(default=())
    """Pods to delete (stranded on a node that no longer exists)."""

    @property
    def failed(self) -> bool:
        return self.status.phase == "Failed"


def backoff(policy: FailurePolicy, restarts: int) -> timedelta:
    """Delay before restart number `restarts + 1`: doubles each time, capped."""
    seconds = min(policy.backoff_seconds * 2.0 ** min(restarts, 32), policy.max_backoff_seconds)
    return timedelta(seconds=seconds)


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    line = lines[-1] if lines else ""
    return line if len(line) <= MESSAGE_LIMIT else line[: MESSAGE_LIMIT - 1] + "…"


def failure_reason(pod: PodView | None, progress: StageProgress | None, attempt: int, lost: str | None) -> str:
    """Why an attempt ended: the stage's own error first, then what Kubernetes says."""
    if progress is not None and progress.attempt == attempt and progress.state == "failed" and progress.error:
        return _last_line(progress.error)
    if lost is not None:
        return lost
    if pod is None:
        return f"the pod of attempt {attempt} disappeared"
    if pod.message:
        return _last_line(pod.message)
    if pod.exit_code is not None:
        return f"exited with code {pod.exit_code} ({pod.reason or 'Error'})"
    return pod.reason or "failed"


def _with_progress(status: StageStatus, progress: StageProgress | None) -> StageStatus:
    """Copy the heartbeat's numbers into the status (the GPU product comes from the pod's node)."""
    if progress is None:
        return status
    update: dict[str, object] = {
        "step": progress.step,
        "total_steps": progress.total_steps or None,
        "loss": None if progress.loss is None else round(progress.loss, 5),
        "samples_per_second": None if progress.samples_per_second is None else round(progress.samples_per_second, 2),
        "heartbeat_time": progress.updated_at,
    }
    if progress.last_checkpoint is not None:
        ref = progress.last_checkpoint
        update["last_checkpoint"] = CheckpointStatus(step=ref.step, time=ref.time, uri=ref.uri)
    return status.model_copy(update=update)


def _node_gone(pod: PodView, nodes: frozenset[str] | None) -> bool:
    """The pod's node (or, unbound, the node its plan pins it to) no longer exists."""
    where = pod.node or pod.planned_node
    return nodes is not None and where is not None and where not in nodes


def decide_stage(inputs: StageInputs) -> StageDecision:  # noqa: PLR0911 - one return per outcome
    """The stage's status and next action (see the module docstring)."""
    status = inputs.status
    if status.phase in ("Succeeded", "Failed"):
        return StageDecision(status)  # final: a stage never runs again once decided
    pods = sorted(inputs.pods, key=lambda p: p.attempt)
    progress = inputs.progress
    status = _with_progress(status, progress)
    latest = pods[-1] if pods else None
    if inputs.done:
        done = status.model_copy(
            update={"phase": "Succeeded", "completion_time": inputs.now, "message": None, "restart_after": None}
        )
        if latest is not None:
            done = done.model_copy(update={"node": latest.node or done.node, "pod": latest.name})
        return StageDecision(done)
    if not inputs.ready and not pods:
        return StageDecision(status.model_copy(update={"phase": "Waiting"}))

    attempt = max(status.attempt, latest.attempt if latest else 0)
    if attempt == 0:
        return _start(status, inputs, first=True)

    stranded = tuple(p.name for p in pods if p.active and _node_gone(p, inputs.nodes))
    current = next((p for p in pods if p.attempt == attempt), None)
    if current is None and inputs.creation_failed is not None:
        # Our own create of this attempt failed (an API error): create it again, no failure.
        retry = status.model_copy(update={"phase": "Pending", "message": inputs.creation_failed})
        return StageDecision(retry, create_attempt=attempt, delete_pods=stranded)
    lost = None
    if current is not None and current.name in stranded:
        lost = f"node {current.node or current.planned_node} of attempt {attempt} no longer exists"
    elif current is not None and current.active:
        return StageDecision(_running(status, current, attempt), delete_pods=stranded)
    elif current is not None and current.phase == "Succeeded" and inputs.done is None:
        # Exited 0: done once the store shows its done marker (read on the next look).
        finishing = _running(status, current, attempt).model_copy(update={"phase": "Running", "message": "finishing"})
        return StageDecision(finishing, delete_pods=stranded)

    if inputs.moving and lost is None and (current is None or not current.active):
        # Ended on purpose at a checkpoint: not a failure, the next attempt starts at once.
        moved = status.model_copy(update={"moves": status.moves + 1, "message": "moving to faster GPUs"})
        return _start(moved, inputs, first=False, after=attempt, delete=stranded)
    if lost is None and current is not None and current.exit_code == ExitCode.FENCED:
        # A newer attempt claimed the stage (another operator, a re-applied run): not a
        # failure; the next attempt starts above the claim at once and counts as no restart.
        fenced = status.model_copy(
            update={"message": f"attempt {attempt} was fenced by attempt {inputs.claimed_attempt} (exit 3)"}
        )
        return _start(fenced, inputs, first=True, after=attempt, delete=stranded)
    return _ended(status, inputs, attempt=attempt, current=current, lost=lost, stranded=stranded)


def _ended(
    status: StageStatus,
    inputs: StageInputs,
    *,
    attempt: int,
    current: PodView | None,
    lost: str | None,
    stranded: tuple[str, ...],
) -> StageDecision:
    """The current attempt ended unfinished: restart it after its backoff, or give up."""
    progress = inputs.progress
    reason = failure_reason(current, progress, attempt, lost)
    if current is not None and current.phase == "Succeeded":
        reason = f"attempt {attempt} exited 0 but its done marker is missing"
    if status.last_failure_attempt == attempt:
        # Already recorded at an earlier tick: only the backoff is left to wait out.
        restart_after = status.restart_after or inputs.now
    else:
        gave_up = _give_up(
            status=status, current=current, progress=progress, attempt=attempt, reason=reason, policy=inputs.policy
        )
        if gave_up is not None:
            failed = status.model_copy(
                update={
                    "phase": "Failed",
                    "message": gave_up,
                    "last_failure": reason,
                    "last_failure_attempt": attempt,
                    "completion_time": inputs.now,
                    "restart_after": None,
                }
            )
            return StageDecision(failed, delete_pods=stranded)
        ended = current.finished_at if current is not None and current.finished_at else inputs.now
        restart_after = inputs.now if lost or current is None else ended + backoff(inputs.policy, attempt - 1)
        status = status.model_copy(
            update={"last_failure": reason, "last_failure_attempt": attempt, "restart_after": restart_after}
        )
    if inputs.now < restart_after:
        waiting = status.model_copy(
            update={
                "phase": "Restarting",
                "message": f"attempt {attempt} failed ({reason}); attempt {attempt + 1} starts at "
                f"{restart_after.isoformat(timespec='seconds')}",
            }
        )
        return StageDecision(waiting, delete_pods=stranded)
    return _start(status, inputs, first=False, after=attempt, delete=stranded)


def _give_up(
    *,
    status: StageStatus,
    current: PodView | None,
    progress: StageProgress | None,
    attempt: int,
    reason: str,
    policy: FailurePolicy,
) -> str | None:
    """The reason to stop retrying this stage, or None to restart it."""
    if current is not None and current.exit_code == ExitCode.USAGE:
        return f"the stage rejected its arguments (exit {ExitCode.USAGE:d}): {reason}"
    if current is not None and current.exit_code == ExitCode.BAD_INPUT:
        return f"bad input (exit {ExitCode.BAD_INPUT:d}), not retrying: {reason}"
    # Attempts of this run object that ended unfinished, this one included, moves excluded
    # (attempt numbers may start higher: a re-applied run continues above the store's claim).
    failures = status.restarts - status.moves + 1
    if failures - 1 >= policy.max_restarts:
        return f"failed {failures} attempt(s), failurePolicy.maxRestarts is {policy.max_restarts}; the last: {reason}"
    # A failure the stage did not classify that repeats before any training step (bad input
    # the stage cannot tell from an outage): stop after the second time instead of working
    # through every restart.
    made_progress = progress is not None and progress.attempt == attempt and progress.step > 0
    if status.last_failure_attempt == attempt - 1 and status.last_failure == reason and not made_progress:
        return f"failed twice in a row with the same error before any progress, not retrying: {reason}"
    return None


def _start(
    status: StageStatus, inputs: StageInputs, *, first: bool, after: int = 0, delete: tuple[str, ...] = ()
) -> StageDecision:
    attempt = max(after, status.attempt, inputs.claimed_attempt) + 1
    update: dict[str, object] = {
        "phase": "Pending",
        "attempt": attempt,
        "restarts": status.restarts + (0 if first else 1),
        "pod": None,
        "restart_after": None,
        "message": f"starting attempt {attempt}",
    }
    if status.start_time is None:
        update["start_time"] = inputs.now
    return StageDecision(status.model_copy(update=update), create_attempt=attempt, delete_pods=delete)


def _running(status: StageStatus, pod: PodView, attempt: int) -> StageStatus:
    phase = "Running" if pod.phase == "Running" else "Pending"
    message = None
    if phase == "Pending" and pod.message:
        message = _last_line(pod.message)
    elif phase == "Pending" and pod.reason:
        message = pod.reason
    update: dict[str, object] = {"phase": phase, "attempt": attempt, "pod": pod.name, "message": message}
    if pod.node:
        update["node"] = pod.node
    if pod.gpu_product:
        update["gpu"] = pod.gpu_product
    update["gpus"] = pod.gpus
    return status.model_copy(update=update)
