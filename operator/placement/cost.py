"""The cost objective of a plan: what its GPU-hours cost, and the cheapest schedule within a
time limit — the fastest plan's makespan without a deadline (cost only breaks ties), the
run's `placement.deadlineHours` with one.

Prices are per GPU-hour and per node of the makespan problem: a pool's `costPerGpuHour`
(declared, or a NodePool's `atoll.dev/cost-per-gpu-hour`), a ComputeIsland's
`costPerGpuHour` of its product (stamped on its nodes as that annotation,
atoll.operator.islands.fleet), or a node's own annotation. A GPU with no price counts as
free: it is capacity that exists and is paid for anyway; GPUs still to be provisioned come
second in the objective, so of two plans equal in cost the one that provisions less wins.
A schedule's cost is Σ GPUs × hours held (the start cost included, a pool's provisioning
delay not) × price. Pure: numbers in, numbers out; never returns a schedule longer than the
limit it is given.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from atoll.operator.placement.fleet import as_dict
from atoll.operator.placement.manifests import field_at
from atoll.operator.placement.plan import Assignment, PlanCost
from atoll.operator.placement.pools import COST_ANNOTATION
from atoll.operator.placement.schedule import EPS, ListSchedules, Option, Problem, Schedule

_Key = tuple[float, float]
"""(cost, GPU-hours still to be provisioned): what the objective lowers, in that order."""


@dataclass(frozen=True, slots=True)
class Pricing:
    """Per node of a problem: price of a GPU-hour (0: no price) and whether its GPUs are still to
    be provisioned (a pool's placeholder)."""

    price: tuple[float, ...]
    provisioned: tuple[bool, ...]

    def option_key(self, option: Option) -> _Key:
        """What running `option` costs, and its GPU-hours on capacity still to be provisioned."""
        hours = option.gpus * option.seconds / 3600
        return hours * self.price[option.node], hours if self.provisioned[option.node] else 0.0

    def key(self, problem: Problem, choice: Sequence[int]) -> _Key:
        """The objective of a whole choice (one option per job)."""
        keys = [self.option_key(job.options[index]) for job, index in zip(problem.jobs, choice, strict=True)]
        return math.fsum(k[0] for k in keys), math.fsum(k[1] for k in keys)


def node_prices(nodes: Iterable[Any]) -> tuple[dict[str, float], tuple[str, ...]]:
    """Node name → price of one of its GPUs for an hour (annotation `atoll.dev/cost-per-gpu-hour`),
    and one line per node whose annotation is not a finite number ≥ 0 (that node has no price)."""
    prices: dict[str, float] = {}
    problems: list[str] = []
    for raw in nodes:
        node = as_dict(raw)
        text = (field_at(node, "metadata", "annotations") or {}).get(COST_ANNOTATION)
        if text is None:
            continue
        name = str(field_at(node, "metadata", "name"))
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value < 0:
            problems.append(f"node {name}: metadata.annotations[{COST_ANNOTATION}] {text!r} is not a number ≥ 0")
            continue
        prices[name] = value
    return prices, tuple(problems)


def _less(a: _Key, b: _Key) -> bool:
    """a < b lexicographically, ignoring float noise (so a search never cycles)."""
    for x, y in zip(a, b, strict=True):
        tol = EPS * max(1.0, abs(y))
        if x < y - tol:
            return True
        if x > y + tol:
            return False
    return False


def cheapest_within(
    problem: Problem,
    schedule: Schedule,
    pricing: Pricing,
    limit: float,
    *,
    nodes: Collection[int] | None = None,
) -> Schedule:
    """`schedule` with jobs moved to cheaper options (onto `nodes` only, when given) wherever
    every node's list schedule stays within `limit`; repeated until nothing moves.

    Jobs are taken costliest first and each takes the cheapest option that fits; moves out of
    a node are checked too (removing a job can lengthen a list schedule). Returns `schedule`
    itself when nothing moves or the result would exceed `limit`.
    """
    lists = ListSchedules(problem)
    choice = list(schedule.choice)
    bound = limit + EPS * max(1.0, limit)
    on_node: dict[int, list[int]] = {}
    for job, index in enumerate(choice):
        on_node.setdefault(problem.jobs[job].options[index].node, []).append(job)
    moved = True
    while moved:
        moved = False
        order = sorted(
            range(len(choice)),
            key=lambda j: (pricing.option_key(problem.jobs[j].options[choice[j]]), -j),
            reverse=True,
        )
        for job in order:
            if problem.jobs[job].pinned:
                continue
            options = problem.jobs[job].options
            current = options[choice[job]]
            here = pricing.option_key(current)
            cheaper = sorted(
                (
                    i
                    for i, o in enumerate(options)
                    if (nodes is None or o.node in nodes) and _less(pricing.option_key(o), here)
                ),
                key=lambda i: (pricing.option_key(options[i]), options[i].seconds, i),
            )
            for index in cheaper:
                target = options[index].node
                trial = [*choice[:job], index, *choice[job + 1 :]]
                leaving = [j for j in on_node[current.node] if j != job]
                arriving = [*leaving, job] if target == current.node else [*on_node.get(target, []), job]
                if lists.node_span(target, arriving, trial) > bound:
                    continue
                if target != current.node and lists.node_span(current.node, leaving, trial) > bound:
                    continue
                on_node[current.node] = leaving
                on_node.setdefault(target, [])
                if target != current.node:
                    on_node[target].append(job)
                else:
                    on_node[target] = arriving
                choice, moved = trial, True
                break
    if choice == list(schedule.choice):
        return schedule
    result = lists.finalise(choice)
    if result.makespan > bound:
        return schedule
    optimal = schedule.proven_optimal and result.makespan <= schedule.makespan + EPS * max(1.0, schedule.makespan)
    return Schedule(result.choice, result.start, result.finish, result.makespan, optimal)


def cheapest_by(problem: Problem, seeds: Sequence[Schedule], pricing: Pricing, deadline: float) -> Schedule | None:
    """The cheapest schedule found that finishes within `deadline`, or None when none does.

    Starts: the `seeds` that meet it (the fastest plans), and two greedy fits (longest job
    first, each on its cheapest option that still finishes in time; the second avoids
    provisioning first); each is then improved by `cheapest_within`. Ties go to the shorter
    makespan.
    """
    lists = ListSchedules(problem)
    bound = deadline + EPS * max(1.0, deadline)
    starts = [seed for seed in seeds if seed.makespan <= bound]

    def cost_first(start: float, option: Option, index: int) -> tuple[float, ...] | None:
        if start + option.seconds > bound:
            return None
        cost, provisioned = pricing.option_key(option)
        return cost, provisioned, start + option.seconds, option.node, index

    def provision_last(start: float, option: Option, index: int) -> tuple[float, ...] | None:
        ranked = cost_first(start, option, index)
        return None if ranked is None else (ranked[1], ranked[0], *ranked[2:])

    for rank in (cost_first, provision_last):
        choice = lists.fit(rank)
        if choice is not None:
            fitted = lists.finalise(choice)
            if fitted.makespan <= bound:
                starts.append(fitted)
    best: tuple[_Key, float, Schedule] | None = None
    for start in starts:
        improved = cheapest_within(problem, start, pricing, deadline)
        key = pricing.key(problem, improved.choice)
        if best is None or _less(key, best[0]) or (not _less(best[0], key) and improved.makespan < best[1]):
            best = (key, improved.makespan, improved)
    return None if best is None else best[2]


@dataclass(frozen=True, kw_only=True, slots=True)
class Objective:
    """The schedule the objective picks, and what a person should know about the choice."""

    schedule: Schedule
    reasons: tuple[str, ...] = ()


def apply_objective(
    problem: Problem,
    *,
    fastest: Schedule,
    seeds: Sequence[Schedule],
    pricing: Pricing,
    deadline: float | None,
) -> Objective:
    """Without a deadline: `fastest`, made cheaper where its makespan allows (provisioning only
    where `fastest` already provisions). With one: the cheapest plan that meets it; when none
    does, the quickest of `seeds` and `fastest`, with the reason."""
    existing = {n for n, p in enumerate(pricing.provisioned) if not p}

    def cheaper(schedule: Schedule) -> Schedule:
        grows = any(
            pricing.provisioned[job.options[i].node] for job, i in zip(problem.jobs, schedule.choice, strict=True)
        )
        return cheapest_within(problem, schedule, pricing, schedule.makespan, nodes=None if grows else existing)

    if deadline is None:
        return Objective(schedule=cheaper(fastest))
    found = cheapest_by(problem, [fastest, *seeds], pricing, deadline)
    if found is not None:
        return Objective(schedule=found)
    quickest = min([fastest, *seeds], key=lambda s: s.makespan)
    reason = (
        f"no plan meets placement.deadlineHours {deadline / 3600:g} h: the fastest finishes in"
        f" {quickest.makespan / 3600:.2f} h, so the plan is the fastest"
    )
    return Objective(schedule=cheaper(quickest), reasons=(reason,))


def prices_of(names: Sequence[str], known: Mapping[str, float]) -> tuple[float, ...]:
    """Per problem node (by name): its price, 0 where none is known."""
    return tuple(known.get(name, 0.0) for name in names)


def plan_cost(assignments: Iterable[Assignment], known: Mapping[str, float]) -> PlanCost:
    """GPU-hours the assignments hold (planned start to finish) and their price where `known`
    (node or placeholder → price of a GPU-hour) has one."""
    hours = unpriced = 0.0
    cost: float | None = None
    for item in assignments:
        held = item.gpus * max(0.0, item.predicted_seconds - item.start_seconds) / 3600
        hours += held
        price = known.get(item.node)
        if price is None:
            unpriced += held
        else:
            cost = (cost or 0.0) + held * price
    return PlanCost(gpu_hours=hours, cost=cost, unpriced_gpu_hours=unpriced)
