"""The makespan solver: exact search against brute force, the heuristic against both, bounds."""

from __future__ import annotations

import itertools
import random

import pytest

from atoll.operator.placement.schedule import Job, Option, Problem, Schedule, lower_bound, solve, solve_exact


def tiny_problem(seed: int) -> Problem:
    rng = random.Random(seed)
    nodes = rng.randint(1, 3)
    capacity = tuple(rng.choice((1, 2, 2, 4)) for _ in range(nodes))
    rate = tuple(rng.choice((1.0, 2.5, 7.0)) for _ in range(nodes))
    jobs = []
    for _ in range(rng.randint(1, 5)):
        work = rng.choice((100.0, 100.0, 250.0, 400.0))
        options = tuple(
            Option(node=n, gpus=g, seconds=work / (rate[n] * (1 + 0.9 * (g - 1))))
            for n in range(nodes)
            for g in (1, 2, 4)
            if g <= capacity[n]
        )
        jobs.append(Job(options))
    return Problem(capacity, rate, tuple(jobs))


def brute_force(problem: Problem) -> float:
    """Every option of every job, every order on every node, each job on the GPUs free first."""

    def node_span(capacity: int, jobs: list[Option]) -> float:
        best = float("inf")
        for order in itertools.permutations(jobs):
            free = [0.0] * capacity
            end = 0.0
            for option in order:
                free.sort()
                start = free[option.gpus - 1]
                for i in range(option.gpus):
                    free[i] = start + option.seconds
                end = max(end, start + option.seconds)
            best = min(best, end)
        return best

    best = float("inf")
    for choice in itertools.product(*(job.options for job in problem.jobs)):
        span = max(
            node_span(problem.capacity[n], [o for o in choice if o.node == n])
            if any(o.node == n for o in choice)
            else 0
            for n in range(len(problem.capacity))
        )
        best = min(best, span)
    return best


def feasible(problem: Problem, schedule: Schedule) -> None:
    """No node runs more GPUs than it has at any moment; finish = start + duration."""
    for node, capacity in enumerate(problem.capacity):
        here = [
            (schedule.start[j], schedule.finish[j], problem.jobs[j].options[schedule.choice[j]].gpus)
            for j in range(len(problem.jobs))
            if problem.jobs[j].options[schedule.choice[j]].node == node
        ]
        for moment, _, _ in here:
            assert sum(g for s, f, g in here if s <= moment < f) <= capacity
    for j, job in enumerate(problem.jobs):
        assert schedule.finish[j] == pytest.approx(schedule.start[j] + job.options[schedule.choice[j]].seconds)


@pytest.mark.parametrize("seed", range(40))
def test_exact_search_matches_brute_force(seed: int) -> None:
    problem = tiny_problem(seed)
    exact = solve_exact(problem)
    assert exact is not None
    assert exact.proven_optimal
    assert exact.makespan == pytest.approx(brute_force(problem), rel=1e-9)
    feasible(problem, exact)
    heuristic = solve(problem, exact_budget=0)
    feasible(problem, heuristic)
    assert lower_bound(problem) <= exact.makespan * (1 + 1e-9) <= heuristic.makespan * (1 + 2e-9)
    assert heuristic.makespan <= exact.makespan * 1.10, "the heuristic alone stays within 10 % on tiny cases"
    assert solve(problem).makespan == pytest.approx(exact.makespan), "solve() proves small instances"


def test_identical_jobs_and_nodes_are_searched_once_but_still_exactly() -> None:
    # 6 equal jobs, 3 identical 2-GPU nodes: symmetry breaking must not lose the optimum (2 per node).
    options = tuple(Option(node=n, gpus=g, seconds=100.0 / (1 + 0.9 * (g - 1))) for n in range(3) for g in (1, 2))
    problem = Problem((2, 2, 2), (1.0, 1.0, 1.0), tuple(Job(options) for _ in range(6)))
    exact = solve_exact(problem)
    assert exact is not None
    assert exact.makespan == pytest.approx(100.0)
    assert exact.proven_optimal


def test_budget_exhausted_returns_none() -> None:
    rng = random.Random(7)
    options = tuple(Option(node=n, gpus=1, seconds=rng.uniform(50, 150)) for n in range(6))
    problem = Problem((1,) * 6, (1.0,) * 6, tuple(Job(options) for _ in range(9)))
    assert solve_exact(problem, budget=50) is None


def test_pinned_jobs_start_first_on_their_node() -> None:
    fast = Option(node=0, gpus=1, seconds=10.0)
    problem = Problem(
        (1,),
        (1.0,),
        (Job((Option(node=0, gpus=1, seconds=5.0),), pinned=True), Job((fast,)), Job((fast,))),
    )
    schedule = solve(problem)
    assert schedule.start[0] == 0.0  # the running job keeps its GPU although it is the shortest
    assert schedule.makespan == pytest.approx(25.0)


def test_release_times_delay_the_start() -> None:
    problem = Problem((2,), (1.0,), (Job((Option(node=0, gpus=1, seconds=10.0, release=30.0),)),))
    schedule = solve(problem)
    assert schedule.start == (30.0,)
    assert schedule.makespan == 40.0


def test_lower_bound_is_the_larger_of_longest_job_and_total_work() -> None:
    # One 8-GPU node of rate 1: a job of 80 samples takes 80 s on 1 GPU, 80/7.3 s on all 8.
    options = tuple(Option(node=0, gpus=g, seconds=80 / (1 + 0.9 * (g - 1))) for g in (1, 2, 4, 8))
    one = Problem((8,), (1.0,), (Job(options),))
    assert lower_bound(one) == pytest.approx(80 / 7.3)
    many = Problem((8,), (1.0,), tuple(Job(options) for _ in range(10)))
    assert lower_bound(many) == pytest.approx(10 * 80 / 8)


def test_problem_rejects_impossible_options() -> None:
    with pytest.raises(ValueError, match="job 0: option needs 4 GPUs of node 0"):
        Problem((2,), (1.0,), (Job((Option(node=0, gpus=4, seconds=1.0),)),))
    with pytest.raises(ValueError, match="job 0 has no option"):
        Problem((2,), (1.0,), (Job(()),))
