"""Evaluation of OR-Tools CP-SAT for the planner's exact placement, against the hand-written search.

    pip install --target /tmp/ortools ortools==9.15.6755
    PYTHONPATH=/tmp/ortools .venv/bin/python bench/placement_cpsat.py [--limit 10] [--workers 1] [--match small:]

The same makespan problem the planner solves (`operator/placement/schedule.py`: each expert
takes one option — node, GPU count, duration — and holds those GPUs without preemption),
built by the planner itself for the 20 fleets of bench/placement.py and for larger ones, is
given to CP-SAT as optional intervals with one cumulative constraint per node (rigid jobs
on identical GPUs: a cumulative schedule is always realisable GPU by GPU). Durations are
rounded up to whole seconds. For each instance it prints the hand-written solver's makespan,
whether it proved it optimal and its CPU time, and CP-SAT's makespan, status (OPTIMAL or
FEASIBLE within the limit), best bound and time. ortools is not a dependency of atoll;
install it only to run this evaluation.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from atoll.operator.placement import experts_of, read_fleet, speed_table, workload_of
from atoll.operator.placement.problem import ProblemBuilder
from atoll.operator.placement.schedule import Problem, solve
from atoll.operator.placement.speeds import DATA_PARALLEL_EFFICIENCY

sys.path.insert(0, str(Path(__file__).resolve().parent))
suite = importlib.import_module("placement")  # bench/placement.py: the fleets and their specs


@dataclass(frozen=True)
class Outcome:
    makespan_hours: float
    status: str
    seconds: float
    bound_hours: float | None = None


def problem_of(case: Any) -> Problem:
    """The planner's own Problem for a bench case (same options, durations and start cost)."""
    spec = suite.run_spec(case)
    nodes = suite.fleet_nodes(case.pools)
    workload = workload_of(spec)
    fleet = read_fleet(nodes, placement=spec.placement, now=suite.NOW, needs_bf16=workload.precision == "bf16")
    builder = ProblemBuilder(
        fleet=fleet,
        experts=experts_of(spec, case.sizes),
        workload=workload,
        placement=spec.placement,
        speeds=speed_table(spec),
        efficiency=DATA_PARALLEL_EFFICIENCY,
        used_gpus={},
    )
    return builder.problem()


def hand_written(problem: Problem, budget: int) -> Outcome:
    started = time.process_time()
    schedule = solve(problem, exact_budget=budget)
    status = "optimal" if schedule.proven_optimal else "heuristic"
    return Outcome(schedule.makespan / 3600, status, time.process_time() - started)


def cp_sat(problem: Problem, *, limit: float, workers: int) -> Outcome:
    """CP-SAT alone (no hint from the hand-written search). `limit` is in CP-SAT's deterministic
    time units, so the result does not depend on the machine's load; CPU seconds are reported."""
    from ortools.sat.python import cp_model

    model = cp_model.CpModel()
    # Every job after the other, each on its fastest option, is feasible: an upper bound.
    horizon = int(sum(min(o.release + o.seconds for o in job.options) for job in problem.jobs)) + 1
    makespan = model.new_int_var(0, horizon, "makespan")
    per_node: dict[int, list[tuple[Any, int]]] = {}
    for j, job in enumerate(problem.jobs):
        chosen = []
        for i, option in enumerate(job.options):
            present = model.new_bool_var(f"x{j}_{i}")
            duration = int(-(-option.seconds // 1))
            start = model.new_int_var(int(option.release), horizon, f"s{j}_{i}")
            end = model.new_int_var(0, horizon, f"e{j}_{i}")
            interval = model.new_optional_interval_var(start, duration, end, present, f"i{j}_{i}")
            per_node.setdefault(option.node, []).append((interval, option.gpus))
            model.add(makespan >= end).only_enforce_if(present)
            chosen.append(present)
        model.add_exactly_one(chosen)
    for node, items in per_node.items():
        model.add_cumulative([i for i, _ in items], [g for _, g in items], problem.capacity[node])
    model.minimize(makespan)
    solver = cp_model.CpSolver()
    solver.parameters.max_deterministic_time = limit
    solver.parameters.max_time_in_seconds = 60 * limit  # only against a machine that stalls
    solver.parameters.num_workers = workers
    solver.parameters.random_seed = 0
    started = time.process_time()
    status = solver.solve(model)
    seconds = time.process_time() - started
    name = solver.status_name(status).lower()
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return Outcome(float("nan"), name, seconds, None)
    return Outcome(solver.objective_value / 3600, name, seconds, solver.best_objective_bound / 3600)


def larger_cases() -> list[Any]:
    """Bigger fleets than the bench's exact cases: more experts and more distinct nodes."""
    p = suite
    cases = []
    for experts in (10, 12, 16):
        cases.append(
            p.Case(
                f"larger: {experts} experts, Zipf, H100/A100/L4/T4",
                (p.Pool(p.H100, 1, 2), p.Pool(p.A100_40, 1, 2), p.Pool(p.L4, 2, 2), p.Pool(p.T4, 2, 2)),
                experts,
                sizes=p.zipf_sizes(experts),
            )
        )
    cases.append(
        p.Case(
            "larger: 32 experts, Zipf, 5 products",
            (
                p.Pool(p.H100, 2, 4),
                p.Pool(p.A100_40, 2, 4),
                p.Pool(p.L4, 4, 2),
                p.Pool(p.RTX4090, 4, 1),
                p.Pool(p.T4, 4, 2),
            ),
            32,
            sizes=p.zipf_sizes(32),
        )
    )
    return cases


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=float, default=10.0, help="CP-SAT deterministic time limit per instance")
    parser.add_argument("--workers", type=int, default=1, help="CP-SAT search workers (1: deterministic)")
    parser.add_argument("--budget", type=int, default=20_000_000, help="hand-written exact search budget")
    parser.add_argument("--match", default="", help="only instances whose name contains this (e.g. 'small:')")
    args = parser.parse_args()
    from ortools import __version__ as ortools_version

    print(f"# CP-SAT evaluation — {suite.hardware()}, ortools {ortools_version}, {args.workers} worker(s)")
    print(
        "| instance | experts | options | hand-written h | status | CPU s | CP-SAT h | status | bound h | CPU s"
        " | CP-SAT / hand-written |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for case in [c for c in [*suite.SUITE, *larger_cases()] if args.match in c.name]:
        problem = problem_of(case)
        options = sum(len(job.options) for job in problem.jobs)
        mine = hand_written(problem, args.budget if len(problem.jobs) <= 10 else 0)
        theirs = cp_sat(problem, limit=args.limit, workers=args.workers)
        ratio = theirs.makespan_hours / mine.makespan_hours
        print(
            f"| {case.name} | {case.experts} | {options} | {mine.makespan_hours:.3f}"
            f" | {mine.status} | {mine.seconds:.2f} | {theirs.makespan_hours:.3f}"
            f" | {theirs.status} | {'—' if theirs.bound_hours is None else f'{theirs.bound_hours:.3f}'}"
            f" | {theirs.seconds:.2f} | {ratio:.4f} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
