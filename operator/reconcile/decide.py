"""The decision function: one observation of a run (and the memory of earlier ticks) in, the
actions, the run's new status and its Events out.

`decide(observation, memory, settings)` has no I/O and no clock of its own: the same
inputs always give the same decision, which is how the tests check it on recorded
situations. The steps, in order: settle the store (spec.json written, outages), decide
every stage through atoll.operator.attempts in pipeline order (so a finished stage unblocks
the next at once), create the DDMExperts once the partition is done, stop experts whose
move is due, place and start the attempts that must start (a decision made without the GPU
usage, `Observation.placing` false, starts and moves nothing), plan moves, account the GPU-hours
used and the capacity asked for (atoll.operator.reconcile.usage), then report (stage
statuses, the run's phase through atoll.operator.machine, conditions, Events).
"""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import datetime

from pydantic import ValidationError

from atoll.api.errors import format_validation_error
from atoll.api.spec import DDMRunSpec
from atoll.api.status import DDMExpertStatus, DDMRunStatus, StageStatus
from atoll.operator.attempts import StageDecision, StageInputs, decide_stage
from atoll.operator.conditions import Trouble
from atoll.operator.experts import build_expert
from atoll.operator.machine import TERMINAL, stage_ready
from atoll.operator.reconcile.actions import CreateExpert, Decision, PatchRunStatus, WriteSpec
from atoll.operator.reconcile.context import Outcome, Tick, parse_status
from atoll.operator.reconcile.launch import remove_left_overs, start_attempts
from atoll.operator.reconcile.moves import move_check_due, plan_expert_moves, stop_moving_experts
from atoll.operator.reconcile.observation import Observation, RunMemory
from atoll.operator.reconcile.report import (
    advance_phase,
    fail,
    plan_status,
    record_stages,
    stage_phases,
    stop_pods,
    summarize,
)
from atoll.operator.reconcile.usage import account_usage
from atoll.operator.settings import OperatorSettings
from atoll.operator.views import PodView
from atoll.stages import StageJob

EXPERT_SHOWN_WITHIN = 30.0
"""Seconds a created DDMExpert has to show up in the index before a tick creates it again."""


class _RunFailed(Exception):  # noqa: N818 - control flow inside one decision, never escapes it
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def decide(obs: Observation, memory: RunMemory, settings: OperatorSettings) -> Decision:
    """What to do about one run now (see the module docstring)."""
    try:
        spec = DDMRunSpec.model_validate(obs.run.spec)
        invalid = None
    except ValidationError as error:
        spec, invalid = None, "; ".join(format_validation_error(error, "spec"))
    tick = Tick.of(obs, memory, settings, spec)
    status = tick.previous.model_copy(deep=True)
    out = Outcome()
    if obs.run.deleting:
        return Decision((), status, (), memory)  # the finalizer stops the pods
    if status.phase in TERMINAL:
        if status.phase == "Failed":
            stop_pods(tick, out, why="the run failed")
        remove_left_overs(tick, tick.current_attempts(status), out)
        if status.usage is not None and status.usage.holding:
            account_usage(tick, status, out)  # pods still running when the run ended (its done marker came first)
        return _decision(tick, status, out, memory)
    status.start_time = status.start_time or obs.now
    try:
        if invalid is not None:
            raise _RunFailed("InvalidSpec", invalid)
        down_since = _settle_store(tick, status, out)
        decisions = _decide_stages(tick, status, out)
    except _RunFailed as failure:
        fail(tick, status, failure.reason, failure.message, out)
        return _decision(tick, status, out, memory)
    decisions = start_attempts(tick, decisions, out)
    if out.plan is not None:
        status.plan = plan_status(out.plan, tick)
    last_move_check = memory.last_move_check
    if tick.settings.move_check_seconds > 0 and tick.running_experts(bound_only=True):
        if math.isinf(last_move_check):
            last_move_check = obs.monotonic  # the first check comes one interval after experts run
        elif move_check_due(tick) and obs.placing:
            decisions = plan_expert_moves(tick, decisions, out)
            last_move_check = obs.monotonic
    account_usage(tick, status, out)
    experts = record_stages(tick, status, decisions, out)
    summarize(tick, status, decisions, experts, out)
    advance_phase(tick, status, decisions, out)
    remembered = replace(
        memory,
        experts=experts,
        experts_unsent=frozenset(out.experts_unsent),
        store_down_since=down_since,
        last_move_check=last_move_check,
    )
    if out.experts_created is not None:
        remembered = replace(remembered, experts_created=out.experts_created)
    return _decision(tick, status, out, remembered)


def _decision(tick: Tick, status: DDMRunStatus, out: Outcome, memory: RunMemory) -> Decision:
    """The Decision, with the run's status patched only when it differs from what the API server holds."""
    written = tick.memory.written or parse_status(tick.obs.run.status)
    if status != written:
        out.actions.append(PatchRunStatus(status))
    remembered = replace(memory, status=status, written=status)
    return Decision(tuple(out.actions), status, tuple(out.events), remembered)


def _settle_store(tick: Tick, status: DDMRunStatus, out: Outcome) -> datetime | None:
    """spec.json in the run's store (once), outages as troubles; returns since when the store
    has been unreachable before the run ever reached it (None: it did)."""
    store = tick.obs.store
    if store.setup is not None and store.setup.permanent:
        raise _RunFailed(store.setup.reason, store.setup.message)
    if not status.store_uri and store.spec == "stored":
        status.store_uri = store.run_uri
    if status.store_uri:
        if store.outage is not None:
            out.troubles.append(Trouble("StoreUnavailable", store.outage))
        return None
    written = tick.memory.spec_write_failure
    if store.spec == "absent":
        if written is not None and written.permanent:
            raise _RunFailed(written.reason, written.message)  # a local path or a bucket it cannot create
        out.actions.append(WriteSpec(tick.spec))
        if written is None:
            return None
        problem = written.message  # an outage while writing: waited out like one while reading
    else:
        problem = store.setup.message if store.setup is not None else store.outage or "the store was not read yet"
    since = tick.memory.store_down_since or tick.obs.now
    waited = (tick.obs.now - since).total_seconds()
    if waited >= tick.settings.store_grace_seconds:
        raise _RunFailed("StoreUnreachable", f"{problem}; the run's store was never reachable in {waited:.0f} s")
    out.troubles.append(Trouble("StoreUnavailable", problem))
    return since


def _inputs(tick: Tick, status: DDMRunStatus, job: StageJob, ready: bool) -> StageInputs:
    store = tick.obs.store
    previous = tick.stage_status(job, status)
    pods = tick.stage_pods(job)
    current = next((p for p in pods if p.attempt == previous.attempt), None)
    moving = isinstance(previous, DDMExpertStatus) and previous.move is not None
    evacuating = _evacuating(tick, previous, current)
    return StageInputs(
        ready=ready,
        pods=pods,
        status=previous,
        progress=store.progress.get(job.slug),
        done=store.done.get(job.slug),
        claimed_attempt=store.claims.get(job.slug, 0),
        nodes=tick.nodes_known,
        lost_nodes=tick.lost_nodes,
        lost_islands=tick.lost_islands,
        unreachable_islands=frozenset(tick.unreachable_islands),
        islands_synced=tick.obs.islands_synced,
        policy=tick.spec.failure_policy,
        now=tick.obs.now,
        moving=(moving and (current is None or not current.active))
        or (evacuating is not None and (current is None or current.finished)),
        evacuating=evacuating,
        creation_failed=tick.memory.creation_failures.get(job.slug),
        creation_refused=tick.memory.creation_refusals.get(job.slug),
    )


def _evacuating(tick: Tick, previous: StageStatus, current: PodView | None) -> str | None:
    """Why an expert's current attempt must leave its node: remembered from an earlier tick, or
    its pod's node (the one it ran on, if the pod is gone already) carries a deletion taint or
    a termination condition."""
    if not isinstance(previous, DDMExpertStatus):
        return None
    if previous.evacuation is not None:
        return previous.evacuation
    if current is not None and current.finished:
        return None
    where = current.node if current is not None else (previous.node if previous.phase == "Running" else None)
    notice = tick.removal_notices.get(where) if where is not None else None
    return None if notice is None else f"node {where} is being removed ({notice})"


def _decide_stages(tick: Tick, status: DDMRunStatus, out: Outcome) -> dict[str, StageDecision]:
    """Every stage's decision, in pipeline order so that a finished stage unblocks the next at once."""
    decisions: dict[str, StageDecision] = {}

    def decide_job(job: StageJob, ready: bool | None = None) -> None:
        if ready is None:
            ready = stage_ready(job.stage, stage_phases(tick, status, decisions))
        decisions[job.slug] = decide_stage(_inputs(tick, status, job, ready))

    if not status.cluster_sizes and tick.obs.store.cluster_sizes:
        status.cluster_sizes = list(tick.obs.store.cluster_sizes)
    decide_job(StageJob("partition"))
    if decisions["partition"].status.phase == "Succeeded":
        _ensure_experts(tick, status, out)
    stop_moving_experts(tick, out)
    # Whether experts may start depends on the stages before them only, never on each other:
    # asked once for all of them (asked per expert, a tick of K experts costs K² look-ups).
    experts_ready = stage_ready("expert", stage_phases(tick, status, decisions))
    for k in sorted(tick.experts):
        decide_job(StageJob("expert", k), experts_ready)
    for stage in ("router", "assemble", "evaluate"):
        decide_job(StageJob(stage))
    return decisions


def _ensure_experts(tick: Tick, status: DDMRunStatus, out: Outcome) -> None:
    """One DDMExpert per cluster once the partition's cluster sizes are known."""
    sizes = status.cluster_sizes
    if not sizes:
        return
    clusters = tick.spec.partition.clusters
    if len(sizes) != clusters:
        raise _RunFailed(
            "PartitionMismatch", f"the partition wrote {len(sizes)} clusters, partition.clusters is {clusters}"
        )
    if empty := [k for k, size in enumerate(sizes) if size == 0]:
        raise _RunFailed(
            "EmptyCluster",
            f"clusters {empty} of the partition are empty: the dataset has too few examples for {len(sizes)} clusters",
        )
    now = tick.obs.monotonic
    created = {k: when for k, when in tick.memory.experts_created.items() if k not in tick.experts}
    for k in range(len(sizes)):
        if k in tick.experts or now - created.get(k, -math.inf) < EXPERT_SHOWN_WITHIN:
            continue
        run = tick.obs.run
        manifest = build_expert(
            run=run.name, namespace=run.namespace, owner=tick.owner, spec=tick.spec, expert=k, sizes=sizes
        )
        out.actions.append(CreateExpert(manifest, expert=k))
        created[k] = now
    out.experts_created = created
