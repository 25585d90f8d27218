"""Autoscaling benchmark: Atoll's plan over growable pools against the fleet as it is and against
an autoscaler with the default scheduler, plus cost-against-deadline curves.

    .venv/bin/python bench/autoscale.py [--json OUT.json]

Every fleet of the suite is a static part (nodes that exist, no price: paid for anyway) and
growable pools (Karpenter NodePools: a GPU product, a GPU limit, the largest node, a
provisioning delay, a price per GPU-hour). For each it reports makespan and GPU-hours (GPUs
× hours the experts hold them, start cost included; provisioning delay and idle GPUs of new
nodes not counted) of:

* (a) static: Atoll's planner over the static fleet alone (no pool);
* (b) autoscaler + default scheduler: what a cluster with an autoscaler and no planner gets.
  Every expert is a one-GPU pod created at once (as bench/placement.py's spread); the
  scheduler spreads them over the free GPUs that fit (round-robin over nodes, no notion of
  speed); the pods that do not fit stay Pending and the autoscaler provisions a GPU for
  each from the cheapest pool with headroom (Karpenter's choice), usable after the same
  delay the planner counts; pods beyond every pool's limit wait for the first GPU freed;
* (c) Atoll: the planner over the static fleet and the pools (no deadline: fastest, cost
  breaking ties), and (c@) with `deadlineHours` = (a)'s makespan / 1.5: the cheapest plan
  that is 1.5× faster than (a), when one exists.

The issue's goal: (c) at least 1.5× faster than (a) at no more than 1.2× its GPU-hours,
where pools can grow; the script says per fleet whether it holds. Then for each fleet the
cost of the cheapest plan for deadlines between (c)'s makespan and (a)'s. All sides use
the planner's own model (speed table, memory fit, data-parallel efficiency, start cost):
the ratios compare decisions, not hardware.
"""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from atoll.api import DDMRunSpec
from atoll.operator.placement import Plan, experts_of, plan, read_fleet, speed_table, workload_of
from atoll.operator.placement.gpus import lookup
from atoll.operator.placement.pools import GrowablePool
from atoll.operator.placement.problem import START_SECONDS
from atoll.operator.placement.speeds import throughput, trains_in_bf16

sys.path.insert(0, str(Path(__file__).resolve().parent))
suite = importlib.import_module("placement")  # bench/placement.py: products, Node objects, hardware
H100, A100_40, L4, RTX4090, T4 = suite.H100, suite.A100_40, suite.L4, suite.RTX4090, suite.T4
Pool, NOW = suite.Pool, suite.NOW

PRICES = {H100[0]: 3.00, A100_40[0]: 1.50, L4[0]: 0.80, RTX4090[0]: 0.50, T4[0]: 0.35}
"""On-demand price per GPU-hour of the test environment's Karpenter instance types (tests/env/karpenter.py)."""
SPEED_UP_GOAL, GPU_HOURS_GOAL = 1.5, 1.2


@dataclass(frozen=True)
class Growable:
    gpu: tuple[str, int, int]
    max_gpus: int
    gpus_per_node: int
    delay: float = 300.0
    in_use: int = 0
    """GPUs the pool's nodes hold already (max_gpus: the pool cannot grow)."""


@dataclass(frozen=True)
class Case:
    name: str
    static: tuple[Any, ...]
    pools: tuple[Growable, ...]
    experts: int
    preset: str = "dit-b/2"
    steps: int = 100_000
    sizes: tuple[int, ...] | None = None


SUITE: tuple[Case, ...] = (
    Case(
        "on-prem L4/T4, cloud H100 + A100 pools",
        (Pool(L4, 2, 4), Pool(T4, 2, 4)),
        (Growable(H100, 16, 8), Growable(A100_40, 16, 8)),
        8,
    ),
    Case(
        "make dev-up AUTOSCALER=karpenter: 1 L4 + 1 T4 node, a NodePool per product",
        (Pool(L4, 1, 4), Pool(T4, 1, 4)),
        (
            Growable(H100, 16, 8),
            Growable(A100_40, 16, 8),
            Growable(L4, 8, 4),
            Growable(RTX4090, 8, 4),
            Growable(T4, 8, 4),
        ),
        8,
    ),
    Case(
        "1 H100 node + T4 tail, L4 and H100 pools, DiT-L/2",
        (Pool(H100, 1, 8), Pool(T4, 4, 4)),
        (Growable(L4, 32, 4, 240), Growable(H100, 8, 8, 420)),
        16,
        preset="dit-l/2",
        steps=50_000,
    ),
    Case(
        "consumer cards, A100 pool of 8 GPUs",
        (Pool(RTX4090, 8, 1),),
        (Growable(A100_40, 8, 8), Growable(RTX4090, 16, 4)),
        12,
    ),
    Case(
        "Zipf clusters, proportional steps, A100 + L4, H100 pool",
        (Pool(A100_40, 1, 8), Pool(L4, 4, 4)),
        (Growable(H100, 16, 8),),
        12,
        sizes=suite.zipf_sizes(12),
    ),
    Case(
        "scarce: 32 experts on 12 GPUs, L4 + RTX 4090 pools",
        (Pool(A100_40, 1, 4), Pool(T4, 2, 4)),
        (Growable(L4, 32, 4), Growable(RTX4090, 32, 4)),
        32,
        steps=40_000,
    ),
    Case(
        "homogeneous: 16 experts queue on 8 A100s, A100 pool (growth alone, no faster product)",
        (Pool(A100_40, 1, 8),),
        (Growable(A100_40, 24, 8),),
        16,
    ),
    Case(
        "control: pools at their limit (cannot grow)",
        (Pool(L4, 2, 4), Pool(T4, 2, 4)),
        (Growable(H100, 16, 8, in_use=16),),
        8,
    ),
    Case(
        "control: short run, 1 h provisioning delay",
        (Pool(A100_40, 1, 8),),
        (Growable(H100, 16, 8, 3600),),
        8,
        steps=5_000,
    ),
)


def spec_of(case: Case, deadline_hours: float | None = None) -> DDMRunSpec:
    placement: dict[str, Any] = {} if deadline_hours is None else {"deadlineHours": deadline_hours}
    return DDMRunSpec.model_validate(
        {
            "dataset": {"uri": "builtin://shapes", "resolution": 256, "vae": "sd-vae-ft-mse"},
            "weights": {"source": "hub"},
            "partition": {"clusters": case.experts},
            "expert": {
                "preset": case.preset,
                "steps": case.steps,
                "stepsPolicy": "proportional" if case.sizes else "equal",
            },
            "placement": placement,
        }
    )


def growable(case: Case) -> list[GrowablePool]:
    return [
        GrowablePool(
            pool=f"pool-{g.gpu[0].lower()}",
            product=g.gpu[0],
            gpus_in_use=g.in_use,
            max_gpus=g.max_gpus,
            provisioning_seconds=g.delay,
            cost_per_gpu_hour=PRICES[g.gpu[0]],
            gpus_per_node=g.gpus_per_node,
            node_labels={"karpenter.sh/nodepool": f"pool-{g.gpu[0].lower()}"},
        )
        for g in case.pools
    ]


@dataclass(frozen=True)
class Side:
    makespan_hours: float
    gpu_hours: float
    cost: float
    """What the pools' GPUs cost (the static fleet has no price)."""
    pools: str = ""


def atoll(case: Case, *, pools: bool, deadline_hours: float | None = None) -> tuple[Side, Plan]:
    spec = spec_of(case, deadline_hours)
    result = plan(
        suite.fleet_nodes(case.static),
        experts_of(spec, case.sizes),
        workload=workload_of(spec),
        placement=spec.placement,
        speeds=speed_table(spec),
        now=NOW,
        pools=growable(case) if pools else (),
    )
    asked = ", ".join(f"{p.product.removeprefix('NVIDIA-')}×{p.gpus}" for p in result.provisions)
    return Side(result.makespan_seconds / 3600, result.cost.gpu_hours, result.cost.cost or 0.0, asked), result


def autoscaler(case: Case) -> Side:
    """(b): one-GPU pods spread by the scheduler, Pending ones given new GPUs by the autoscaler."""
    spec = spec_of(case)
    workload, speeds = workload_of(spec), speed_table(spec)
    batch = spec.expert.recipe().global_batch_size

    def fits(product: str, memory_mib: int, major: int | None) -> bool:
        bf16 = trains_in_bf16(workload, product, major)
        return workload.split_batch(batch, 1, memory_mib, bf16) is not None

    def seconds(samples: int, product: str, major: int | None) -> float:
        return samples / throughput(speeds.per_gpu(product, major), 1) + START_SECONDS

    fleet = read_fleet(suite.fleet_nodes(case.static), placement=spec.placement, now=NOW)
    usable = [n for n in fleet.nodes if fits(n.product, n.memory_mib, n.compute_major)]
    # The scheduler's spread: one GPU of each node in turn (least allocated first).
    gpus: list[list[Any]] = [  # [free at, product, compute major, price]
        [0.0, n.product, n.compute_major, 0.0]
        for layer in range(max((n.free_gpus for n in usable), default=0))
        for n in usable
        if layer < n.free_gpus
    ]
    pending = list(experts_of(spec, case.sizes))
    placed = [(work, gpus[i]) for i, work in enumerate(pending[: len(gpus)])]
    pending = pending[len(gpus) :]
    # The autoscaler: a new GPU for each Pending pod from the cheapest pool with headroom.
    headroom = {g.gpu[0]: max(0, g.max_gpus - g.in_use) for g in case.pools}
    by_price = sorted(case.pools, key=lambda g: (PRICES[g.gpu[0]], g.gpu[0]))
    waiting = []
    for work in pending:
        pool = next(
            (g for g in by_price if headroom[g.gpu[0]] > 0 and fits(g.gpu[0], lookup(g.gpu[0]).memory_mib, None)),  # type: ignore[union-attr]
            None,
        )
        if pool is None:
            waiting.append(work)
            continue
        headroom[pool.gpu[0]] -= 1
        gpu = [pool.delay, pool.gpu[0], None, PRICES[pool.gpu[0]]]
        gpus.append(gpu)
        placed.append((work, gpu))
    held = cost = 0.0
    for work, gpu in placed:
        gpu[0] += seconds(work.samples, gpu[1], gpu[2])
        held += seconds(work.samples, gpu[1], gpu[2])
        cost += seconds(work.samples, gpu[1], gpu[2]) / 3600 * gpu[3]
    for work in waiting:  # FIFO: each takes the first GPU freed
        gpu = min(gpus, key=lambda g: g[0])
        gpu[0] += seconds(work.samples, gpu[1], gpu[2])
        held += seconds(work.samples, gpu[1], gpu[2])
        cost += seconds(work.samples, gpu[1], gpu[2]) / 3600 * gpu[3]
    grown = len(gpus) - sum(1 for g in gpus if g[3] == 0.0)
    return Side(max(g[0] for g in gpus) / 3600, held / 3600, cost, f"{grown} GPUs")


def run_case(case: Case) -> dict[str, Any]:
    static, _ = atoll(case, pools=False)
    spread = autoscaler(case)
    fastest, _ = atoll(case, pools=True)
    goal_deadline = static.makespan_hours / SPEED_UP_GOAL
    cheap, cheap_plan = atoll(case, pools=True, deadline_hours=goal_deadline)
    speed_up, hours_ratio = static.makespan_hours / fastest.makespan_hours, fastest.gpu_hours / static.gpu_hours
    cheap_speed_up, cheap_ratio = static.makespan_hours / cheap.makespan_hours, cheap.gpu_hours / static.gpu_hours
    can_grow = any(g.max_gpus > g.in_use for g in case.pools)
    holds = [
        (name, s, r)
        for name, s, r in (("c", speed_up, hours_ratio), ("c@", cheap_speed_up, cheap_ratio))
        if s >= SPEED_UP_GOAL - 1e-9 and r <= GPU_HOURS_GOAL + 1e-9
    ]
    curve = []
    top = static.makespan_hours  # past it the fleet alone meets the deadline
    deadlines = [fastest.makespan_hours * f for f in (1.0, 1.25, 1.5, 2.0, 3.0, 5.0, 10.0)]
    for deadline in [*(d for d in deadlines if d < top * 0.9999), top]:
        point, result = atoll(case, pools=True, deadline_hours=deadline)
        curve.append(
            {
                "deadlineHours": deadline,
                "makespanHours": point.makespan_hours,
                "gpuHours": point.gpu_hours,
                "cost": point.cost,
                "meets": bool(result.meets_deadline),
                "provisions": point.pools,
            }
        )
    return {
        "fleet": case.name,
        "experts": f"{case.experts} {case.preset}",
        "canGrow": can_grow,
        "static": vars(static),
        "autoscaler": vars(spread),
        "atoll": vars(fastest),
        "atollAtGoalDeadline": {
            **vars(cheap),
            "meets": bool(cheap_plan.meets_deadline),
            "deadlineHours": goal_deadline,
        },
        "speedUp": speed_up,
        "gpuHoursRatio": hours_ratio,
        "speedUpAtGoalDeadline": cheap_speed_up,
        "gpuHoursRatioAtGoalDeadline": cheap_ratio,
        "speedUpOverAutoscaler": spread.makespan_hours / fastest.makespan_hours,
        "goalHolds": [name for name, _, _ in holds],
        "curve": curve,
    }


def commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the rows as JSON to this file")
    args = parser.parse_args()
    print(f"# autoscaling benchmark — {suite.hardware()}, atoll {commit()}")
    header = (
        "| fleet | experts | (a) static h / GPU-h | (b) autoscaler h / GPU-h / new | (c) Atoll h / GPU-h / provisions"
        " | (c) vs (a): × faster, × GPU-h | (c) vs (b) × faster | (c@) deadline (a)/1.5: h / GPU-h / cost | goal |"
    )
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    rows = []
    for case in SUITE:
        row = run_case(case)
        rows.append(row)
        a, b, c, d = row["static"], row["autoscaler"], row["atoll"], row["atollAtGoalDeadline"]
        if not row["canGrow"]:
            goal = "n/a (no pool can grow)"
        elif row["goalHolds"]:
            goal = "holds (" + ", ".join(row["goalHolds"]) + ")"
        else:
            goal = "does not hold"
        print(
            f"| {row['fleet']} | {row['experts']} | {a['makespan_hours']:.2f} / {a['gpu_hours']:.1f}"
            f" | {b['makespan_hours']:.2f} / {b['gpu_hours']:.1f} / {b['pools']}"
            f" | {c['makespan_hours']:.2f} / {c['gpu_hours']:.1f} / {c['pools'] or '—'}"
            f" | {row['speedUp']:.2f}×, {row['gpuHoursRatio']:.2f}× | {row['speedUpOverAutoscaler']:.2f}×"
            f" | {d['makespan_hours']:.2f} / {d['gpu_hours']:.1f} / {d['cost']:.0f}{'' if d['meets'] else ' (missed)'}"
            f" | {goal} |",
            flush=True,
        )
    print()
    print("cost of the cheapest plan against deadlineHours (from (c)'s makespan to (a)'s; pools priced, fleet free):")
    for row in rows:
        points = "; ".join(
            f"{p['deadlineHours']:.2f} h → {p['cost']:.0f} ({p['makespanHours']:.2f} h, {p['gpuHours']:.0f} GPU-h"
            f"{', ' + p['provisions'] if p['provisions'] else ''}){'' if p['meets'] else ' missed'}"
            for p in row["curve"]
        )
        print(f"* {row['fleet']}: {points}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
