"""Growable capacity in a plan: autoscaler pools as nodes of the makespan problem, the choice
between the fleet alone and the fleet plus pools, and what a plan asks of each pool.

A pool joins the problem as one node named by its placeholder (`<pool>:<product>`), whose
GPUs are what the pool may still add and whose options start no earlier than its
provisioning delay. `solve_with_pools` keeps the fleet-alone schedule unless provisioning
shortens the makespan by more than MIN_PROVISION_GAIN, and moves experts that gain nothing
there off new capacity. Pure: numbers and value types in and out, no Kubernetes, no clock.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from atoll.api.spec import PlacementSpec
from atoll.operator.placement.fleet import Exclusion, ExclusionKind, GpuNode
from atoll.operator.placement.gpus import lookup, supports_bf16
from atoll.operator.placement.plan import Assignment, Provision
from atoll.operator.placement.pools import GrowablePool
from atoll.operator.placement.schedule import Job, Problem, Schedule, solve, vacate

MIN_PROVISION_GAIN = 0.02
"""Provisioning must shorten the makespan by more than this fraction of the fleet-alone plan's:
new nodes cost money and may be slow to come, so a plan does not ask for them to win seconds."""


@dataclass(frozen=True, kw_only=True, slots=True)
class PoolNode:
    """A pool as a node of the makespan problem."""

    node: GpuNode
    """Named by the pool's placeholder; its GPUs are what the plan may provision (and what
    experts already waiting for the pool hold)."""
    pool: GrowablePool
    per_expert_gpus: int
    """Most GPUs one expert may take there (its GPUs are on one new node)."""


def pool_nodes(
    pools: Sequence[GrowablePool],
    *,
    placement: PlacementSpec,
    bf16: bool,
    held: Mapping[str, int],
    free_experts: int,
) -> tuple[list[PoolNode], list[Exclusion]]:
    """The pools the run may use as problem nodes, and why the others are left out.

    `held`: placeholder → GPUs that experts waiting for the pool hold (pinned there);
    `free_experts`: experts to place. A pool's GPUs are its headroom, never more than every
    free expert could use at once, and never less than what the waiting experts hold.
    """
    top = placement.gpu.max_per_expert
    usable: list[PoolNode] = []
    excluded: list[Exclusion] = []
    for pool in pools:
        name = pool.placeholder
        waiting = held.get(name, 0)
        per_expert = min(top, pool.gpus_per_node or top)
        wanted = waiting + free_experts * per_expert
        headroom = pool.headroom_gpus
        capacity = wanted if headroom is None else max(waiting, min(headroom, wanted))
        entry = lookup(pool.product)
        reason = _unusable(pool, placement, bf16, capacity)
        if reason is not None or entry is None:
            kind, why = reason or ("bad-node", f"pool {pool.pool}: {pool.product} is not catalogued")
            excluded.append(Exclusion(node=name, kind=kind, reason=why))
            continue
        node = GpuNode(
            name=name,
            product=pool.product,
            memory_mib=entry.memory_mib,
            gpus=capacity,
            free_gpus=capacity,
            compute_major=None,
        )
        usable.append(PoolNode(node=node, pool=pool, per_expert_gpus=per_expert))
    return usable, excluded


def _unusable(
    pool: GrowablePool, placement: PlacementSpec, bf16: bool, capacity: int
) -> tuple[ExclusionKind, str] | None:
    """Why the run cannot use a pool's new nodes (its GPU constraints, as for a node), or None."""
    entry = lookup(pool.product)
    gpu = placement.gpu
    allowed = {p.lower() for p in gpu.products}
    where = f"pool {pool.pool}"
    if entry is None:
        return "bad-node", f"{where}: {pool.product} is not catalogued (its GPU memory is unknown)"
    if allowed and pool.product.lower() not in allowed:
        return "constraint", f"{where}: {pool.product} not in placement.gpu.products"
    if entry.memory_mib / 1024 < gpu.min_memory_gi_b:
        return "constraint", f"{where}: {entry.memory_mib / 1024:.1f} GiB GPUs < placement.gpu.minMemoryGiB"
    if bf16 and not supports_bf16(pool.product, None):
        return "constraint", f"{where}: {pool.product} has no bf16 and precision is bf16"
    if capacity <= 0:
        return "full", f"{where}: at its GPU limit ({pool.max_gpus} GPUs, {pool.gpus_in_use} held by its nodes)"
    return None


@dataclass(frozen=True, slots=True)
class PoolSchedules:
    """The makespan schedules of a problem with pools: the one the makespan rule picks, and the
    other candidate (fleet alone or fleet plus pools), which a cost objective may prefer."""

    chosen: Schedule
    """The fleet alone unless provisioning gains more than MIN_PROVISION_GAIN."""
    others: tuple[Schedule, ...] = ()


def solve_with_pools(problem: Problem, first_pool: int, budget: int) -> PoolSchedules:
    """The better of the fleet alone (nodes before `first_pool`) and the fleet plus pools (the
    problem's last nodes): provisioning only for a gain above MIN_PROVISION_GAIN, and only
    for the experts that need it."""
    if first_pool >= len(problem.capacity):
        return PoolSchedules(solve(problem, exact_budget=budget))
    grown = vacate(problem, solve(problem, exact_budget=budget), range(first_pool, len(problem.capacity)))
    kept: list[list[int]] = []
    for job in problem.jobs:
        kept.append([i for i, o in enumerate(job.options) if o.node < first_pool])
        if not kept[-1]:
            return PoolSchedules(grown)  # some expert fits only on new capacity (or, pinned, waits for it)
    fleet_only = Problem(
        capacity=problem.capacity[:first_pool],
        rate=problem.rate[:first_pool],
        jobs=tuple(
            Job(options=tuple(job.options[i] for i in index), pinned=job.pinned)
            for job, index in zip(problem.jobs, kept, strict=True)
        ),
    )
    static = solve(fleet_only, exact_budget=budget)
    choice = tuple(index[c] for index, c in zip(kept, static.choice, strict=True))
    alone = Schedule(choice, static.start, static.finish, static.makespan, static.proven_optimal)
    if grown.makespan < static.makespan * (1 - MIN_PROVISION_GAIN):
        return PoolSchedules(grown, (alone,))
    return PoolSchedules(alone, (grown,))


def provisions(used: Sequence[PoolNode], assignments: Sequence[Assignment]) -> tuple[Provision, ...]:
    """What a plan asks each pool for: the most GPUs at once, GPU-hours and their cost."""
    asked = []
    for entry in sorted(used, key=lambda p: p.node.name):
        mine = [a for a in assignments if a.node == entry.node.name]
        if not mine:
            continue
        # At equal times a finish (negative) comes first: its GPUs are taken again at once.
        changes = sorted([(a.start_seconds, a.gpus) for a in mine] + [(a.predicted_seconds, -a.gpus) for a in mine])
        peak = held = 0
        for _, change in changes:
            held += change
            peak = max(peak, held)
        hours = sum(a.gpus * (a.predicted_seconds - a.start_seconds) for a in mine) / 3600
        price = entry.pool.cost_per_gpu_hour
        asked.append(
            Provision(
                pool=entry.pool.pool,
                product=entry.pool.product,
                placeholder=entry.node.name,
                gpus=peak,
                headroom_gpus=entry.node.gpus,
                ready_seconds=entry.pool.provisioning_seconds,
                gpu_hours=hours,
                cost=None if price is None else hours * price,
            )
        )
    return tuple(asked)
