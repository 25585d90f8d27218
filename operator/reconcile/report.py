"""The run's status at the end of one decision: each stage's new status (a DDMExpert's patch
only when it changed), the run's phase through the state machine, conditions, progress,
the model URI, the experts' last placement plan (its makespan, GPU-hours, cost, deadline), and
an Event for every transition (one: a stage whose pod is created now is
told by that pod's AttemptStarted Event; an expert's pod starting to run by its DDMExpert's
status alone). Pure.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from atoll import layout
from atoll.api.status import DDMExpertStatus, DDMRunStatus, PlanStatus, RunPhase, StageStatus
from atoll.operator.attempts import StageDecision
from atoll.operator.conditions import Trouble, changed, run_conditions
from atoll.operator.islands.loss import deletable
from atoll.operator.machine import TERMINAL, RunFacts, advance, run_progress
from atoll.operator.placement import Plan
from atoll.operator.reconcile.actions import CreatePod, DeletePod, PatchExpertStatus
from atoll.operator.reconcile.context import Outcome, Tick
from atoll.stages import StageJob


def stage_phases(tick: Tick, status: DDMRunStatus, decisions: Mapping[str, StageDecision]) -> RunFacts:
    """What the run's phase depends on, with this tick's decisions where made."""

    def phase(job: StageJob) -> Any:
        if job.slug in decisions:
            return decisions[job.slug].status.phase
        return tick.stage_status(job, status).phase

    experts = tick.expert_statuses
    complete = len(experts) == tick.spec.partition.clusters
    failure = None
    for slug, decision in decisions.items():
        if decision.failed:
            job = StageJob.from_slug(slug)
            # A stage given up because the store stayed unreachable: the store is what failed.
            outage = decision.status.store_outage_since is not None
            reason = "StoreUnreachable" if outage else f"{job.stage.capitalize()}Failed"
            failure = (reason, f"{job.label}: {decision.status.message}")
            break
    return RunFacts(
        store_ready=status.store_uri is not None,
        partition=phase(StageJob("partition")),
        experts=[phase(StageJob("expert", k)) for k in sorted(experts)] if complete else [],
        router=phase(StageJob("router")),
        assemble=phase(StageJob("assemble")),
        evaluate=phase(StageJob("evaluate")),
        failure=failure,
    )


def record_stages(
    tick: Tick, status: DDMRunStatus, decisions: Mapping[str, StageDecision], out: Outcome
) -> dict[int, DDMExpertStatus]:
    """Keep every stage's new status: the run's stages in `status`, a DDMExpert's by a patch
    when it differs from what it holds (or was left unsent by the last tick), except a Pending
    one while its pod is created now or is starting (`_starting`), left to a later tick
    (`RunMemory.experts_unsent`); an Event per stage transition. Returns every DDMExpert's
    status after this tick."""
    checkpoints = tick.obs.store.checkpoints
    previous = tick.expert_statuses
    experts = dict(previous)
    # A stage whose pod is created now has its transition to Pending told by that pod's
    # AttemptStarted Event (attempt, pod, GPU, node): a second Event would say less, once more.
    announced = {a.stage for a in out.actions if isinstance(a, CreatePod) and a.started is not None}
    for slug, decision in decisions.items():
        job = StageJob.from_slug(slug)
        new = decision.status
        if job.expert is None:
            old: StageStatus = getattr(status.stages, job.stage)
            _stage_event(tick, job, old.phase, new, out, announced=slug in announced)
            setattr(status.stages, job.stage, new)
            continue
        assert isinstance(new, DDMExpertStatus)
        if slug in checkpoints:
            new = new.model_copy(update={"last_checkpoint": checkpoints[slug]})
        old_expert = previous.get(job.expert, DDMExpertStatus())
        _stage_event(tick, job, old_expert.phase, new, out, announced=slug in announced)
        view = tick.experts.get(job.expert)
        if view is not None and (new != old_expert or job.expert in tick.memory.experts_unsent):
            if slug in announced or _starting(tick, job, new):
                out.experts_unsent.add(job.expert)  # its pod is created now, or starting: written later
            else:
                out.actions.append(PatchExpertStatus(job.expert, view.name, new))
        experts[job.expert] = new
    return experts


PENDING_WRITTEN_AFTER = 5.0
"""Seconds an expert's new pod may take to start before its status is written Pending. Most
start sooner, and the status is then written once, Running, instead of Pending and Running
(1024 writes fewer when 16 runs start 64 experts each)."""


def _starting(tick: Tick, job: StageJob, status: StageStatus) -> bool:
    """The expert's new status is Pending, and its attempt's pod was created less than
    PENDING_WRITTEN_AFTER ago and has not started yet."""
    if status.phase != "Pending":
        return False
    pod = next((p for p in tick.stage_pods(job) if p.attempt == status.attempt and p.active), None)
    if pod is None or pod.created_at is None:
        return False
    return (tick.obs.now - pod.created_at).total_seconds() < PENDING_WRITTEN_AFTER


def _stage_event(
    tick: Tick, job: StageJob, old: str, status: StageStatus, out: Outcome, *, announced: bool = False
) -> None:
    """An Event for the stage's transition to `status` (`announced`: its pod is created now,
    whose AttemptStarted Event tells the transition to Pending). An expert's pod starting to
    run posts none: its attempt's AttemptStarted Event already named the pod, node and GPU,
    and the DDMExpert's status (phase, node, step) shows it running — at 1000 experts that
    Event was 1000 writes in the start-up burst that told nothing new. The run's own stages
    (a handful per run) keep theirs."""
    if status.phase in ("Waiting", old) or (announced and status.phase == "Pending"):
        return
    if status.phase == "Running" and job.expert is not None:
        return
    kind = "Warning" if status.phase in ("Restarting", "Failed") else "Normal"
    reason = {"Pending": "Scheduling"}.get(status.phase, status.phase)
    what = {
        "Pending": f"attempt {status.attempt} waits for its pod to run",
        "Running": f"attempt {status.attempt} is running" + (f" on {status.node}" if status.node else ""),
        "Restarting": "is restarting",
        "Succeeded": "succeeded",
        "Failed": "failed",
    }[status.phase]
    detail = f": {status.message}" if status.message and status.phase in ("Restarting", "Failed") else ""
    out.events.append(tick.event(job, kind, reason, f"{job.label} {what}{detail}"))


def summarize(
    tick: Tick,
    status: DDMRunStatus,
    decisions: Mapping[str, StageDecision],
    statuses: Mapping[int, DDMExpertStatus],
    out: Outcome,
) -> None:
    """Experts ready, progress, the model URI, and the troubles of running stages."""
    clusters = tick.spec.partition.clusters
    ready = sum(1 for s in statuses.values() if s.phase == "Succeeded")
    status.experts_total = clusters
    status.experts_ready = ready
    status.experts = f"{ready}/{clusters}"
    stages = status.stages
    fraction = run_progress(
        partition=_fraction(stages.partition),
        experts=[_fraction(s) for s in statuses.values()],
        clusters=clusters,
        router=_fraction(stages.router),
        assemble=_fraction(stages.assemble),
        evaluate=_fraction(stages.evaluate),
    )
    status.progress_fraction = round(fraction, 4)
    status.progress = f"{math.floor(fraction * 100)}%"
    if stages.assemble.phase == "Succeeded" and tick.obs.store.run_uri:
        status.model_uri = f"{tick.obs.store.run_uri}/{layout.MODEL}"
    stale = timedelta(seconds=tick.settings.heartbeat_stale_seconds)
    for slug, decision in decisions.items():
        job = StageJob.from_slug(slug)
        stage = decision.status
        if stage.phase == "Restarting":
            out.troubles.append(Trouble("StageRestarting", f"{job.label}: {stage.message}"))
        elif stage.phase == "Running" and job.trains:
            beat = stage.heartbeat_time
            if beat is not None and tick.obs.now - beat > stale:
                out.troubles.append(
                    Trouble(
                        "HeartbeatStale",
                        f"{job.label} has not written progress.json since {beat.isoformat(timespec='seconds')}",
                    )
                )


def fail(tick: Tick, status: DDMRunStatus, reason: str, message: str, out: Outcome) -> None:
    """Move the run to Failed (from any phase) and stop its pods (its store data stays)."""
    transition(tick, status, ["Failed"], reason=reason, message=message, out=out)
    stop_pods(tick, out, why="the run failed")


def stop_pods(tick: Tick, out: Outcome, *, why: str) -> None:
    """Delete the run's active pods (a failed run frees its GPUs; on an island that does not
    answer, once it does)."""
    for pod in tick.pods:
        if pod.active and deletable(pod, tick.unreachable_islands):
            out.actions.append(DeletePod(pod.name, why=why))


def advance_phase(tick: Tick, status: DDMRunStatus, decisions: Mapping[str, StageDecision], out: Outcome) -> None:
    """The run's phase from the stages' (an Event per transition), or Failed when a stage gave up."""
    facts = stage_phases(tick, status, decisions)
    path = advance(tick.previous.phase, facts)
    if facts.failure is not None and path == ["Failed"]:
        fail(tick, status, *facts.failure, out=out)
        return
    transition(tick, status, path, reason=None, message=None, out=out)


def _message(tick: Tick, status: DDMRunStatus) -> str:
    """What the run is doing now, in its current phase."""
    phase = status.phase
    if phase == "Pending":
        return "writing spec.json to the store"
    if phase == "Partitioning":
        return f"partitioning {tick.spec.dataset.uri} into {tick.spec.partition.clusters} clusters"
    parts = [f"{status.experts_ready}/{status.experts_total} experts trained"]
    router = status.stages.router
    if router.phase != "Succeeded" and router.step is not None and router.total_steps:
        parts.append(f"router step {router.step}/{router.total_steps}")
    elif router.phase == "Succeeded":
        parts.append("router trained")
    if status.model_uri:
        parts.append(f"model at {status.model_uri}")
    return "; ".join(parts)


def transition(
    tick: Tick,
    status: DDMRunStatus,
    path: list[RunPhase],
    *,
    reason: str | None,
    message: str | None,
    out: Outcome,
) -> None:
    """Apply the phase path (an Event per transition) and recompute the conditions.

    `message` None: describe the phase the run ends up in.
    """
    for phase in path:
        old = status.phase
        status.phase = phase
        text = message if message is not None else _message(tick, status)
        if phase == "Failed":
            out.events.append(tick.event(None, "Warning", reason or "Failed", text))
        else:
            out.events.append(tick.event(None, "Normal", phase, f"{old} → {phase}: {text}"))
    message = message if message is not None else _message(tick, status)
    if status.phase in TERMINAL and status.completion_time is None:
        status.completion_time = tick.obs.now
    status.reason = reason if status.phase == "Failed" else None
    status.message = message
    previous = tick.previous.conditions
    conditions = run_conditions(
        previous,
        phase=status.phase,
        reason=reason,
        message=message,
        trouble=out.troubles[0] if out.troubles else None,
        now=tick.obs.now,
        generation=tick.obs.run.generation,
        unschedulable=_unschedulable(tick),
    )
    was_degraded = any(c.type == "Degraded" and c.status == "True" for c in previous)
    for condition in changed(previous, conditions):
        if condition.type == "Degraded" and (condition.status == "True" or was_degraded):
            kind = "Warning" if condition.status == "True" else "Normal"
            why = condition.reason if condition.status == "True" else "Recovered"
            out.events.append(tick.event(None, kind, why, condition.message))
    status.conditions = conditions
    status.observed_generation = tick.obs.run.generation


def _unschedulable(tick: Tick) -> str | None:
    """The scheduler's reason for the first of the run's pods it cannot place (None: none)."""
    for pod in sorted(tick.pods, key=lambda p: p.name):
        if pod.active and pod.node is None and pod.unschedulable:
            return f"pod {pod.name}: {pod.unschedulable}"
    return None


def _fraction(status: StageStatus) -> float:
    if status.phase == "Succeeded":
        return 1.0
    if status.step is not None and status.total_steps:
        return min(1.0, status.step / status.total_steps)
    return 0.0


def plan_status(plan: Plan, tick: Tick) -> PlanStatus:
    """What the run's status says of the plan made this tick; the deadline keeps counting from
    the run's first plan (`Tick.deadline_from`)."""
    now = tick.obs.now
    since = tick.deadline_from() or now
    hours = tick.spec.placement.deadline_hours
    deadline = since + timedelta(hours=hours) if hours is not None else None
    return PlanStatus(
        planned_at=now,
        makespan_seconds=round(plan.makespan_seconds, 1),
        gpu_hours=_figure(plan.cost.gpu_hours),
        cost=None if plan.cost.cost is None else _figure(plan.cost.cost),
        unpriced_gpu_hours=_figure(plan.cost.unpriced_gpu_hours),
        provisioned_gpus=sum(provision.gpus for provision in plan.provisions),
        idle_gpu_hours=_figure(plan.idle_gpu_hours),
        deadline_from=since,
        deadline=deadline,
        meets_deadline=None if deadline is None else now + timedelta(seconds=plan.makespan_seconds) <= deadline,
    )


def _figure(value: float) -> float:
    """Four significant digits: what a person reads, and a tiny run's GPU-hours are not 0."""
    return float(f"{value:.4g}")
