"""What a run has used and what it asks of autoscalers, kept in `status.usage`, and the Events
when it asks for capacity and gives it back. Pure: reads the tick, writes the status and Events.

GPU-hours come from each pod's container state (`startedAt`, and `finishedAt` once it
terminated), which the API server keeps, so an operator that restarts reads the same times
back (the stage heartbeats say when training began, not when the GPUs were taken). An
attempt's GPU-hours are added to `finishedGpuHours` once, when its pod has ended, and its
attempt is recorded in `countedAttempts`: a later tick, or a restarted operator reading the
status back, skips it, and a finished pod that is deleted afterwards is not forgotten. A pod
that disappears before its end was seen (deleted while it ran) counts until the tick that no
longer sees it, from its entry in `holding`.

Events, each derived from the status so that neither a later tick nor a restart repeats it:
`CapacityRequested` when more GPUs of a pool are asked for than the status says (pods created
that wait for the pool's new nodes), `CapacityReleased` when the run's last GPU pod on a node
ends (the node leaves `holding`, or a pod that ran between two ticks is counted).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from atoll.api.status import DDMRunStatus, PodUsageStatus, PoolRequestStatus, UsageStatus
from atoll.operator.reconcile.actions import CreatePod
from atoll.operator.reconcile.context import Outcome, Tick
from atoll.operator.views import ANNOTATION_GPU_PRODUCT, ANNOTATION_PLANNED_POOL, PodView, pod_gpus


def account_usage(tick: Tick, status: DDMRunStatus, out: Outcome) -> None:
    """Bring `status.usage` up to this tick (see the module docstring), with its Events."""
    now = tick.obs.now
    before = status.usage or UsageStatus()
    counted = dict(before.counted_attempts)
    finished = before.finished_gpu_hours
    holding: list[PodUsageStatus] = []
    ended: list[PodUsageStatus] = []
    """Pods that held GPUs and whose end this tick counted (seen ended, or gone)."""
    seen: set[str] = set()
    for pod in sorted(tick.pods, key=lambda p: (p.stage, -1 if p.expert is None else p.expert, p.attempt)):
        slug = f"expert-{pod.expert}" if pod.stage == "expert" else pod.stage  # StageJob's slug
        seen.add(pod.name)
        if pod.gpus <= 0 or pod.attempt <= counted.get(slug, 0):
            continue
        if pod.finished:
            if pod.started_at is not None and pod.finished_at is not None:
                finished += _hours(pod.gpus, pod.started_at, pod.finished_at)
                if pod.node is not None:
                    ended.append(_holding(pod, slug))
            counted[slug] = pod.attempt
        elif pod.started_at is not None and pod.node is not None:
            holding.append(_holding(pod, slug))
    if tick.obs.islands_synced:  # a pod not seen yet on an island is not a pod that is gone
        for gone in before.holding:
            if gone.pod not in seen and gone.attempt > counted.get(gone.stage, 0):
                finished += _hours(gone.gpus, gone.started_at, now)
                counted[gone.stage] = gone.attempt
                ended.append(gone)
    requested = _requested(tick, out)
    # Running pods count up to the last whole minute: the status changes at most once a minute
    # for them (a patch per tick of every training run would load the API server for nothing).
    as_of = now.replace(second=0, microsecond=0)
    running = sum(_hours(entry.gpus, entry.started_at, as_of) for entry in holding)
    usage = UsageStatus(
        gpu_hours=_figure(finished + running),
        as_of=as_of if holding else None,
        finished_gpu_hours=round(finished, 6),
        counted_attempts=counted,
        holding=holding,
        requested=requested,
        requested_gpus=sum(r.gpus for r in requested),
    )
    _capacity_events(tick, before, usage, ended, out)
    if status.usage is not None or usage != UsageStatus():
        status.usage = usage


def _holding(pod: PodView, slug: str) -> PodUsageStatus:
    assert pod.started_at is not None
    assert pod.node is not None
    return PodUsageStatus(
        pod=pod.name,
        stage=slug,
        attempt=pod.attempt,
        node=pod.node,
        pool=pod.planned_pool,
        gpus=pod.gpus,
        started_at=pod.started_at,
    )


def _requested(tick: Tick, out: Outcome) -> list[PoolRequestStatus]:
    """GPUs asked of each pool now: the run's pods that wait for a pool's new node, and those
    created by this tick (not seen yet)."""
    asked: dict[tuple[str, str], list[int]] = {}

    def add(pool: str, product: str, gpus: int) -> None:
        entry = asked.setdefault((pool, product), [0, 0])
        entry[0] += gpus
        entry[1] += 1

    seen = set()
    for pod in tick.pods:
        seen.add(pod.name)
        if pod.active and pod.node is None and pod.planned_pool and pod.gpu_product and pod.gpus > 0:
            add(pod.planned_pool, pod.gpu_product, pod.gpus)
    for create in out.actions:
        if not isinstance(create, CreatePod):
            continue
        metadata = create.manifest.get("metadata") or {}
        annotations = metadata.get("annotations") or {}
        pool, product = annotations.get(ANNOTATION_PLANNED_POOL), annotations.get(ANNOTATION_GPU_PRODUCT)
        gpus = pod_gpus(create.manifest.get("spec") or {})
        if pool and product and gpus > 0 and metadata.get("name") not in seen:
            add(pool, product, gpus)
    return [
        PoolRequestStatus(pool=pool, gpu_product=product, gpus=gpus, pods=pods)
        for (pool, product), (gpus, pods) in sorted(asked.items())
    ]


def _capacity_events(
    tick: Tick, before: UsageStatus, after: UsageStatus, ended: list[PodUsageStatus], out: Outcome
) -> None:
    """CapacityRequested for every pool asked for more GPUs than before, CapacityReleased for
    every node the run held GPUs on (at the last tick, or by a pod whose end this tick counted:
    one that ran between two ticks) and holds none on now."""
    asked_before = {(r.pool, r.gpu_product): r.gpus for r in before.requested}
    for request in after.requested:
        more = request.gpus - asked_before.get((request.pool, request.gpu_product), 0)
        if more > 0:
            out.events.append(
                tick.event(
                    None,
                    "Normal",
                    "CapacityRequested",
                    f"asked autoscaler pool {request.pool} for {more} {request.gpu_product} GPU(s):"
                    f" {request.pods} pod(s) wait for its new nodes, {request.gpus} GPU(s) in all",
                )
            )
    still = {entry.node for entry in after.holding}
    held = {entry.pod: entry for entry in [*ended, *before.holding]}  # the entry from its start wins
    for node, entries in _by_node(held.values()).items():
        if node in still:
            continue
        gpus = sum(entry.gpus for entry in entries)
        pool = next((entry.pool for entry in entries if entry.pool), None)
        where = f"node {node}" + (f" (pool {pool})" if pool else "")
        out.events.append(
            tick.event(
                None,
                "Normal",
                "CapacityReleased",
                f"gave back {gpus} GPU(s) of {where}: the run's last pod there ended",
            )
        )


def _by_node(entries: Iterable[PodUsageStatus]) -> dict[str, list[PodUsageStatus]]:
    nodes: dict[str, list[PodUsageStatus]] = {}
    for entry in entries:
        nodes.setdefault(entry.node, []).append(entry)
    return nodes


def _hours(gpus: int, start: datetime, end: datetime) -> float:
    return gpus * max(0.0, (end - start).total_seconds()) / 3600


def _figure(value: float) -> float:
    """Four significant digits: what a person reads (a tiny run's GPU-hours are not 0)."""
    return float(f"{value:.4g}")
