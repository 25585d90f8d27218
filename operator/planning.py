"""The one door from the reconciler to placement: which node, GPU product and batch split
each stage attempt gets.

Experts go through the makespan planner of atoll.operator.placement (`place_experts`:
re-planned whenever an expert must start, running experts pinned where they are, queued
ones started only when their planned GPUs are free). The short stages (partition,
router, assemble, evaluate) go to the usable node with the most free GPUs
(`plan_stages`). Pure and deterministic: equal inputs give equal placements.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from atoll.api.spec import DDMRunSpec, PlacementSpec
from atoll.operator.observe import NodeView
from atoll.progress import StageProgress


@dataclass(frozen=True, slots=True)
class PlacementJob:
    """One stage attempt that needs GPUs."""

    key: str
    """expert-<k>, router, partition or evaluate."""
    preset: str | None
    """Transformer preset it trains (None for partition / evaluate)."""
    samples: int
    """Work: steps × global batch (0 when unknown)."""
    global_batch: int | None
    micro_batch: int | None
    """The spec's micro-batch when set."""
    gpus: int = 1
    """GPUs it asks for; 0 for a stage that only needs a node of the fleet (assemble)."""


@dataclass(frozen=True, slots=True)
class Assignment:
    """Where a stage attempt runs and how it splits its batch."""

    node: str
    gpu_product: str | None
    gpus: int
    micro_batch: int | None
    grad_accum: int | None
    predicted_seconds: float | None = None
    pin: bool = False
    """True: the pod must run on `node` itself (a makespan plan); False: any node of the product."""


@dataclass(frozen=True, slots=True)
class Where:
    """Where a running expert's pod is (what re-planning keeps pinned)."""

    node: str
    gpus: int
    micro_batch: int | None
    grad_accum: int | None


@dataclass(frozen=True)
class ExpertPlacement:
    """The experts that may start now, and why the others wait."""

    assignments: dict[int, Assignment]
    waiting: str | None = None
    """Experts that should start but are queued behind others on their planned GPUs."""
    error: str | None = None
    """No placement exists (no usable node fits); the planner's reasons per node."""


def place_experts(
    spec: DDMRunSpec,
    nodes: Sequence[NodeView],
    *,
    starting: Collection[int],
    running: Mapping[int, Where],
    progress: Mapping[int, StageProgress],
    cluster_sizes: Sequence[int] | None,
    busy_gpus: Mapping[str, int],
    now: datetime,
) -> ExpertPlacement:
    """Assignments for the experts in `starting` that the run's current plan lets start now.

    `busy_gpus`: GPUs held per node by every pod (this run's running experts included).
    """
    from atoll.operator.placement import PlacementError, replan

    if not starting:
        return ExpertPlacement({})
    mine: dict[str, int] = {}
    for where in running.values():
        mine[where.node] = mine.get(where.node, 0) + where.gpus
    others = {node: max(0, used - mine.get(node, 0)) for node, used in busy_gpus.items()}
    unplaced = spec.partition.clusters - len(running)
    try:
        plan = replan(
            spec,
            distinct_nodes(
                nodes,
                keep={w.node for w in running.values()},
                experts=unplaced,
                max_gpus=spec.placement.gpu.max_per_expert,
                busy_gpus=busy_gpus,
            ),
            progress=progress,
            running=running,
            cluster_sizes=cluster_sizes,
            used_gpus=others,
            now=now,
        )
    except PlacementError as error:
        return ExpertPlacement({}, error=str(error))
    free = {node.name: node.gpus - busy_gpus.get(node.name, 0) for node in nodes}
    ready = {a.expert: a for a in plan.next_to_start(set(running), free) if a.expert in starting}
    assignments = {
        k: Assignment(
            node=a.node,
            gpu_product=a.gpu_product,
            gpus=a.gpus,
            micro_batch=a.micro_batch,
            grad_accum=a.grad_accum,
            predicted_seconds=a.predicted_seconds,
            pin=True,
        )
        for k, a in ready.items()
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
    return ExpertPlacement(assignments, waiting)


def distinct_nodes(
    nodes: Sequence[NodeView],
    *,
    keep: Collection[str],
    experts: int,
    max_gpus: int,
    busy_gpus: Mapping[str, int],
) -> list[NodeView]:
    """The nodes worth planning over: `keep`, plus enough of each kind of identical node.

    Nodes that look the same to the planner (product, memory, GPUs, free GPUs, labels,
    taints, health) are interchangeable. A node with f free GPUs runs at least
    ⌊f / max_gpus⌋ experts at once (each uses at most max_gpus), so ⌈experts / that⌉ nodes
    of a kind (at most `experts`: one each) can host every expert at the same time, and no
    plan needs more of them. On a 1000-node fleet of a few pools this shrinks the planner's
    problem by one to two orders of magnitude without changing what it can find.
    """
    kinds: dict[tuple[object, ...], int] = {}
    chosen = []
    by_name = sorted(nodes, key=lambda n: n.name)
    # Within a kind, nodes whose agent reported most recently first (a stale one is excluded).
    newest_first = sorted(by_name, key=lambda n: n.annotations.get(_HEARTBEAT, ""), reverse=True)
    for node in newest_first:
        if node.name in keep:
            chosen.append(node)
            continue
        kind = (
            node.gpus,
            node.gpus - busy_gpus.get(node.name, 0),
            node.unschedulable,
            node.ready,
            tuple(sorted((k, v) for k, v in node.labels.items() if k not in _IDENTITY_LABELS)),
            tuple(sorted((k, v) for k, v in node.annotations.items() if k not in _VOLATILE_ANNOTATIONS)),
            tuple(sorted(str(sorted(t.items())) for t in node.taints)),
        )
        free = node.gpus - busy_gpus.get(node.name, 0)
        per_node = free // max(1, max_gpus)
        needed = experts if per_node < 1 else -(-experts // per_node)
        if kinds.get(kind, 0) < needed:
            kinds[kind] = kinds.get(kind, 0) + 1
            chosen.append(node)
    return sorted(chosen, key=lambda n: n.name)


_HEARTBEAT = "atoll.dev/gpu-heartbeat"
_IDENTITY_LABELS = frozenset({"kubernetes.io/hostname"})
_VOLATILE_ANNOTATIONS = frozenset({_HEARTBEAT, "atoll.dev/gpu-free-mib", "atoll.dev/gpus"})


def usable_nodes(nodes: Sequence[NodeView], placement: PlacementSpec) -> list[NodeView]:
    """Nodes a stage of this run may use: schedulable, ready, healthy, with GPUs that fit."""
    need_mib = placement.gpu.min_memory_gi_b * 1024
    products = set(placement.gpu.products)
    found = []
    for node in nodes:
        if node.unschedulable or not node.ready or not node.healthy or node.gpus < 1:
            continue
        if node.gpu_memory_mib < need_mib or (products and node.gpu_product not in products):
            continue
        if any(node.labels.get(key) != value for key, value in placement.node_selector.items()):
            continue
        found.append(node)
    return sorted(found, key=lambda n: n.name)


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
) -> dict[str, Assignment]:
    """An assignment for each job that some node can run (jobs no node fits are left out).

    A job goes to the usable node with the most free GPUs (ties by name). When every
    usable node is busy it still gets the largest one and its pod queues there.
    """
    candidates = usable_nodes(nodes, placement)
    free = {node.name: node.gpus - busy_gpus.get(node.name, 0) for node in candidates}
    plan: dict[str, Assignment] = {}
    for job in jobs:
        if not candidates:
            break
        node = max(candidates, key=lambda n: (free[n.name], n.gpus))  # first by name among equals
        free[node.name] -= job.gpus
        micro, accum = _split(job, job.gpus) if job.gpus else (None, None)
        plan[job.key] = Assignment(
            node=node.name, gpu_product=node.gpu_product, gpus=job.gpus, micro_batch=micro, grad_accum=accum
        )
    return plan
