"""Placement benchmark: the planner against two baselines and, where small enough, the optimum.

    .venv/bin/python bench/placement.py [--json OUT.json]

For each fleet of the suite it plans a DDMRun's experts with `atoll.operator.placement`
and reports the predicted makespan, the efficiency (lower bound / makespan) and the
speed-up over two baselines:

* the spread: what the default kube-scheduler does with one-GPU pods (a round-robin
  spread over the usable GPUs, queueing where experts outnumber GPUs). The planner is
  never worse than this by construction: the spread is one of the starts of its search.
* greedy: what a careful engineer does by hand — list scheduling that sends the largest
  remaining expert to the GPU set (node and GPU count, data parallel) that would finish
  it first, given the GPUs already taken (LPT / earliest finish).

On small fleets it also reports the gap to the optimum found by exhaustive branch and
bound, for the planner and for its heuristics alone (exact search off): the heuristics'
gap is the honest headline there, since the planner's own exact search closes the rest.
Every number comes from the planner's model (speeds, memory fit, data-parallel
efficiency); all sides use the same model, so the ratios compare placement decisions only.

A little over 400 lines: most of it is the suite of fleets (data), which bench/autoscale.py
reads from here too.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from atoll.api import DDMRunSpec
from atoll.operator.placement import experts_of, plan, read_fleet, speed_table, workload_of
from atoll.operator.placement.problem import START_SECONDS
from atoll.operator.placement.speeds import throughput, trains_in_bf16

NOW = datetime(2026, 1, 1, tzinfo=UTC)

# GFD product label, memory MiB, compute capability major.
H100 = ("NVIDIA-H100-80GB-HBM3", 81559, 9)
A100_80 = ("NVIDIA-A100-SXM4-80GB", 81920, 8)
A100_40 = ("NVIDIA-A100-SXM4-40GB", 40960, 8)
L40S = ("NVIDIA-L40S", 46068, 8)
L4 = ("NVIDIA-L4", 23034, 8)
RTX4090 = ("NVIDIA-GeForce-RTX-4090", 24564, 8)
RTX3090 = ("NVIDIA-GeForce-RTX-3090", 24576, 8)
A10G = ("NVIDIA-A10G", 23028, 8)
T4 = ("Tesla-T4", 15360, 7)
V100 = ("Tesla-V100-SXM2-16GB", 16384, 7)


@dataclass(frozen=True)
class Pool:
    gpu: tuple[str, int, int]
    nodes: int
    gpus: int
    state: str = "ok"  # ok, cordoned, unhealthy, stale, notready


@dataclass(frozen=True)
class Case:
    name: str
    pools: tuple[Pool, ...]
    experts: int
    preset: str = "dit-b/2"
    steps: int = 100_000
    sizes: tuple[int, ...] | None = None  # cluster sizes; None = equal
    min_memory_gib: float = 0
    max_per_expert: int = 8
    skewed: bool = True
    exact: bool = False
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def zipf_sizes(k: int, s: float = 1.0, total: int = 1_000_000) -> tuple[int, ...]:
    weights = [1 / (i + 1) ** s for i in range(k)]
    return tuple(max(1, round(total * w / sum(weights))) for w in weights)


SUITE: tuple[Case, ...] = (
    Case("1 H100 node + T4/L4 tail", (Pool(H100, 1, 8), Pool(T4, 4, 4), Pool(L4, 2, 4)), 8),
    Case(
        "default kwok fleet, DiT-XL/2",
        (Pool(H100, 2, 8), Pool(A100_40, 2, 8), Pool(L4, 2, 4), Pool(RTX4090, 2, 4), Pool(T4, 2, 4)),
        8,
        preset="dit-xl/2",
    ),
    Case("2 H100 nodes + 16 T4 nodes, DiT-L/2", (Pool(H100, 2, 8), Pool(T4, 16, 4)), 16, preset="dit-l/2"),
    Case(
        "64 experts, 5 products",
        (Pool(H100, 4, 8), Pool(A100_40, 8, 4), Pool(L4, 16, 1), Pool(T4, 16, 1), Pool(RTX4090, 8, 2)),
        64,
    ),
    Case(
        "unequal clusters (Zipf), proportional steps",
        (Pool(H100, 2, 8), Pool(A100_80, 2, 4), Pool(L4, 8, 2), Pool(T4, 8, 4)),
        16,
        sizes=zipf_sizes(16),
    ),
    Case("scarce GPUs: 32 experts on 14 GPUs", (Pool(H100, 1, 8), Pool(A100_40, 1, 4), Pool(RTX4090, 1, 2)), 32),
    Case(
        "fastest nodes cordoned/unhealthy/stale",
        (
            Pool(H100, 1, 8, "cordoned"),
            Pool(H100, 1, 8, "unhealthy"),
            Pool(H100, 1, 8, "stale"),
            Pool(H100, 1, 8, "notready"),
            Pool(A100_40, 2, 8),
            Pool(L4, 4, 4),
            Pool(T4, 8, 4),
        ),
        12,
    ),
    Case(
        "memory floor 40 GiB, DiT-XL/2",
        (Pool(H100, 1, 8), Pool(A100_40, 2, 8), Pool(L40S, 2, 4), Pool(RTX4090, 8, 1), Pool(T4, 8, 1)),
        12,
        preset="dit-xl/2",
        min_memory_gib=40,
    ),
    Case(
        "consumer cards + 2 A100",
        (Pool(RTX4090, 16, 1), Pool(RTX3090, 16, 1), Pool(A10G, 8, 1), Pool(A100_80, 2, 8)),
        24,
    ),
    Case(
        "48 experts, Zipf sizes, V100/T4 heavy",
        (Pool(H100, 2, 8), Pool(V100, 8, 8), Pool(T4, 16, 4), Pool(L4, 8, 4)),
        48,
        sizes=zipf_sizes(48, 0.7),
    ),
    Case("homogeneous A100 (control)", (Pool(A100_80, 8, 8),), 16, skewed=False),
    Case(
        "1000 nodes × 8 GPUs, 5 products (scale)",
        (Pool(H100, 200, 8), Pool(A100_40, 200, 8), Pool(L4, 200, 8), Pool(RTX4090, 200, 8), Pool(T4, 200, 8)),
        64,
    ),
    Case("small: 4 experts, H100/L4/T4", (Pool(H100, 1, 2), Pool(L4, 2, 1), Pool(T4, 2, 1)), 4, exact=True),
    Case("small: 5 experts, A100/4090/T4", (Pool(A100_40, 1, 2), Pool(RTX4090, 2, 1), Pool(T4, 1, 2)), 5, exact=True),
    Case("small: 6 experts, Zipf, H100/L4", (Pool(H100, 1, 2), Pool(L4, 2, 2)), 6, sizes=zipf_sizes(6), exact=True),
    Case(
        "small: 6 experts, scarce, 3 products", (Pool(H100, 1, 1), Pool(A100_40, 1, 2), Pool(T4, 1, 2)), 6, exact=True
    ),
    Case(
        "small: 7 experts, 4090/3090/A10G",
        (Pool(RTX4090, 2, 1), Pool(RTX3090, 2, 1), Pool(A10G, 1, 2)),
        7,
        sizes=zipf_sizes(7, 0.5),
        exact=True,
    ),
    Case(
        "small: 7 experts, steep Zipf, H100/4090/T4",
        (Pool(H100, 1, 2), Pool(RTX4090, 2, 1), Pool(T4, 1, 2)),
        7,
        sizes=zipf_sizes(7, 1.2),
        exact=True,
    ),
    Case(
        "small: 8 experts, Zipf, H100/A100/L4",
        (Pool(H100, 1, 2), Pool(A100_40, 1, 2), Pool(L4, 1, 2)),
        8,
        sizes=zipf_sizes(8),
        exact=True,
    ),
    Case(
        "small: 6 experts, 4 products",
        (Pool(H100, 1, 1), Pool(A100_40, 1, 1), Pool(L4, 1, 2), Pool(RTX4090, 1, 1)),
        6,
        sizes=zipf_sizes(6, 0.8),
        exact=True,
    ),
)


def fleet_nodes(pools: tuple[Pool, ...]) -> list[dict[str, Any]]:
    """Node objects as kubectl prints them, with GFD labels and agent annotations."""
    nodes = []
    for p_index, pool in enumerate(pools):
        product, memory, major = pool.gpu
        for index in range(pool.nodes):
            name = f"{product.lower().removeprefix('nvidia-').removeprefix('tesla-')}-{p_index}-{index}"
            beat = NOW - (timedelta(hours=1) if pool.state == "stale" else timedelta(seconds=10))
            node: dict[str, Any] = {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {
                    "name": name,
                    "labels": {
                        "nvidia.com/gpu.product": product,
                        "nvidia.com/gpu.memory": str(memory),
                        "nvidia.com/gpu.count": str(pool.gpus),
                        "nvidia.com/gpu.compute.major": str(major),
                    },
                    "annotations": {
                        "atoll.dev/gpu-health": "gpu 1: xid 79" if pool.state == "unhealthy" else "ok",
                        "atoll.dev/gpu-heartbeat": beat.isoformat().replace("+00:00", "Z"),
                    },
                },
                "spec": {"unschedulable": True} if pool.state == "cordoned" else {},
                "status": {
                    "allocatable": {"nvidia.com/gpu": str(pool.gpus)},
                    "conditions": [{"type": "Ready", "status": "False" if pool.state == "notready" else "True"}],
                },
            }
            nodes.append(node)
    return nodes


def run_spec(case: Case) -> DDMRunSpec:
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
            "placement": {"gpu": {"minMemoryGiB": case.min_memory_gib, "maxPerExpert": case.max_per_expert}},
        }
    )


def spread_makespan(case: Case, spec: DDMRunSpec, nodes: list[dict[str, Any]]) -> float:
    """One GPU per expert, experts dealt round-robin over the usable GPUs that fit them, queued per GPU."""
    workload = workload_of(spec)
    speeds = speed_table(spec)
    fleet = read_fleet(nodes, placement=spec.placement, now=NOW)
    batch = spec.expert.recipe().global_batch_size
    fitting = [
        n
        for n in fleet.nodes
        if workload.split_batch(batch, 1, n.memory_mib, trains_in_bf16(workload, n.product, n.compute_major))
    ]
    slots = [n for layer in range(max(n.free_gpus for n in fitting)) for n in fitting if layer < n.free_gpus]
    busy_until = [0.0] * len(slots)
    for work in experts_of(spec, case.sizes):
        slot = work.expert % len(slots)
        node = slots[slot]
        busy_until[slot] += work.samples / speeds.per_gpu(node.product, node.compute_major) + START_SECONDS
    return max(busy_until)


def greedy_makespan(case: Case, spec: DDMRunSpec, nodes: list[dict[str, Any]]) -> float:
    """Largest expert first, each to the (node, GPU count) that finishes it soonest given the GPUs taken.

    GPU counts divide the global batch, fit placement.gpu.maxPerExpert and the node's free
    GPUs, and have a micro-batch that fits the GPU's memory (the planner's rules); each
    option lasts samples / (per-GPU speed × data-parallel efficiency) plus the start cost.
    An expert starts when enough of the node's GPUs are free and takes those free earliest.
    """
    workload = workload_of(spec)
    speeds = speed_table(spec)
    fleet = read_fleet(nodes, placement=spec.placement, now=NOW, needs_bf16=workload.precision == "bf16")
    batch = spec.expert.recipe().global_batch_size
    free = {n.name: [0.0] * n.free_gpus for n in fleet.nodes}
    finish_all = 0.0
    for work in sorted(experts_of(spec, case.sizes), key=lambda w: (-w.samples, w.expert)):
        best: tuple[float, float, str, int] | None = None
        for node in fleet.nodes:
            bf16 = trains_in_bf16(workload, node.product, node.compute_major)
            for gpus in range(1, min(spec.placement.gpu.max_per_expert, node.free_gpus) + 1):
                if workload.split_batch(batch, gpus, node.memory_mib, bf16) is None:
                    continue
                speed = throughput(speeds.per_gpu(node.product, node.compute_major), gpus)
                seconds = work.samples / speed + START_SECONDS
                start = sorted(free[node.name])[gpus - 1]
                rank = (start + seconds, gpus * seconds, node.name, gpus)
                if best is None or rank < best:
                    best = rank
        assert best is not None, f"expert {work.expert} fits nowhere"
        finish, _, name, gpus = best
        taken = sorted(range(len(free[name])), key=lambda i: (free[name][i], i))[:gpus]
        for index in taken:
            free[name][index] = finish
        finish_all = max(finish_all, finish)
    return finish_all


def plan_case(case: Case, spec: DDMRunSpec, nodes: list[dict[str, Any]], budget: int | None) -> tuple[Any, float]:
    started = time.process_time()  # CPU seconds: the machine is shared, wall time is noise
    result = plan(
        nodes,
        experts_of(spec, case.sizes),
        workload=workload_of(spec),
        placement=spec.placement,
        speeds=speed_table(spec),
        now=NOW,
        exact_budget=budget,
    )
    return result, time.process_time() - started


def run_case(case: Case) -> dict[str, Any]:
    spec = run_spec(case)
    nodes = fleet_nodes(case.pools)
    result, seconds = plan_case(case, spec, nodes, None)
    spread = spread_makespan(case, spec, nodes)
    greedy = greedy_makespan(case, spec, nodes)
    row: dict[str, Any] = {
        "fleet": case.name,
        "experts": case.experts,
        "preset": case.preset,
        "usableGpus": sum(n.free_gpus for n in read_fleet(nodes, placement=spec.placement, now=NOW).nodes),
        "makespanHours": result.makespan_seconds / 3600,
        "lowerBoundHours": result.lower_bound_seconds / 3600,
        "efficiency": result.lower_bound_seconds / result.makespan_seconds,
        "spreadHours": spread / 3600,
        "speedup": spread / result.makespan_seconds,
        "greedyHours": greedy / 3600,
        "speedupOverGreedy": greedy / result.makespan_seconds,
        "plannerSeconds": seconds,
        "skewed": case.skewed,
        "provenOptimal": result.proven_optimal,
    }
    if case.exact:
        heuristic, _ = plan_case(case, spec, nodes, 0)
        optimum, exact_seconds = plan_case(case, spec, nodes, 20_000_000)
        if optimum.proven_optimal:
            row["optimumHours"] = optimum.makespan_seconds / 3600
            row["gap"] = result.makespan_seconds / optimum.makespan_seconds - 1
            row["heuristicGap"] = heuristic.makespan_seconds / optimum.makespan_seconds - 1
            row["greedyGap"] = greedy / optimum.makespan_seconds - 1
            row["exactSeconds"] = exact_seconds
    return row


def hardware() -> str:
    try:
        lines = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines()
        model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("Model name")), "?")
        cpus = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("CPU(s)")), "?")
    except (OSError, subprocess.CalledProcessError):
        model, cpus = platform.processor() or "?", "?"
    return f"{model}, {cpus} CPUs, Python {platform.python_version()}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the rows as JSON to this file")
    args = parser.parse_args()
    print(f"# placement benchmark — {hardware()}")
    header = (
        "| fleet | experts | GPUs | makespan h | lower bound h | efficiency | spread h | × spread | greedy h"
        " | × greedy | optimum h | gap: heuristics alone / planner / greedy | plan CPU s |"
    )
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    rows = []
    for case in SUITE:
        row = run_case(case)
        rows.append(row)
        optimum = f"{row['optimumHours']:.2f}" if "optimumHours" in row else "—"
        gap = (
            f"{row['heuristicGap'] * 100:.1f} % / {row['gap'] * 100:.1f} % / {row['greedyGap'] * 100:.1f} %"
            if "gap" in row
            else "—"
        )
        print(
            f"| {row['fleet']} | {row['experts']} {row['preset']} | {row['usableGpus']} | {row['makespanHours']:.2f}"
            f" | {row['lowerBoundHours']:.2f} | {row['efficiency']:.3f} | {row['spreadHours']:.2f}"
            f" | {row['speedup']:.2f}× | {row['greedyHours']:.2f} | {row['speedupOverGreedy']:.3f}× | {optimum}"
            f" | {gap} | {row['plannerSeconds']:.2f} |",
            flush=True,
        )
    skewed = [r["speedup"] for r in rows if r["skewed"]]
    over_greedy = [r["speedupOverGreedy"] for r in rows]
    gaps = [r["gap"] for r in rows if "gap" in r]
    heuristic_gaps = [r["heuristicGap"] for r in rows if "gap" in r]
    greedy_gaps = [r["greedyGap"] for r in rows if "gap" in r]
    print()
    print(
        f"speed-up over greedy list scheduling (all {len(rows)} fleets): geometric mean"
        f" {statistics.geometric_mean(over_greedy):.3f}×, min {min(over_greedy):.3f}×, max {max(over_greedy):.3f}×;"
        f" better on {sum(g > 1 + 1e-6 for g in over_greedy)}, equal on {sum(abs(g - 1) <= 1e-6 for g in over_greedy)},"
        f" worse on {sum(g < 1 - 1e-6 for g in over_greedy)}"
    )
    print(
        f"speed-up over the spread on skewed fleets: mean {statistics.mean(skewed):.2f}× (geometric "
        f"{statistics.geometric_mean(skewed):.2f}×, min {min(skewed):.2f}×); never below 1× by construction"
    )
    print(f"min speed-up over the spread, all fleets: {min(r['speedup'] for r in rows):.3f}×")
    print(f"mean efficiency (lower bound / makespan): {statistics.mean(r['efficiency'] for r in rows):.3f}")
    if gaps:
        print(
            f"gap to the optimum on {len(gaps)} small fleets — heuristics alone (headline): max"
            f" {max(heuristic_gaps) * 100:.2f} %, mean {statistics.mean(heuristic_gaps) * 100:.2f} %; planner with"
            f" its exact search: max {max(gaps) * 100:.2f} %; greedy: max {max(greedy_gaps) * 100:.2f} %,"
            f" mean {statistics.mean(greedy_gaps) * 100:.2f} %"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
