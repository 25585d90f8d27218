"""Plans for a run in flight: re-plan after a failure or a lost node, migrate to faster free GPUs.

Pure decisions for the operator. `replan` keeps running experts where they are (unless
their node is gone, NotReady or unhealthy) and places everything else again with the
work that remains; `migrations` says which running experts gain more than a restart
costs by moving, at their next checkpoint, to GPUs the plan leaves idle (on another node,
or more GPUs of their own: growing in place). Speeds are
corrected by the samples/s the experts report. Never calls the Kubernetes API.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Protocol

from atoll.api import DDMRunSpec
from atoll.operator.placement.capacity import Requests, expert_pod_size
from atoll.operator.placement.cost import node_prices
from atoll.operator.placement.fleet import Fleet, as_dict, node_products, read_fleet
from atoll.operator.placement.plan import Assignment, Plan
from atoll.operator.placement.planner import (
    STALE_AFTER_SECONDS,
    experts_of,
    plan,
    speed_table,
)
from atoll.operator.placement.pools import GrowablePool
from atoll.operator.placement.problem import ExpertWork
from atoll.operator.placement.schedule import EPS
from atoll.operator.placement.speeds import throughput, trains_in_bf16
from atoll.operator.placement.workload import workload_of
from atoll.progress import StageProgress

RESTART_SECONDS = 120.0
"""What moving an expert costs: pod start, image and data loading, checkpoint restore."""
MIN_GAIN_FRACTION = 0.05
"""A move must also shorten the expert's remaining time by this fraction (no ping-pong)."""
KEEP_RUNNING_ON = frozenset({"cordoned", "full", "cpu", "host-memory", "stale", "constraint", "memory"})
"""Exclusions under which a running expert stays: cordoning evicts nothing, requests do not
evict a bound pod, and a stale agent or a changed constraint does not stop a pod that already runs."""


class Placed(Protocol):
    """Where a running expert's pod is: an Assignment, or the operator's own record of the pod."""

    @property
    def node(self) -> str: ...
    @property
    def gpus(self) -> int: ...
    @property
    def micro_batch(self) -> int | None: ...
    @property
    def grad_accum(self) -> int | None: ...


@dataclass(frozen=True, kw_only=True, slots=True)
class Migration:
    """Move `expert` from `from_node` to `to` once it commits the checkpoint of `at_step`."""

    expert: int
    from_node: str
    at_step: int
    to: Assignment
    gain_seconds: float
    """Predicted finish now minus predicted finish after the move (restart cost included)."""


def replan(
    spec: DDMRunSpec,
    nodes: Iterable[Any],
    *,
    progress: Mapping[int, StageProgress],
    running: Mapping[int, Placed],
    cluster_sizes: Sequence[int] | None = None,
    used_gpus: Mapping[str, int] | None = None,
    used_requests: Mapping[str, Requests] | None = None,
    now: datetime | None = None,
    pools: Sequence[GrowablePool] = (),
    deadline_seconds: float | None = None,
) -> Plan:
    """A new plan for the unfinished experts of a run in flight.

    `deadline_seconds`: what is left of placement.deadlineHours from now (None: the whole of
    it, counted from now; ignored without deadlineHours).

    `progress`: expert → its latest progress.json; `running`: expert → where its pod runs
    now (node, GPUs, micro-batch, accumulation); `used_gpus` and `used_requests`: GPUs and
    CPU/memory requested on each node by pods *other than* those in `running` (a node offers
    only the GPUs whose expert pods its free CPU and memory hold). A running expert whose node still exists, is
    Ready and healthy stays pinned there (start 0) with the work left after its current
    step; every other unfinished expert is placed anew with the work left after its last
    checkpoint (what a restart resumes from). Experts whose progress says done are left
    out. An assignment on another node than where the expert runs means: move it (that
    only happens when its node is gone, NotReady or unhealthy). An expert whose pod waits
    for a new node of a pool (running at the pool's placeholder) stays pinned there.
    """
    node_list = [as_dict(n) for n in nodes]
    work = _remaining_work(
        spec,
        nodes=node_list,
        progress=progress,
        running=running,
        cluster_sizes=cluster_sizes,
        used_gpus=used_gpus,
        now=now,
        pools=pools,
    )
    if not work:
        return Plan(assignments=(), makespan_seconds=0.0, lower_bound_seconds=0.0, speeds={}, proven_optimal=True)
    return plan(
        node_list,
        work,
        workload=workload_of(spec),
        placement=spec.placement,
        speeds=speed_table(spec, progress=progress.values(), nodes=node_list),
        used_gpus=used_gpus,
        now=now,
        pod_size=expert_pod_size(spec),
        used_requests=used_requests,
        pools=pools,
        deadline_seconds=deadline_seconds if spec.placement.deadline_hours is not None else None,
    )


def _dearer(prices: Mapping[str, float], stay: Assignment, boundary: float, move: tuple[str, int, float]) -> bool:
    """Whether moving at the checkpoint boundary (to `move`: node, GPUs, predicted finish) costs
    more than staying: GPU-seconds from the boundary on × each node's price (none: free)."""
    node, gpus, finish = move
    staying = stay.gpus * (stay.predicted_seconds - boundary) * prices.get(stay.node, 0.0)
    return gpus * (finish - boundary) * prices.get(node, 0.0) > staying * (1 + 1e-9)


def migrations(
    spec: DDMRunSpec,
    nodes: Iterable[Any],
    *,
    progress: Mapping[int, StageProgress],
    running: Mapping[int, Placed],
    cluster_sizes: Sequence[int] | None = None,
    used_gpus: Mapping[str, int] | None = None,
    used_requests: Mapping[str, Requests] | None = None,
    now: datetime | None = None,
    restart_seconds: float = RESTART_SECONDS,
    min_gain_fraction: float = MIN_GAIN_FRACTION,
    pools: Sequence[GrowablePool] = (),
    deadline_seconds: float | None = None,
) -> list[Migration]:
    """Running experts that should move to faster GPUs left idle, at their next checkpoint.

    Arguments as for `replan`. The status quo is `replan` with every running expert pinned. For each running expert
    (latest predicted finish first) the move considered is: keep training until the next
    checkpoint (`checkpointEvery`), restart on g GPUs of another node that the status-quo
    plan leaves idle from then until the moved expert would finish — or grow in place: more
    GPUs on its own node, its own plus ones left idle there — so no other expert is delayed
    and the makespan cannot grow — and finish sooner than staying by more than
    the restart cost (included in the prediction) and `min_gain_fraction` of the time it
    has left. Accepted moves reserve their GPUs before the next expert is considered. Under
    `placement.deadlineHours` a move must also not cost more than staying (GPU-hours from the
    checkpoint boundary on × the nodes' prices): the plan is the cheapest that meets the
    deadline, and idle dear GPUs are idle on purpose.
    """
    node_list = [as_dict(n) for n in nodes]
    prices = node_prices(node_list)[0] if spec.placement.deadline_hours is not None else None
    status_quo = replan(
        spec,
        node_list,
        progress=progress,
        running=running,
        cluster_sizes=cluster_sizes,
        used_gpus=used_gpus,
        used_requests=used_requests,
        now=now,
        pools=pools,
        deadline_seconds=deadline_seconds,
    )
    workload = workload_of(spec)
    fleet = read_fleet(
        node_list,
        placement=spec.placement,
        used_gpus=used_gpus,
        now=now,
        stale_after_seconds=STALE_AFTER_SECONDS,
        pod_size=expert_pod_size(spec),
        used_requests=used_requests,
    )
    speeds = speed_table(spec, progress=progress.values(), nodes=node_list)
    busy = _Occupancy(status_quo.assignments, {n.name: n.free_gpus for n in fleet.nodes})
    batch = spec.expert.recipe().global_batch_size
    every = spec.expert.recipe().checkpoint_every
    totals = {w.expert: w.samples for w in experts_of(spec, cluster_sizes)}
    moves: list[Migration] = []
    candidates = [
        (a.expert, a)
        for a in status_quo.assignments
        if a.expert is not None
        and a.expert in running
        and a.start_seconds <= EPS
        and running[a.expert].node == a.node
        and a.pool is None  # an expert waiting for a pool's new node does not train yet
    ]
    for expert, stay in sorted(candidates, key=lambda pair: (-pair[1].predicted_seconds, pair[0])):
        item = progress.get(expert)
        step = item.step if item is not None else 0
        boundary = min(math.ceil((step + 1) / every) * every, totals[expert] // batch)
        left = totals[expert] - boundary * batch
        if left <= 0:
            continue
        reported = item.samples_per_second if item is not None and item.samples_per_second else None
        until_boundary = (boundary - step) * batch / (reported or stay.samples_per_second)
        release = until_boundary + restart_seconds
        best: tuple[float, int, str, Assignment] | None = None
        for node in fleet.nodes:
            # On its own node the expert keeps its GPUs and grows by GPUs left idle there.
            held = stay.gpus if node.name == stay.node else 0
            bf16 = trains_in_bf16(workload, node.product, node.compute_major)
            per_gpu = speeds.per_gpu(node.product, node.compute_major)
            for gpus in range(held + 1, min(spec.placement.gpu.max_per_expert, node.free_gpus) + 1):
                split = workload.split_batch(batch, gpus, node.memory_mib, bf16)
                if split is None:
                    continue
                speed = throughput(per_gpu, gpus)
                finish = release + left / speed
                if not busy.idle(node.name, gpus - held, until_boundary, finish):
                    continue
                if prices is not None and _dearer(prices, stay, until_boundary, (node.name, gpus, finish)):
                    continue
                rank = (finish, gpus, node.name)
                if best is None or rank < best[:3]:
                    target = Assignment(
                        expert=expert,
                        node=node.name,
                        gpu_product=node.product,
                        gpus=gpus,
                        micro_batch=split[0],
                        grad_accum=split[1],
                        samples=left,
                        start_seconds=release,
                        predicted_seconds=finish,
                        samples_per_second=speed,
                    )
                    best = (finish, gpus, node.name, target)
        if best is None:
            continue
        gain = stay.predicted_seconds - best[0]
        if gain <= min_gain_fraction * stay.predicted_seconds:
            continue
        held = stay.gpus if best[3].node == stay.node else 0
        busy.reserve(best[3].node, best[3].gpus - held, until_boundary, best[0])
        moves.append(Migration(expert=expert, from_node=stay.node, at_step=boundary, to=best[3], gain_seconds=gain))
    return sorted(moves, key=lambda m: m.expert)


def _remaining_work(
    spec: DDMRunSpec,
    *,
    nodes: list[Mapping[str, Any]],
    progress: Mapping[int, StageProgress],
    running: Mapping[int, Placed],
    cluster_sizes: Sequence[int] | None,
    used_gpus: Mapping[str, int] | None,
    now: datetime | None,
    pools: Sequence[GrowablePool] = (),
) -> list[ExpertWork]:
    fleet = read_fleet(nodes, placement=spec.placement, used_gpus=used_gpus, now=now)
    products = node_products(nodes)
    waiting = {pool.placeholder: pool.product for pool in pools}
    batch = spec.expert.recipe().global_batch_size
    work: list[ExpertWork] = []
    for expert in experts_of(spec, cluster_sizes):
        item = progress.get(expert.expert)
        if item is not None and item.state == "done":
            continue
        where = running.get(expert.expert)
        if where is not None and (
            where.node in waiting or (where.node in products and _node_keeps_pods(fleet, where.node))
        ):
            step = item.step if item is not None else 0
            left = _unfinished(expert.samples, step, batch)
            if left > 0:
                pin = _pin(where, products.get(where.node) or waiting[where.node], left, batch)
                work.append(replace(expert, samples=left, pinned=pin))
            continue
        resumed = item.last_checkpoint.step if item is not None and item.last_checkpoint is not None else 0
        left = _unfinished(expert.samples, resumed, batch)
        if left > 0:
            work.append(replace(expert, samples=left))
    return work


def _unfinished(samples: int, step: int, batch: int) -> int:
    """The samples an expert not done yet has left after `step`: at least one step's worth.
    An expert whose last checkpoint is its final step but whose done marker is missing (its
    pod or island was lost between the two) still needs an attempt, which resumes from that
    checkpoint and finishes at once; a running one at its final step still holds its GPUs."""
    if samples <= 0:
        return 0
    return max(samples - step * batch, min(batch, samples))


def _pin(where: Placed, product: str, samples: int, batch: int) -> Assignment:
    micro = where.micro_batch or batch // max(1, where.gpus)
    accum = where.grad_accum or max(1, batch // (micro * max(1, where.gpus)))
    return Assignment(
        expert=None,
        node=where.node,
        gpu_product=product,
        gpus=where.gpus,
        micro_batch=micro,
        grad_accum=accum,
        samples=samples,
        start_seconds=0.0,
        predicted_seconds=0.0,
        samples_per_second=0.0,
    )


def _node_keeps_pods(fleet: Fleet, node: str) -> bool:
    """Whether a pod running on `node` keeps running: usable, or excluded for a benign reason."""
    if any(n.name == node for n in fleet.nodes):
        return True
    exclusion = fleet.exclusion(node)
    return exclusion is not None and exclusion.kind in KEEP_RUNNING_ON


class _Occupancy:
    """GPUs in use over time per node, from a plan's assignments (for 'is this GPU left idle?')."""

    def __init__(self, assignments: Iterable[Assignment], capacity: Mapping[str, int]) -> None:
        self.capacity = dict(capacity)
        self.intervals: dict[str, list[tuple[float, float, int]]] = {}
        for a in assignments:
            self.reserve(a.node, a.gpus, a.start_seconds, a.predicted_seconds)

    def reserve(self, node: str, gpus: int, start: float, end: float) -> None:
        self.intervals.setdefault(node, []).append((start, end, gpus))

    def idle(self, node: str, gpus: int, start: float, end: float) -> bool:
        """Whether `gpus` GPUs of `node` are unused during the whole of [start, end)."""
        overlapping = [(s, e, g) for s, e, g in self.intervals.get(node, []) if s < end and e > start]
        # Peak use inside the window: check at the window start and every interval start in it.
        points = [start, *(s for s, _, _ in overlapping if s > start)]
        peak = max((sum(g for s, e, g in overlapping if s <= t < e) for t in points), default=0)
        return self.capacity.get(node, 0) - peak >= gpus
