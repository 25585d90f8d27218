"""The makespan solver behind the planner: experts are jobs, nodes are pools of identical GPUs.

Generic and pure (numbers in, numbers out): it knows nothing of Kubernetes, presets or
memory; `atoll.operator.placement.planner` builds the problem. Deterministic: no
randomness, no clocks, every tie broken by index.

The model. Job j runs on exactly one option (node n, g GPUs of n, duration d) and holds
those g GPUs for d seconds without preemption. Given the option of every job, each node
runs its jobs as a *list schedule*: in some order, each job starts as soon as g of the
node's GPUs are free (and not before its release time), on the g GPUs that became free
last. For rigid jobs on identical processors list schedules are dominant — replaying any
feasible schedule in order of start times never starts a job later (the sorted vector of
GPU free-times, clipped at the current start, is dominated elementwise at every step) — so
the optimum is the minimum over options and per-node orders, which is what
`solve_exact` searches.

Why this algorithm: the problem contains P||Cmax, so it is NP-hard, but instances are
small (tens of experts, tens to hundreds of nodes) and re-solved only when something
changes. Greedy list scheduling (LPT / earliest finish) is the classic 4/3-approximation
on identical GPUs, the dual approximation (Hochbaum & Shmoys) handles unequal speeds,
local search repairs what greedy choices miss, and branch and bound proves small
instances; bench/placement.py measures the gap to the optimum. `solve`:
1. constructions: LPT list scheduling choosing, per job, the option with the earliest
   finish (HEFT-like); the same restricted to one GPU per job; a dual approximation that
   binary-searches a target makespan T and gives each job (longest first) the option
   that meets T with the fewest GPU-seconds, or the slowest node that meets T; and the
   speed-agnostic round-robin spread (so the result is never worse than spreading);
2. local search from the two best constructions (LOCAL_SEARCH_STARTS): relocate a job to
   any other option, or swap the nodes of two jobs of which one is on a critical node,
   accepted while it lowers
   (makespan, Σ node-makespan²) — the second term spreads load so that later moves can
   lower the maximum;
3. per-node order polish: every order of up to 6 queued jobs on a node is tried;
4. exact branch and bound when the instance is small enough (a deterministic budget of
   search nodes), seeded with the heuristic's makespan, pruned with two valid lower bounds
   (per node: its longest job and its GPU-seconds over its GPUs; globally: capacity
   consumed, weighted by per-GPU rate, over the whole fleet's rate) and symmetry breaking
   (identical jobs take non-decreasing options; of identical empty nodes only the first).

One file over ~400 lines on purpose: the constructions, the local search and the branch
and bound share one private model of the problem (spans, list schedules, their
invariants); split apart, each would have to expose those internals to the others.
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass

EPS = 1e-9
_Rank = tuple[float, ...]
"""How a greedy construction orders a job's options; the last element is the option's index."""
PERMUTE_UP_TO = 6
"""Queued jobs on one node up to which every order is tried (6! = 720)."""
LOCAL_SEARCH_STARTS = 2
"""Constructions the local search starts from, best first: from all five, every plan of
bench/placement.py came out the same at 2-6× the CPU time."""


@dataclass(frozen=True, slots=True)
class Option:
    """One way to run a job: `gpus` GPUs of node `node` for `seconds`, not before `release`."""

    node: int
    gpus: int
    seconds: float
    release: float = 0.0


@dataclass(frozen=True, slots=True)
class Job:
    """A job and its options (at least one). Pinned jobs are already running: they start first."""

    options: tuple[Option, ...]
    pinned: bool = False


@dataclass(frozen=True, slots=True)
class Problem:
    """Nodes (free GPUs and per-GPU rate, the rate used only for lower bounds) and jobs."""

    capacity: tuple[int, ...]
    rate: tuple[float, ...]
    jobs: tuple[Job, ...]

    def __post_init__(self) -> None:
        if len(self.capacity) != len(self.rate):
            raise ValueError("capacity and rate must have one entry per node")
        for index, job in enumerate(self.jobs):
            if not job.options:
                raise ValueError(f"job {index} has no option")
            for option in job.options:
                if not 1 <= option.gpus <= self.capacity[option.node]:
                    raise ValueError(f"job {index}: option needs {option.gpus} GPUs of node {option.node}")


@dataclass(frozen=True, slots=True)
class Schedule:
    """The chosen option (index into the job's options), start and finish of every job."""

    choice: tuple[int, ...]
    start: tuple[float, ...]
    finish: tuple[float, ...]
    makespan: float
    proven_optimal: bool


def lower_bound(problem: Problem, *, fleet_rate: float | None = None) -> float:
    """The larger of: the longest job on its fastest option; all work over the whole fleet.

    Work of a job = its smallest rate-weighted GPU-seconds (g·d·rate), which is at least
    its samples because g GPUs together never exceed g× one GPU's rate. `fleet_rate`:
    Σ capacity × rate of the whole fleet when the problem holds only part of it.
    """
    if not problem.jobs:
        return 0.0
    longest = max(min(o.release + o.seconds for o in job.options) for job in problem.jobs)
    if fleet_rate is None:
        fleet_rate = sum(c * r for c, r in zip(problem.capacity, problem.rate, strict=True))
    work = sum(_min_consumption(problem, job) for job in problem.jobs)
    return max(longest, work / fleet_rate if fleet_rate > 0 else 0.0)


def solve(problem: Problem, *, exact_budget: int = 100_000) -> Schedule:
    """The best schedule the heuristics find, proven optimal when the exact search completes."""
    if not problem.jobs:
        return Schedule((), (), (), 0.0, True)
    search = _Search(problem)
    best: list[int] | None = None
    best_key = (float("inf"), float("inf"))
    constructions = [
        c
        for c in (
            search.earliest_finish(False),
            search.earliest_finish(True),
            *search.dual_approximations(),
            search.round_robin(),
        )
        if c is not None
    ]
    # Local search from the best starts (ties by construction order).
    ranked = sorted(range(len(constructions)), key=lambda i: (search.key(constructions[i]), i))
    for position in ranked[:LOCAL_SEARCH_STARTS]:
        improved = search.local_search(constructions[position])
        key = search.key(improved)
        if best is None or _less(key, best_key):
            best, best_key = improved, key
    assert best is not None, "earliest-finish construction always succeeds"
    schedule = search.finalise(best)
    if exact_budget > 0 and schedule.makespan > lower_bound(problem) + EPS:
        exact = solve_exact(problem, budget=exact_budget, incumbent=schedule)
        if exact is not None:
            return exact
    elif schedule.makespan <= lower_bound(problem) + EPS:
        return Schedule(schedule.choice, schedule.start, schedule.finish, schedule.makespan, True)
    return schedule


def solve_exact(problem: Problem, *, budget: int | None = None, incumbent: Schedule | None = None) -> Schedule | None:
    """The optimal schedule by branch and bound, or None when `budget` search nodes do not suffice.

    `incumbent`, a known schedule, is returned (marked optimal) when nothing beats it.
    Exact only while no node queues more than PERMUTE_UP_TO jobs behind its pinned ones
    (every instance the benchmark solves); beyond that the per-node order is LPT.
    """
    if not problem.jobs:
        return Schedule((), (), (), 0.0, True)
    search = _Search(problem)
    if incumbent is None:
        start = search.earliest_finish(False)
        assert start is not None
        incumbent = search.finalise(start)
    return _BranchAndBound(problem, search, incumbent, budget).run()


def vacate(problem: Problem, schedule: Schedule, nodes: Collection[int]) -> Schedule:
    """`schedule` with jobs moved off `nodes` (capacity that costs to use, such as GPUs still to
    be provisioned) wherever that does not lengthen its makespan.

    Jobs on `nodes`, shortest first, each take their first option elsewhere (fewest
    GPU-seconds first) that keeps every node's list schedule within the makespan; repeated
    until nothing moves. The solvers minimise the makespan and spread the rest of the load,
    so without this a job off the critical path may sit on costly capacity for nothing.
    """
    costly = set(nodes)
    search = _Search(problem)
    choice = list(schedule.choice)
    limit = schedule.makespan + EPS * max(1.0, schedule.makespan)
    moved = True
    while moved:
        moved = False
        for job in reversed(search.lpt):
            options = problem.jobs[job].options
            if problem.jobs[job].pinned or options[choice[job]].node not in costly:
                continue
            elsewhere = sorted(
                (i for i, o in enumerate(options) if o.node not in costly),
                key=lambda i: (options[i].gpus * options[i].seconds, i),
            )
            for index in elsewhere:
                trial = [*choice[:job], index, *choice[job + 1 :]]
                if max(search.spans(trial)) <= limit:
                    choice, moved = trial, True
                    break
    if choice == list(schedule.choice):
        return schedule
    result = search.finalise(choice)
    if result.makespan > limit:
        return schedule
    return Schedule(result.choice, result.start, result.finish, result.makespan, schedule.proven_optimal)


class ListSchedules:
    """List schedules of one problem's choices (memoised), for searches with another objective
    than the makespan (atoll.operator.placement.cost): node spans, greedy fits, final schedules."""

    def __init__(self, problem: Problem) -> None:
        self._search = _Search(problem)

    def spans(self, choice: Sequence[int]) -> list[float]:
        """Every node's makespan when it runs its jobs of `choice` in LPT order."""
        return self._search.spans(choice)

    def node_span(self, node: int, jobs: Sequence[int], choice: Sequence[int]) -> float:
        """The makespan of `node` running `jobs` (their options of `choice`) in LPT order."""
        return self._search.node_span(node, [(j, self._search.jobs[j].options[choice[j]]) for j in jobs])

    def fit(self, rank: Callable[[float, Option, int], tuple[float, ...] | None]) -> list[int] | None:
        """List scheduling, longest job first, each job taking its option of the smallest `rank`
        (start, option, option index → a tuple ending with the index; None: not allowed)."""
        return self._search._greedy(rank)

    def finalise(self, choice: Sequence[int]) -> Schedule:
        """Start and finish of every job of `choice`, with the best order of each node's queue."""
        return self._search.finalise(choice)


# --- internals ------------------------------------------------------------------------------


def _less(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """Lexicographic a < b with a relative tolerance, so float noise never cycles a search."""
    tol0 = EPS * max(1.0, abs(b[0]))
    if a[0] < b[0] - tol0:
        return True
    if a[0] > b[0] + tol0:
        return False
    return a[1] < b[1] - EPS * max(1.0, abs(b[1]))


def _min_consumption(problem: Problem, job: Job) -> float:
    return min(o.gpus * o.seconds * problem.rate[o.node] for o in job.options)


def _place(free: list[float], option: Option) -> float:
    """Start `option` on the node whose GPU free-times are `free` (updated in place); its start."""
    free.sort()
    start = max(free[option.gpus - 1], option.release)
    # Best fit: of the GPUs free by `start`, take those that became free last.
    ready = bisect.bisect_right(free, start)
    end = start + option.seconds
    for index in range(ready - option.gpus, ready):
        free[index] = end
    return start


def _run_order(capacity: int, entries: Sequence[tuple[int, Option]]) -> tuple[float, dict[int, float]]:
    """List-schedule `entries` (job, option) in the given order on `capacity` GPUs."""
    free = [0.0] * capacity
    starts: dict[int, float] = {}
    span = 0.0
    for job, option in entries:
        start = _place(free, option)
        starts[job] = start
        span = max(span, start + option.seconds)
    return span, starts


class _Spans:
    """Node makespans with what a move evaluation needs: the top three and Σ span²."""

    def __init__(self, spans: list[float]) -> None:
        self.spans = spans
        self.top = heapq.nlargest(3, enumerate(spans), key=lambda item: (item[1], -item[0]))
        self.squares = sum(s * s for s in spans)
        self.key = (self.top[0][1] if self.top else 0.0, self.squares)


class _Search:
    """Shared state of the heuristics: the problem in arrays, and node evaluation."""

    def __init__(self, problem: Problem) -> None:
        self.problem = problem
        self.jobs = problem.jobs
        self.nodes = len(problem.capacity)
        # Longest first (by the job's fastest option), pinned first of all; ties by index.
        self.lpt = sorted(
            range(len(self.jobs)),
            key=lambda j: (not self.jobs[j].pinned, -min(o.seconds for o in self.jobs[j].options), j),
        )
        self.memo: dict[tuple[object, ...], float] = {}
        self.runs = 0
        """List schedules run by best_order (the exact search's budget counts them)."""
        self.on_node: list[dict[int, list[tuple[int, Option]]]] = []
        for job in self.jobs:
            table: dict[int, list[tuple[int, Option]]] = {}
            for index, option in enumerate(job.options):
                table.setdefault(option.node, []).append((index, option))
            self.on_node.append(table)

    # -- evaluation --

    def node_order(self, entries: list[tuple[int, Option]]) -> list[tuple[int, Option]]:
        """Pinned jobs first, then longest first, ties by job index."""
        return sorted(entries, key=lambda e: (not self.jobs[e[0]].pinned, -e[1].seconds, e[0]))

    def node_span(self, node: int, entries: list[tuple[int, Option]]) -> float:
        if not entries:
            return 0.0
        # A job's option on a node is fixed by its GPU count: (job, gpus) pairs identify the load.
        key = (node, *sorted((job, option.gpus) for job, option in entries))
        span = self.memo.get(key)
        if span is None:
            if len(self.memo) > 200_000:
                self.memo.clear()
            span = self.memo[key] = _run_order(self.problem.capacity[node], self.node_order(entries))[0]
        return span

    def spans(self, choice: Sequence[int]) -> list[float]:
        per_node = self.by_node(choice)
        return [self.node_span(n, per_node[n]) for n in range(self.nodes)]

    def by_node(self, choice: Sequence[int]) -> list[list[tuple[int, Option]]]:
        per_node: list[list[tuple[int, Option]]] = [[] for _ in range(self.nodes)]
        for job, index in enumerate(choice):
            option = self.jobs[job].options[index]
            per_node[option.node].append((job, option))
        return per_node

    def key(self, choice: Sequence[int]) -> tuple[float, float]:
        spans = self.spans(choice)
        return max(spans), sum(s * s for s in spans)

    # -- constructions --

    def earliest_finish(self, single_gpu: bool) -> list[int] | None:
        """LPT order; each job takes the option finishing first (then fewest GPU-seconds)."""

        def rank(start: float, option: Option, index: int) -> _Rank:
            return (start + option.seconds, option.gpus * option.seconds, option.node, index)

        return self._greedy(rank, single_gpu=single_gpu)

    def _greedy(
        self, rank: Callable[[float, Option, int], _Rank | None], *, single_gpu: bool = False
    ) -> list[int] | None:
        """List scheduling in LPT order: each job takes its option of the smallest `rank`
        (start, option, option index → a tuple ending with the index; None: not allowed), on
        the GPUs that option frees first. None when some job has no allowed option."""
        free = [[0.0] * c for c in self.problem.capacity]
        choice = [0] * len(self.jobs)
        for job in self.lpt:
            best: _Rank | None = None
            options = list(enumerate(self.jobs[job].options))
            if single_gpu and any(o.gpus == 1 for _, o in options):
                options = [(i, o) for i, o in options if o.gpus == 1]
            for index, option in options:
                ranked = rank(_peek_start(free[option.node], option), option, index)
                if ranked is not None and (best is None or ranked < best):
                    best = ranked
            if best is None:
                return None
            chosen = int(best[-1])
            choice[job] = chosen
            _place(free[self.jobs[job].options[chosen].node], self.jobs[job].options[chosen])
        return choice

    def round_robin(self) -> list[int] | None:
        """What a speed-agnostic scheduler does: one GPU per job, GPUs dealt round-robin over nodes.

        A start that guarantees the result is never worse than spreading (up to per-node order).
        """
        slots = [
            node
            for layer in range(max(self.problem.capacity, default=0))
            for node in range(self.nodes)
            if layer < self.problem.capacity[node]
        ]
        choice = [0] * len(self.jobs)
        for job in range(len(self.jobs)):
            options = self.jobs[job].options
            for offset in range(len(slots)):
                node = slots[(job + offset) % len(slots)]
                found = [i for i, o in enumerate(options) if o.node == node and o.gpus == 1]
                if found:
                    choice[job] = found[0]
                    break
            else:
                return None
        return choice

    def dual_approximations(self) -> list[list[int] | None]:
        """Binary search on a target makespan T, with two ways of picking an option that meets T."""
        upper_choice = self.earliest_finish(False)
        assert upper_choice is not None
        results: list[list[int] | None] = []
        for rule in ("fewest-gpu-seconds", "slowest-fit"):
            low, high = lower_bound(self.problem), max(self.spans(upper_choice))
            best = None
            for _ in range(24):
                if high - low <= 1e-4 * high:
                    break
                target = (low + high) / 2
                attempt = self._fit(target, rule)
                if attempt is None:
                    low = target
                else:
                    best, high = attempt, max(self.spans(attempt))
            results.append(best)
        return results

    def _fit(self, target: float, rule: str) -> list[int] | None:
        def rank(start: float, option: Option, index: int) -> _Rank | None:
            finish = start + option.seconds
            if finish > target + EPS * max(1.0, target):
                return None
            if rule == "slowest-fit":
                return (float(option.gpus), -finish, option.node, index)
            return (option.gpus * option.seconds, finish, option.node, index)

        return self._greedy(rank)

    # -- improvement --

    def local_search(self, choice: list[int], max_rounds: int = 50) -> list[int]:
        choice = list(choice)
        per_node = self.by_node(choice)
        spans = [self.node_span(n, per_node[n]) for n in range(self.nodes)]
        for _ in range(max_rounds):
            # Swaps cost a pass over job pairs: only when no single relocation helps.
            if not self._relocate_pass(choice, per_node, spans) and not self._swap_pass(choice, per_node, spans):
                break
        return choice

    def _evaluate(
        self, base: _Spans, changed: dict[int, list[tuple[int, Option]]]
    ) -> tuple[tuple[float, float], dict[int, float]]:
        new_spans = {n: self.node_span(n, entries) for n, entries in changed.items()}
        top = next((s for n, s in base.top if n not in new_spans), 0.0)
        squares = base.squares - sum(base.spans[n] ** 2 for n in new_spans) + sum(s * s for s in new_spans.values())
        return (max(top, *new_spans.values()), squares), new_spans

    def _apply(
        self,
        choice: list[int],
        per_node: list[list[tuple[int, Option]]],
        spans: list[float],
        changes: list[tuple[int, int]],
        new_spans: dict[int, float],
    ) -> None:
        for job, _ in changes:
            old = self.jobs[job].options[choice[job]]
            per_node[old.node] = [e for e in per_node[old.node] if e[0] != job]
        for job, index in changes:
            new = self.jobs[job].options[index]
            per_node[new.node] = [*per_node[new.node], (job, new)]
            choice[job] = index
        for node, span in new_spans.items():
            spans[node] = span

    def _relocate_pass(self, choice: list[int], per_node: list[list[tuple[int, Option]]], spans: list[float]) -> bool:
        moved = False
        base = _Spans(spans)  # anew only when a move changed the spans
        # Jobs on the most loaded nodes first: they are the ones that can lower the maximum.
        for job in sorted(range(len(self.jobs)), key=lambda j: (-spans[self.jobs[j].options[choice[j]].node], j)):
            job_options = self.jobs[job].options
            if len(job_options) == 1:
                continue
            current = base.key
            old = job_options[choice[job]]
            without = [e for e in per_node[old.node] if e[0] != job]
            best: tuple[tuple[float, float], int, dict[int, float]] | None = None
            tried_empty: set[tuple[int, int, float, float]] = set()
            for index, option in enumerate(job_options):
                if index == choice[job] or option.release + option.seconds >= current[0]:
                    continue
                if not per_node[option.node] and option.node != old.node:
                    # Empty nodes alike in capacity and option make the same move: try one.
                    twin = (self.problem.capacity[option.node], option.gpus, option.seconds, option.release)
                    if twin in tried_empty:
                        continue
                    tried_empty.add(twin)
                if option.node == old.node:
                    changed = {old.node: [*without, (job, option)]}
                else:
                    changed = {old.node: without, option.node: [*per_node[option.node], (job, option)]}
                key, new_spans = self._evaluate(base, changed)
                if _less(key, best[0] if best else current):
                    best = (key, index, new_spans)
            if best is not None:
                self._apply(choice, per_node, spans, [(job, best[1])], best[2])
                base = _Spans(spans)
                moved = True
        return moved

    def _swap_pass(self, choice: list[int], per_node: list[list[tuple[int, Option]]], spans: list[float]) -> bool:
        moved = False
        peak = max(spans)
        critical = [
            j for j in range(len(self.jobs)) if spans[self.jobs[j].options[choice[j]].node] >= peak - EPS * peak
        ]
        base = _Spans(spans)  # anew only when a swap changed the spans
        for first in critical:
            for second in range(len(self.jobs)):
                node_a = self.jobs[first].options[choice[first]].node
                node_b = self.jobs[second].options[choice[second]].node
                if node_a == node_b or self.jobs[first].pinned or self.jobs[second].pinned:
                    continue
                current = base.key
                best: tuple[tuple[float, float], list[tuple[int, int]], dict[int, float]] | None = None
                for ia, oa in self.on_node[first].get(node_b, []):
                    for ib, ob in self.on_node[second].get(node_a, []):
                        changed = {
                            node_a: [e for e in per_node[node_a] if e[0] != first] + [(second, ob)],
                            node_b: [e for e in per_node[node_b] if e[0] != second] + [(first, oa)],
                        }
                        key, new_spans = self._evaluate(base, changed)
                        if _less(key, best[0] if best else current):
                            best = (key, [(first, ia), (second, ib)], new_spans)
                if best is not None:
                    self._apply(choice, per_node, spans, best[1], best[2])
                    base = _Spans(spans)
                    moved = True
        return moved

    # -- result --

    def finalise(self, choice: Sequence[int]) -> Schedule:
        """Start and finish times of `choice`, with the best order of each node's queue."""
        start = [0.0] * len(self.jobs)
        for node, entries in enumerate(self.by_node(choice)):
            if entries:
                for job, value in self.best_order(node, entries)[1].items():
                    start[job] = value
        finish = tuple(start[j] + self.jobs[j].options[choice[j]].seconds for j in range(len(self.jobs)))
        return Schedule(tuple(choice), tuple(start), finish, max(finish, default=0.0), False)

    def best_order(
        self, node: int, entries: list[tuple[int, Option]], below: float | None = None
    ) -> tuple[float, dict[int, float], bool]:
        """The best list-schedule order of one node's jobs; exact when few enough are queued.

        With `below`, stops at the first order whose span is below it (a feasibility check).
        Orders that only swap identical jobs are tried once. Counts schedules run in `runs`.
        """
        capacity = self.problem.capacity[node]
        ordered = self.node_order(entries)
        span, starts = _run_order(capacity, ordered)
        self.runs += 1
        pinned = [e for e in ordered if self.jobs[e[0]].pinned]
        queued = [e for e in ordered if not self.jobs[e[0]].pinned]
        longest = max(o.release + o.seconds for _, o in entries)
        bound = max(longest, sum(o.gpus * o.seconds for _, o in entries) / capacity)
        if span <= bound + EPS * max(1.0, bound) or len(queued) <= 1:
            return span, starts, True
        if below is not None and (span < below or bound >= below):
            return span, starts, True
        if len(queued) > PERMUTE_UP_TO:
            return span, starts, False
        for order in _distinct_orders(queued):
            candidate, candidate_starts = _run_order(capacity, [*pinned, *order])
            self.runs += 1
            if candidate < span - EPS * max(1.0, span):
                span, starts = candidate, candidate_starts
                if below is not None and span < below:
                    break
        return span, starts, True


def _distinct_orders(entries: list[tuple[int, Option]]) -> Iterator[list[tuple[int, Option]]]:
    """Every order of `entries`, once per order of their (gpus, seconds, release) shapes."""
    groups: dict[tuple[int, float, float], list[tuple[int, Option]]] = {}
    for entry in entries:
        groups.setdefault((entry[1].gpus, entry[1].seconds, entry[1].release), []).append(entry)
    shapes = list(groups)
    counts = [len(groups[shape]) for shape in shapes]
    sequence: list[int] = []

    def extend() -> Iterator[list[tuple[int, Option]]]:
        if len(sequence) == len(entries):
            taken = [0] * len(shapes)
            order = []
            for shape in sequence:
                order.append(groups[shapes[shape]][taken[shape]])
                taken[shape] += 1
            yield order
            return
        for shape, left in enumerate(counts):
            if left:
                counts[shape] -= 1
                sequence.append(shape)
                yield from extend()
                sequence.pop()
                counts[shape] += 1

    yield from extend()


def _peek_start(free: list[float], option: Option) -> float:
    ordered = sorted(free)
    return max(ordered[option.gpus - 1], option.release)


class _BranchAndBound:
    """Exhaustive search over options (jobs longest first), per-node orders at the leaves."""

    def __init__(self, problem: Problem, search: _Search, incumbent: Schedule, budget: int | None) -> None:
        self.problem = problem
        self.search = search
        self.best = incumbent
        self.best_span = incumbent.makespan
        self.budget = budget
        self.visited = 0
        self.exhausted = False
        self.all_exact = True
        jobs = problem.jobs
        self.signature = [tuple((o.node, o.gpus, o.seconds, o.release) for o in job.options) for job in jobs]
        self.order = sorted(
            range(len(jobs)),
            key=lambda j: (not jobs[j].pinned, -min(o.seconds for o in jobs[j].options), self.signature[j], j),
        )
        self.fleet_rate = sum(c * r for c, r in zip(problem.capacity, problem.rate, strict=True))
        self.min_use = [_min_consumption(problem, job) for job in jobs]
        # Nodes are interchangeable when capacity and every job's options on them agree.
        node_sig: list[tuple[object, ...]] = []
        for node in range(len(problem.capacity)):
            per_job = tuple(
                tuple(sorted((o.gpus, o.seconds, o.release) for o in job.options if o.node == node)) for job in jobs
            )
            node_sig.append((problem.capacity[node], per_job))
        # The nearest identical node before each node (itself when none).
        self.twin_of = [
            max((m for m in range(n) if node_sig[m] == node_sig[n]), default=n) for n in range(len(node_sig))
        ]

    def run(self) -> Schedule | None:
        nodes = len(self.problem.capacity)
        self.choice = [-1] * len(self.problem.jobs)
        self.load: list[list[tuple[int, Option]]] = [[] for _ in range(nodes)]
        self.longest = [0.0] * nodes
        self.gpu_seconds = [0.0] * nodes
        self._branch(0, sum(self.min_use), 0.0)
        if self.exhausted:
            return None
        best = self.best
        return Schedule(best.choice, best.start, best.finish, best.makespan, self.all_exact)

    def _bound(self, remaining_use: float, used: float) -> float:
        per_node = max(
            (max(self.longest[n], self.gpu_seconds[n] / self.problem.capacity[n]) for n in range(len(self.load))),
            default=0.0,
        )
        return max(per_node, (used + remaining_use) / self.fleet_rate if self.fleet_rate > 0 else 0.0)

    def _branch(self, depth: int, remaining_use: float, used: float) -> None:
        if self.exhausted:
            return
        self.visited += 1
        if self.budget is not None and self.visited > self.budget:
            self.exhausted = True
            return
        if depth == len(self.order):
            self._leaf()
            return
        job = self.order[depth]
        options = self.problem.jobs[job].options
        previous = self.order[depth - 1] if depth else None
        floor = -1
        jobs = self.problem.jobs
        if (
            previous is not None
            and self.signature[previous] == self.signature[job]
            and jobs[previous].pinned == jobs[job].pinned
        ):
            floor = self.choice[previous]  # identical jobs: non-decreasing option index
        ranked = sorted(range(len(options)), key=lambda i: (options[i].seconds * options[i].gpus, i))
        for index in ranked:
            option = options[index]
            if index < floor:
                continue
            twin = self.twin_of[option.node]
            if twin != option.node and not self.load[twin] and not self.load[option.node]:
                continue  # the identical node before it is empty too: it gets this branch
            node = option.node
            saved = (self.longest[node], self.gpu_seconds[node])
            self.longest[node] = max(self.longest[node], option.release + option.seconds)
            self.gpu_seconds[node] += option.gpus * option.seconds
            use = option.gpus * option.seconds * self.problem.rate[node]
            bound = self._bound(remaining_use - self.min_use[job], used + use)
            if bound < self.best_span - EPS * max(1.0, self.best_span):
                self.choice[job] = index
                self.load[node].append((job, option))
                self._branch(depth + 1, remaining_use - self.min_use[job], used + use)
                self.load[node].pop()
                self.choice[job] = -1
            self.longest[node], self.gpu_seconds[node] = saved

    def _leaf(self) -> None:
        """Keep this assignment if every node has an order finishing before the incumbent."""
        target = self.best_span - EPS * max(1.0, self.best_span)
        before = self.search.runs
        for node, entries in enumerate(self.load):
            if not entries:
                continue
            span, _, exact = self.search.best_order(node, list(entries), below=target)
            self.all_exact = self.all_exact and exact
            if span >= target:
                break
        else:
            self.visited += self.search.runs - before
            self.best = self.search.finalise(list(self.choice))
            self.best_span = self.best.makespan
            return
        self.visited += self.search.runs - before
