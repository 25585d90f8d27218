"""The one door from the reconciler to placement: which node, GPU product and batch split
each stage attempt gets, and which running experts should move to faster GPUs.

Experts go through the makespan planner of atoll.operator.placement (`place_experts`:
re-planned whenever an expert must start, over the fleet and the pools the run declares,
running experts pinned where they are, queued ones started only when their planned GPUs
are free — a pool's GPUs are free up to its headroom, placement.deadlineHours counted from
the run's first plan, not from each re-plan; `plan_moves`: the planner's
`migrations`), over the nodes of the islands `placement.islands` allows, its preferred
islands first when that finishes as early (atoll.operator.islands.fleet). The short stages
(partition, router, assemble, evaluate) go to the usable home node with the most free GPUs
(`plan_stages`); "usable" is the fleet's one rule
(atoll.operator.placement.fleet). Pure and deterministic: equal inputs give equal placements.
"""

from __future__ import annotations

import functools
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from atoll.api.placement import HOME_ISLAND
from atoll.api.spec import DDMRunSpec, PlacementSpec
from atoll.operator.islands.fleet import no_island_node, preference_tiers, restricted
from atoll.operator.placement import Assignment, Migration, PlacementError, Plan, labels, migrations, read_fleet, replan
from atoll.operator.placement.capacity import PodSize, Requests, expert_pod_size, gpu_room
from atoll.operator.placement.fleet import GpuNode, as_dict, untolerated_pool_taint
from atoll.operator.placement.planner import STALE_AFTER_SECONDS
from atoll.operator.placement.pools import GrowablePool, declared_pools
from atoll.operator.views import NodeView
from atoll.progress import StageProgress


@dataclass(frozen=True, slots=True)
class PlacementJob:
    """One short stage attempt that needs a node (and usually a GPU)."""

    key: str
    """The stage's slug: router, partition, assemble or evaluate."""
    global_batch: int | None
    micro_batch: int | None
    """The spec's micro-batch when set."""
    gpus: int = 1
    """GPUs it asks for; 0 for a stage that only needs a node of the fleet (assemble)."""


@dataclass(frozen=True)
class ExpertPlacement:
    """The experts that may start now, and why the others wait."""

    assignments: dict[int, Assignment]
    waiting: str | None = None
    """Experts that should start but are queued behind others on their planned GPUs."""
    error: str | None = None
    """No placement exists (no usable node fits); the planner's reasons per node."""
    plan: Plan | None = None
    """The plan the assignments come from (None: none was made, or none exists)."""


@dataclass(frozen=True, kw_only=True)
class FleetState:
    """What every expert placement of one run looks at."""

    spec: DDMRunSpec
    """The run's spec, the operator's GPU-per-pod cap applied."""
    nodes: Sequence[NodeView]
    running: Mapping[int, Assignment]
    """Experts whose pod exists and holds (or waits for) its GPUs, where it is."""
    progress: Mapping[int, StageProgress]
    cluster_sizes: Sequence[int] | None
    busy_gpus: Mapping[str, int]
    """GPUs held per node by every pod (this run's running experts included) and promised ones."""
    now: datetime
    busy_requests: Mapping[str, Requests] = field(default_factory=dict)
    """CPU and memory requested per node by the same pods (every non-terminal pod on it)."""
    running_requests: Mapping[str, Requests] = field(default_factory=dict)
    """CPU and memory requested per node by the pods of the experts in `running`."""
    cluster_pools: Sequence[GrowablePool] = ()
    """Pools read from the cluster (Karpenter NodePools): planned over next to the declared ones,
    a declared pool of the same name winning, those with taints the run does not tolerate left out."""
    excluded_pools: frozenset[str] = frozenset()
    """Declared pools left out of this placement (a pod waited for their new node past
    failurePolicy.pendingTimeoutSeconds)."""
    deadline_from: datetime | None = None
    """When placement.deadlineHours counts from (the run's first plan of its experts); None: now."""

    @property
    def deadline_seconds(self) -> float | None:
        """What is left of placement.deadlineHours from now (0 once past); None without one."""
        hours = self.spec.placement.deadline_hours
        if hours is None:
            return None
        spent = (self.now - self.deadline_from).total_seconds() if self.deadline_from is not None else 0.0
        return max(0.0, hours * 3600 - spent)

    @functools.cached_property
    def pod_size(self) -> PodSize:
        """What one of the run's expert pods on g GPUs requests (the pod builder's sizes)."""
        return expert_pod_size(self.spec)

    def others(self) -> dict[str, int]:
        """GPUs held per node by pods other than this run's running experts."""
        mine: dict[str, int] = {}
        for where in self.running.values():
            mine[where.node] = mine.get(where.node, 0) + where.gpus
        return {node: max(0, used - mine.get(node, 0)) for node, used in self.busy_gpus.items()}

    def other_requests(self) -> dict[str, Requests]:
        """CPU and memory requested per node by pods other than this run's running experts."""
        mine = self.running_requests
        return {node: used - mine.get(node, Requests()) for node, used in self.busy_requests.items()}

    def free_gpus(self) -> dict[str, int]:
        """GPUs free now per node: not held, and with the CPU and memory their expert pods need."""
        return dict(self._free)

    @functools.cached_property
    def _free(self) -> dict[str, int]:
        """`free_gpus`, worked out once per placement (a tick asks several times)."""
        return {node.name: free_gpus(node, self.busy_gpus, self.busy_requests, self.pod_size) for node in self.nodes}

    @functools.cached_property
    def _pools(self) -> tuple[GrowablePool, ...]:
        placement = self.spec.placement
        declared = declared_pools(placement.pools, self.nodes)
        names = {pool.pool for pool in declared}
        read = [
            pool
            for pool in self.cluster_pools
            if pool.pool not in names and untolerated_pool_taint(pool.taints, placement) is None
        ]
        return tuple(pool for pool in (*declared, *read) if pool.pool not in self.excluded_pools)

    def pools(self) -> tuple[GrowablePool, ...]:
        """The pools the run declares (spec.placement.pools), less what their nodes hold now, and
        those read from the cluster it may use (`cluster_pools`), `excluded_pools` left out."""
        return self._pools

    def planning_nodes(self, experts: int) -> list[NodeView]:
        """The nodes worth planning over, on the islands placement.islands.restrict allows."""
        keep = {w.node for w in self.running.values()}
        return distinct_nodes(
            restricted(self.nodes, self.spec.placement.islands, keep=keep),
            keep=keep,
            experts=experts,
            max_gpus=self.spec.placement.gpu.max_per_expert,
            busy_gpus=self.busy_gpus,
            free_gpus=self.free_gpus(),
        )

    def plan(self, nodes: Sequence[NodeView]) -> Plan:
        return replan(
            self.spec,
            nodes,
            progress=self.progress,
            running=self.running,
            cluster_sizes=self.cluster_sizes,
            used_gpus=self.others(),
            used_requests=self.other_requests(),
            now=self.now,
            pools=self.pools(),
            deadline_seconds=self.deadline_seconds,
        )


PREFER_TOLERANCE = 1e-6
"""A preferred islands' plan is taken when its makespan is within this fraction of the best one."""


def preferred_plan(fleet: FleetState) -> Plan:
    """The plan over the nodes placement.islands allows; when placement.islands.prefer names
    islands, the plan over the first preferred island alone (then the first two, …) instead,
    as soon as one finishes as early as the plan over every allowed node."""
    islands = fleet.spec.placement.islands
    nodes = fleet.planning_nodes(fleet.spec.partition.clusters - len(fleet.running))
    if islands.restrict and not nodes:
        raise PlacementError(no_island_node(islands))
    best = fleet.plan(nodes)
    keep = {w.node for w in fleet.running.values()}
    for tier in preference_tiers(nodes, islands, keep=keep):
        try:
            candidate = fleet.plan(tier)
        except PlacementError:
            continue  # the preferred islands cannot take every expert
        if candidate.makespan_seconds <= best.makespan_seconds * (1 + PREFER_TOLERANCE):
            return candidate
    return best


def free_gpus(
    node: NodeView, busy_gpus: Mapping[str, int], busy_requests: Mapping[str, Requests], size: PodSize
) -> int:
    """GPUs of `node` free now for expert pods of `size`: not held by any pod, and with the CPU
    and memory those pods request left over by every pod on it."""
    gpus = max(0, node.gpus - busy_gpus.get(node.name, 0))
    try:
        return gpu_room(as_dict(node), busy_requests.get(node.name, Requests()), size, gpus).gpus
    except ValueError:
        return 0  # unreadable allocatable: the fleet excludes the node


def place_experts(fleet: FleetState, starting: Collection[int]) -> ExpertPlacement:
    """Assignments for the experts in `starting` that the run's current plan lets start now."""
    if not starting:
        return ExpertPlacement({})
    try:
        plan = preferred_plan(fleet)
    except PlacementError as error:
        return ExpertPlacement({}, error=str(error))
    free = fleet.free_gpus()
    for provision in plan.provisions:  # what a pool may still add, less what pods waiting for it hold
        free[provision.placeholder] = provision.headroom_gpus - fleet.busy_gpus.get(provision.placeholder, 0)
    assignments = {
        a.expert: a
        for a in plan.next_to_start(set(fleet.running), free)
        if a.expert is not None and a.expert in starting
    }
    queued = sorted(set(starting) - set(assignments))
    waiting = None
    if queued:
        planned = {item.expert: item for item in plan.assignments}
        waiting = "; ".join(
            f"expert {k} queued for {planned[k].gpus} GPU(s) of {planned[k].node} (planned start in"
            f" {planned[k].start_seconds:.0f} s)"
            if k in planned
            else f"expert {k} not in the plan"
            for k in queued
        )
    return ExpertPlacement(assignments, waiting, plan=plan)


def plan_moves(fleet: FleetState, movable: Collection[int]) -> list[Migration]:
    """Experts in `movable` (their pods run) that gain from faster GPUs that became free
    (placement's `migrations`). Every expert in `fleet.running` holds its GPUs, a pod that
    still waits for its node included; a fleet the planner cannot place over moves nothing."""
    if not movable:
        return []
    try:
        moves = migrations(
            fleet.spec,
            fleet.planning_nodes(len(fleet.running)),
            progress={k: p for k, p in fleet.progress.items() if k in fleet.running},
            running=fleet.running,
            cluster_sizes=fleet.cluster_sizes,
            used_gpus=fleet.others(),
            used_requests=fleet.other_requests(),
            now=fleet.now,
            pools=fleet.pools(),
            deadline_seconds=fleet.deadline_seconds,
        )
    except PlacementError:
        return []
    return [move for move in moves if move.expert in movable]


def distinct_nodes(
    nodes: Sequence[NodeView],
    *,
    keep: Collection[str],
    experts: int,
    max_gpus: int,
    busy_gpus: Mapping[str, int],
    free_gpus: Mapping[str, int] | None = None,
) -> list[NodeView]:
    """The nodes worth planning over: `keep`, plus enough of each kind of identical node.

    Nodes that look the same to the planner (product, memory, GPUs, free GPUs, labels,
    taints, health) are interchangeable; `free_gpus` (node → GPUs free now, those whose
    expert pods the node's free CPU and memory hold) replaces allocatable minus busy where
    given. A node with f free GPUs runs at least
    ⌊f / max_gpus⌋ experts at once (each uses at most max_gpus), so ⌈experts / that⌉ nodes
    of a kind (at most `experts`: one each) can host every expert at the same time, and no
    plan needs more of them. On a 1000-node fleet of a few pools this shrinks the planner's
    problem by one to two orders of magnitude without changing what it can find.
    """
    kinds: dict[tuple[object, ...], int] = {}
    chosen = []
    by_name = sorted(nodes, key=lambda n: n.name)
    # Within a kind, nodes whose agent reported most recently first (a stale one is excluded).
    newest_first = sorted(by_name, key=lambda n: n.annotations.get(labels.HEARTBEAT, ""), reverse=True)
    for node in newest_first:
        if node.name in keep:
            chosen.append(node)
            continue
        free = node.gpus - busy_gpus.get(node.name, 0)
        if free_gpus is not None:
            free = free_gpus.get(node.name, free)
        kind = (
            node.island,
            node.gpus,
            free,
            node.unschedulable,
            node.ready,
            tuple(sorted((k, v) for k, v in node.labels.items() if k not in _IDENTITY_LABELS)),
            tuple(sorted((k, v) for k, v in node.annotations.items() if k not in _VOLATILE_ANNOTATIONS)),
            tuple(sorted(str(sorted(t.items())) for t in node.taints)),
        )
        per_node = free // max(1, max_gpus)
        needed = experts if per_node < 1 else -(-experts // per_node)
        if kinds.get(kind, 0) < needed:
            kinds[kind] = kinds.get(kind, 0) + 1
            chosen.append(node)
    return sorted(chosen, key=lambda n: n.name)


_IDENTITY_LABELS = frozenset({labels.HOSTNAME})
_VOLATILE_ANNOTATIONS = frozenset({labels.HEARTBEAT, labels.FREE_MIB, labels.GPUS})


def stage_nodes(nodes: Sequence[NodeView], placement: PlacementSpec, now: datetime) -> list[GpuNode]:
    """The nodes a short stage of this run may use: the fleet's one rule of a usable node
    (schedulable, Ready, healthy, a fresh agent heartbeat, taints tolerated, GPUs that fit),
    busy or not (a stage queues on a busy node rather than wait for a free one)."""
    return list(read_fleet(nodes, placement=placement, now=now, stale_after_seconds=STALE_AFTER_SECONDS).nodes)


def _split(job: PlacementJob, gpus: int) -> tuple[int | None, int | None]:
    """micro-batch × accumulation × GPUs = global batch, when the spec fixes the micro-batch."""
    if job.global_batch is None or job.micro_batch is None:
        return None, None
    per_step = job.micro_batch * gpus
    if job.global_batch % per_step:
        return None, None
    return job.micro_batch, job.global_batch // per_step


def plan_stages(
    jobs: Sequence[PlacementJob],
    nodes: Sequence[NodeView],
    busy_gpus: Mapping[str, int],
    placement: PlacementSpec,
    now: datetime,
) -> dict[str, Assignment]:
    """An assignment for each job that some node can run (jobs no node fits are left out).

    A job goes to the usable home node with the most free GPUs (ties by name): short stages
    stay in the home cluster. When every usable node is busy it still gets the largest one
    and its pod queues there.
    """
    candidates = stage_nodes([n for n in nodes if n.island == HOME_ISLAND], placement, now)
    free = {node.name: node.gpus - busy_gpus.get(node.name, 0) for node in candidates}
    plan: dict[str, Assignment] = {}
    for job in jobs:
        if not candidates:
            break
        node = max(candidates, key=lambda n: (free[n.name], n.gpus))  # first by name among equals
        free[node.name] -= job.gpus
        micro, accum = _split(job, job.gpus) if job.gpus else (None, None)
        plan[job.key] = Assignment(
            expert=None, node=node.name, gpu_product=node.product, gpus=job.gpus, micro_batch=micro, grad_accum=accum
        )
    return plan
