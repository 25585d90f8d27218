"""The life of one stage across its attempts: start, watch, restart with backoff, give up.

`decide_stage` looks at a stage's pods, its last status, its current heartbeat and its done
marker and says what the stage is and what to do next (create attempt N, delete a pod
stranded on a vanished node). A stage is done when its done marker exists (atoll.stages);
the exit codes of the stage contract decide the rest: 3 (fenced) and 6 (stopped) are no failure, 2 and 4
(bad arguments, bad input) fail at once, 5 (store unreachable) is retried with backoff and
counts as a failure only once the outage outlasts failurePolicy.storeOutageSeconds. A pod the
API server refuses for good fails the stage; a pinned pod Pending past
failurePolicy.pendingTimeoutSeconds (placed again away from that node when another can take
it), a pod waiting that long for a pool's new node (placed again without that pool), or one
on a node lost for failurePolicy.nodeLostSeconds, or on an island unreachable for
failurePolicy.islandLostSeconds, is deleted (on an island: once it answers again) and the
stage placed again. An expert on a node an autoscaler is removing is stopped gracefully (it
checkpoints) and moves. Level-based and pure: the same observation always gives the same
decision, so a restarted operator continues where the last one was. (One concept, a stage's
attempts, in one file of a little over 400 lines.)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from atoll.api.placement import HOME_ISLAND
from atoll.api.spec import FailurePolicy
from atoll.api.status import CheckpointStatus, DDMExpertStatus, StageStatus
from atoll.operator.islands.fleet import island_of
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
    lost_nodes: Mapping[str, str] = field(default_factory=dict)
    """Nodes that exist but are lost (NotReady or their agent silent for
    failurePolicy.nodeLostSeconds) → why: their pods are deleted and restarted elsewhere."""
    lost_islands: Mapping[str, str] = field(default_factory=dict)
    """Islands unreachable for failurePolicy.islandLostSeconds → why: the attempts there are
    restarted elsewhere (their pods are deleted once the island answers again)."""
    unreachable_islands: frozenset[str] = frozenset()
    """Islands whose last probe failed: an attempt's pod there is not seen, not gone."""
    islands_synced: bool = True
    """False until every island was probed once since the operator started (pods unseen meanwhile)."""
    policy: FailurePolicy
    now: datetime
    moving: bool = False
    """The operator ended the current attempt itself to move the stage to faster GPUs, or off
    a node being removed (`evacuating`)."""
    evacuating: str | None = None
    """Why the current attempt must leave its node (an expert on a node an autoscaler taints
    for deletion), or None: its pod is stopped with SIGTERM, the trainer commits a checkpoint
    at its next step, and once the pod is gone the next attempt starts elsewhere, as a move."""
    creation_failed: str | None = None
    """Why the pod of the current attempt could not be created (it is created again)."""
    creation_refused: str | None = None
    """The API server refused the pod of the current attempt for good (a 4xx other than 409
    and 429, with its message): the stage fails."""


@dataclass(frozen=True)
class StageDecision:
    """The stage's new status and the actions that bring the cluster toward it."""

    status: StageStatus
    create_attempt: int | None = None
    """Create the pod of this attempt now."""
    delete_pods: tuple[str, ...] = field(default=())
    """Pods to delete (stranded on a lost node, or Pending past the pending timeout)."""
    delete_why: str = "its node is lost (gone, NotReady or its GPU agent silent)"
    stop_pods: tuple[str, ...] = field(default=())
    """Pods to stop gracefully (SIGTERM, their grace period: a training stage commits a
    checkpoint first), with `stop_why`."""
    stop_why: str = ""
    avoid_node: str | None = None
    """The node a pinned pod of this stage never got onto within the pending timeout: the
    attempt created now goes to another node if one can take it (the scheduler may refuse
    the node for what the plan does not weigh, such as CPU or memory other pods hold). For a
    pod that waited for an autoscaler's pool, that pool's placeholder (`<pool>:<product>`):
    the attempt created now is planned without the pool."""

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


def _node_lost(pod: PodView, inputs: StageInputs) -> str | None:
    """Why the pod's island or node (or, unbound, the node its plan pins it to) is lost, or None."""
    if pod.island in inputs.lost_islands:
        return inputs.lost_islands[pod.island]
    where = pod.node or pod.planned_node
    if where is None:
        return None
    if inputs.nodes is not None and where not in inputs.nodes:
        return f"node {where} no longer exists"
    if pod.node is not None and where in inputs.lost_nodes:
        return f"node {where} is lost ({inputs.lost_nodes[where]})"
    return None


def _pending_too_long(pod: PodView, inputs: StageInputs) -> str | None:
    """Why a pod that no node took within the pending timeout is given up, or None: a pod
    pinned to a node, or one waiting for a new node of an autoscaler's pool."""
    if pod.phase != "Pending" or pod.node is not None or pod.waits_at is None or pod.created_at is None:
        return None
    waited = (inputs.now - pod.created_at).total_seconds()
    if waited < inputs.policy.pending_timeout_seconds:
        return None
    why = f": {_last_line(pod.unschedulable)}" if pod.unschedulable else ""
    where = f"on its planned node {pod.planned_node}"
    again = "placed again"
    if pod.planned_node is None:
        where = f"waiting for a new node of pool {pod.planned_pool}"
        again = "placed again without that pool"
    return (
        f"pod {pod.name} was Pending for {waited:.0f} s {where}"
        f" (failurePolicy.pendingTimeoutSeconds is {inputs.policy.pending_timeout_seconds}){why}; {again}"
    )


def _not_created(
    status: StageStatus, inputs: StageInputs, attempt: int, stranded: tuple[str, ...]
) -> StageDecision | None:
    """The current attempt's pod could not be created: the stage fails when the API server
    refused it for good, else the pod is created again (None: nothing failed)."""
    if inputs.creation_refused is not None:
        refused = status.model_copy(
            update={
                "phase": "Failed",
                "message": f"the API server refused the pod of attempt {attempt}: {inputs.creation_refused}",
                "completion_time": inputs.now,
                "restart_after": None,
            }
        )
        return StageDecision(refused, delete_pods=stranded)
    if inputs.creation_failed is not None:
        # Our own create of this attempt failed (an API error): create it again, no failure.
        retry = status.model_copy(update={"phase": "Pending", "message": inputs.creation_failed})
        return StageDecision(retry, create_attempt=attempt, delete_pods=stranded)
    return None


def decide_stage(inputs: StageInputs) -> StageDecision:  # noqa: PLR0911, PLR0912 - one branch per outcome
    """The stage's status and next action (see the module docstring)."""
    status = inputs.status
    if status.phase in ("Succeeded", "Failed"):
        return StageDecision(status)  # final: a stage never runs again once decided
    pods = sorted(inputs.pods, key=lambda p: p.attempt)
    progress = inputs.progress
    status = _with_progress(status, progress)
    latest = pods[-1] if pods else None
    if inputs.done:
        update: dict[str, object] = {
            "phase": "Succeeded", "completion_time": inputs.now, "message": None, "restart_after": None,
        }  # fmt: skip
        if status.total_steps:  # the marker follows the last step; the last heartbeat seen may trail it
            update["step"] = status.total_steps
        done = status.model_copy(update=update)
        if latest is not None:
            done = done.model_copy(update={"node": latest.node or done.node, "pod": latest.name})
        return StageDecision(done)
    if not inputs.ready and not pods:
        return StageDecision(status.model_copy(update={"phase": "Waiting"}))

    attempt = max(status.attempt, latest.attempt if latest else 0)
    if attempt == 0:
        return _start(status, inputs, first=True)

    stranded = tuple(p.name for p in pods if p.active and _node_lost(p, inputs))
    current = next((p for p in pods if p.attempt == attempt), None)
    if current is None:
        early = _not_created(status, inputs, attempt, stranded)
        if early is None and status.pod is None and status.phase == "Pending":
            # Decided at an earlier tick, never created (no node could take it then): place the
            # same attempt again, nothing ended.
            early = StageDecision(status, create_attempt=attempt, delete_pods=stranded)
        early = early or _unseen_on_island(status, inputs, attempt, stranded)
        if early is not None:
            return early
    lost = _attempt_lost(status, current, inputs, attempt, stranded)
    if lost is None and current is not None and inputs.evacuating and not current.finished and current.node is not None:
        return _evacuate(status, current, inputs.evacuating, stranded)
    if lost is None and current is not None and current.active and (late := _pending_too_long(current, inputs)):
        # Not the stage's failure: the placement was wrong. Placed again at once, no restart counted.
        replaced = status.model_copy(update={"message": late, "last_failure": late, "last_failure_attempt": attempt})
        decision = _start(replaced, inputs, first=True, after=attempt, delete=(*stranded, current.name))
        return replace(
            decision,
            delete_why="it was Pending past failurePolicy.pendingTimeoutSeconds",
            avoid_node=current.waits_at,
        )
    if lost is None and current is not None and current.active:
        return StageDecision(_running(status, current, attempt, inputs.progress), delete_pods=stranded)
    if lost is None and current is not None and current.phase == "Succeeded" and inputs.done is None:
        # Exited 0: done once the store shows its done marker (read on the next look).
        finishing = _running(status, current, attempt).model_copy(update={"phase": "Running", "message": "finishing"})
        return StageDecision(finishing, delete_pods=stranded)

    if inputs.moving and lost is None and (current is None or not current.active):
        # Ended on purpose at a checkpoint: not a failure, the next attempt starts at once.
        why = f"{inputs.evacuating}: resuming elsewhere from its last checkpoint" if inputs.evacuating else None
        moved = status.model_copy(update={"moves": status.moves + 1, "message": why or "moving to faster GPUs"})
        return _start(moved, inputs, first=False, after=attempt, delete=stranded)
    if lost is None and current is not None and current.exit_code in (ExitCode.FENCED, ExitCode.STOPPED):
        # Fenced: a newer attempt claimed the stage (another operator, a re-applied run).
        # Stopped: SIGTERM (an eviction, a preemption) after a checkpoint. Neither is a
        # failure: the next attempt starts above the claim at once and counts as no restart.
        why = (
            f"attempt {attempt} was fenced by attempt {inputs.claimed_attempt} (exit 3)"
            if current.exit_code == ExitCode.FENCED
            else f"attempt {attempt} was stopped by SIGTERM (exit 6): resuming from its checkpoint"
        )
        return _start(status.model_copy(update={"message": why}), inputs, first=True, after=attempt, delete=stranded)
    return _ended(status, inputs, attempt=attempt, current=current, lost=lost, stranded=stranded)


def _evacuate(status: StageStatus, current: PodView, why: str, stranded: tuple[str, ...]) -> StageDecision:
    """Stop the current attempt on a node being removed: SIGTERM (once; an eviction may have
    sent it already) makes the trainer checkpoint at its next step and exit; the next attempt
    starts elsewhere once the pod is gone."""
    update: dict[str, object] = {"message": f"{why}: stopping at a checkpoint to move"}
    if isinstance(status, DDMExpertStatus):
        update["evacuation"] = why
    stopping = status.model_copy(update=update)
    stop = (current.name,) if current.active else ()
    return StageDecision(stopping, delete_pods=stranded, stop_pods=stop, stop_why=why)


def _unseen_on_island(
    status: StageStatus, inputs: StageInputs, attempt: int, stranded: tuple[str, ...]
) -> StageDecision | None:
    """The current attempt's pod is not seen because its island does not answer (and is not
    lost yet), or was not probed yet since the operator started: waited for, not taken for gone
    (None: this is not the case)."""
    island = island_of(status.node or "")
    unprobed = island != HOME_ISLAND and not inputs.islands_synced
    if not unprobed and (island not in inputs.unreachable_islands or island in inputs.lost_islands):
        return None
    unseen = (
        f"island {island} not looked at yet since the operator started: attempt {attempt} is waited for"
        if unprobed
        else f"island {island} does not answer: attempt {attempt} is waited for (failurePolicy.islandLostSeconds)"
    )
    return StageDecision(status.model_copy(update={"message": unseen}), delete_pods=stranded)


def _attempt_lost(
    status: StageStatus, current: PodView | None, inputs: StageInputs, attempt: int, stranded: tuple[str, ...]
) -> str | None:
    """Why the current attempt is lost with its node or island (its pod unseen: the operator
    started while the island was down), or None."""
    why = _node_lost(current, inputs) if current is not None and current.name in stranded else None
    if current is None:
        why = inputs.lost_islands.get(island_of(status.node or ""))
    return None if why is None else f"{why}: attempt {attempt} is restarted elsewhere"


def _outage_since(status: StageStatus, current: PodView | None, lost: str | None, now: datetime) -> datetime | None:
    """Since when attempts have ended because the store was unreachable, this one included
    (None: this attempt ended for another reason)."""
    if lost is not None or current is None or current.exit_code != ExitCode.STORE_UNAVAILABLE:
        return None
    return status.store_outage_since or current.finished_at or now


def _ended(
    status: StageStatus,
    inputs: StageInputs,
    *,
    attempt: int,
    current: PodView | None,
    lost: str | None,
    stranded: tuple[str, ...],
) -> StageDecision:
    """The current attempt ended unfinished: restart it after its backoff, or give up. An
    attempt that ended because the store was unreachable (exit 5) counts as no restart while
    the outage is shorter than failurePolicy.storeOutageSeconds."""
    progress = inputs.progress
    reason = failure_reason(current, progress, attempt, lost)
    if current is not None and current.phase == "Succeeded":
        reason = f"attempt {attempt} exited 0 but its done marker is missing"
    outage_since = _outage_since(status, current, lost, inputs.now)
    forgiven = (
        outage_since is not None and (inputs.now - outage_since).total_seconds() < inputs.policy.store_outage_seconds
    )
    if status.last_failure_attempt == attempt:
        # Already recorded at an earlier tick: only the backoff is left to wait out.
        restart_after = status.restart_after or inputs.now
    else:
        gave_up = (
            None
            if forgiven
            else _give_up(
                status=status, current=current, progress=progress, attempt=attempt, reason=reason, policy=inputs.policy
            )
        )
        if gave_up is not None:
            if outage_since is not None:
                gave_up = (
                    f"the store has been unreachable for {(inputs.now - outage_since).total_seconds():.0f} s,"
                    f" longer than failurePolicy.storeOutageSeconds ({inputs.policy.store_outage_seconds}); {gave_up}"
                )
            failed = status.model_copy(
                update={
                    "phase": "Failed",
                    "message": gave_up,
                    "last_failure": reason,
                    "last_failure_attempt": attempt,
                    "completion_time": inputs.now,
                    "restart_after": None,
                    "store_outage_since": outage_since,
                }
            )
            return StageDecision(failed, delete_pods=stranded)
        ended = current.finished_at if current is not None and current.finished_at else inputs.now
        restart_after = inputs.now if lost or current is None else ended + backoff(inputs.policy, attempt - 1)
        status = status.model_copy(
            update={
                "last_failure": reason,
                "last_failure_attempt": attempt,
                "restart_after": restart_after,
                "store_outage_since": outage_since,
            }
        )
    if inputs.now < restart_after:
        counted = "" if not forgiven else " (the store is unreachable: not counted as a restart)"
        waiting = status.model_copy(
            update={
                "phase": "Restarting",
                "message": f"attempt {attempt} failed ({reason}); attempt {attempt + 1} starts at "
                f"{restart_after.isoformat(timespec='seconds')}{counted}",
            }
        )
        return StageDecision(waiting, delete_pods=stranded)
    return _start(status, inputs, first=forgiven, after=attempt, delete=stranded)


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
    classified = current is not None and current.exit_code == ExitCode.STORE_UNAVAILABLE
    if (
        not classified
        and status.last_failure_attempt == attempt - 1
        and status.last_failure == reason
        and not made_progress
    ):
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


def waiting_message(attempt: int) -> str:
    """A created attempt's message until its pod runs, unless the pod says why it waits: the
    same from the create on, so the pod appearing in the watch (and binding) writes nothing."""
    return f"attempt {attempt} waits for its pod to run"


def _running(status: StageStatus, pod: PodView, attempt: int, progress: StageProgress | None = None) -> StageStatus:
    phase = "Running" if pod.phase == "Running" else "Pending"
    message = None
    if phase == "Pending" and pod.message:
        message = _last_line(pod.message)
    elif phase == "Pending" and pod.reason:
        message = pod.reason
    elif phase == "Pending":
        message = waiting_message(attempt)
    update: dict[str, object] = {"phase": phase, "attempt": attempt, "pod": pod.name, "message": message}
    if progress is not None and progress.attempt == attempt:
        update["store_outage_since"] = None  # this attempt reached the store: an outage ended
    if pod.node:
        update["node"] = pod.node
    if pod.gpu_product:
        update["gpu"] = pod.gpu_product
    update["gpus"] = pod.gpus
    return status.model_copy(update=update)
