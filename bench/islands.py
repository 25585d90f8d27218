"""Islands benchmark: one run placed across compute islands vs the best single island.

    .venv/bin/python bench/islands.py [--json OUT.json]

For each mix of islands (each island a GPU fleet of its own cluster, as the operator sees
it: nodes tagged with their island, names qualified `island/node`) it plans one DDMRun's
experts with `atoll.operator.placement.plan` and reports the predicted makespan of:

* **across islands**: the planner over the union of every island's fleet (what a DDMRun
  with no `spec.placement.islands` restriction gets);
* **best single island**: the planner over each island alone, the fastest of them — what a
  user gets from a system that sees one cluster;
* **split by hand**: what a careful engineer does without multi-cluster placement: one run
  per island, the experts dealt to the islands largest first, each to the island whose
  estimated finish (its samples over its total throughput, or its largest expert over its
  fastest node's) grows least; each island's share then placed by the planner. The makespan
  is the slowest island's.

All sides use the planner's model (speeds, memory fit, data-parallel efficiency), so the
ratios compare placement decisions only. "Across islands is never slower than the best
single island" holds by construction, near enough: the union contains every island's plan,
and the planner's search starts from the spread over all GPUs; the interesting figures are
how much faster it is, and its gap to the hand split.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from atoll.api import DDMRunSpec  # noqa: E402
from atoll.operator.islands.fleet import island_nodes  # noqa: E402
from atoll.operator.placement import experts_of, plan, read_fleet, speed_table, workload_of  # noqa: E402
from atoll.operator.placement.problem import ExpertWork  # noqa: E402
from atoll.operator.placement.speeds import throughput  # noqa: E402
from bench.placement import (  # noqa: E402
    A100_40,
    A100_80,
    H100,
    L4,
    L40S,
    NOW,
    RTX4090,
    T4,
    V100,
    Pool,
    fleet_nodes,
    hardware,
    zipf_sizes,
)


@dataclass(frozen=True)
class Island:
    name: str
    pools: tuple[Pool, ...]


@dataclass(frozen=True)
class Mix:
    name: str
    islands: tuple[Island, ...]
    experts: int
    preset: str = "dit-b/2"
    sizes: tuple[int, ...] | None = None


MIXES: tuple[Mix, ...] = (
    Mix(
        "on-prem H100 node, cloud L4s, lab RTX 4090s",
        (
            Island("home", (Pool(H100, 1, 8),)),
            Island("cloud", (Pool(L4, 8, 4),)),
            Island("lab", (Pool(RTX4090, 6, 2),)),
        ),
        16,
    ),
    Mix(
        "three mid-size islands, 32 experts",
        (
            Island("home", (Pool(A100_40, 2, 8),)),
            Island("lab", (Pool(T4, 8, 4),)),
            Island("cloud", (Pool(L40S, 4, 4),)),
        ),
        32,
    ),
    Mix(
        "a big slow island and a small fast one, DiT-L/2",
        (Island("home", (Pool(T4, 16, 4),)), Island("cloud", (Pool(H100, 1, 8),))),
        24,
        preset="dit-l/2",
    ),
    Mix(
        "five single-product islands, 64 experts, Zipf sizes",
        (
            Island("home", (Pool(H100, 2, 8),)),
            Island("a100", (Pool(A100_80, 2, 8),)),
            Island("l4", (Pool(L4, 8, 4),)),
            Island("t4", (Pool(T4, 8, 4),)),
            Island("v100", (Pool(V100, 4, 8),)),
        ),
        64,
        sizes=zipf_sizes(64, 0.8),
    ),
    Mix(
        "mixed islands (every island heterogeneous)",
        (
            Island("home", (Pool(H100, 1, 4), Pool(T4, 4, 4))),
            Island("lab", (Pool(RTX4090, 4, 2), Pool(L4, 2, 4))),
            Island("cloud", (Pool(A100_40, 1, 8), Pool(L4, 4, 1))),
        ),
        24,
    ),
    Mix(
        "three equal A100 islands (control)",
        (
            Island("home", (Pool(A100_80, 2, 8),)),
            Island("east", (Pool(A100_80, 2, 8),)),
            Island("west", (Pool(A100_80, 2, 8),)),
        ),
        48,
    ),
)


def run_spec(mix: Mix) -> DDMRunSpec:
    return DDMRunSpec.model_validate(
        {
            "dataset": {"uri": "builtin://shapes", "resolution": 256, "vae": "sd-vae-ft-mse"},
            "weights": {"source": "hub"},
            "partition": {"clusters": mix.experts},
            "expert": {"preset": mix.preset, "steps": 100_000, "stepsPolicy": "proportional" if mix.sizes else "equal"},
        }
    )


def island_fleet(island: Island) -> list[Any]:
    """The island's nodes as the operator's fleet view has them: tagged, names qualified."""
    return list(island_nodes(island.name, fleet_nodes(island.pools)))


def makespan(spec: DDMRunSpec, nodes: list[Any], experts: list[ExpertWork]) -> float:
    if not experts:
        return 0.0
    result = plan(
        nodes, experts, workload=workload_of(spec), placement=spec.placement, speeds=speed_table(spec), now=NOW
    )
    return result.makespan_seconds


def island_speeds(spec: DDMRunSpec, nodes: list[Any]) -> tuple[float, float]:
    """(samples per second of all the island's usable GPUs, of its fastest node alone), each
    node data parallel over its GPUs: one expert runs on one node, so the second bounds it."""
    speeds = speed_table(spec)
    fleet = read_fleet(nodes, placement=spec.placement, now=NOW)
    per_node = [throughput(speeds.per_gpu(n.product, n.compute_major), n.free_gpus) for n in fleet.nodes]
    return sum(per_node), max(per_node)


def hand_split(spec: DDMRunSpec, fleets: dict[str, list[Any]], experts: list[ExpertWork]) -> float:
    """One run per island: largest expert first, to the island whose estimated finish grows least.

    An island's estimated finish is the larger of its assigned samples over its total
    throughput and its largest assigned expert over its fastest node's throughput (an expert
    trains on one node) — the estimate a careful engineer makes with a spreadsheet. Each
    island's share is then placed by the planner; the makespan is the slowest island's.
    """
    speed = {name: island_speeds(spec, nodes) for name, nodes in fleets.items()}
    assigned: dict[str, list[ExpertWork]] = {name: [] for name in fleets}

    def finish(name: str, extra: ExpertWork | None = None) -> float:
        works = assigned[name] + ([extra] if extra else [])
        total, fastest = speed[name]
        return max(sum(w.samples for w in works) / total, max((w.samples for w in works), default=0) / fastest)

    for work in sorted(experts, key=lambda w: (-w.samples, w.expert)):
        name = min(fleets, key=lambda n: (max(finish(n, work), *(finish(m) for m in fleets if m != n)), n))
        assigned[name].append(work)
    return max(makespan(spec, fleets[name], assigned[name]) for name in fleets)


def run_mix(mix: Mix) -> dict[str, Any]:
    spec = run_spec(mix)
    experts = list(experts_of(spec, mix.sizes))
    fleets = {island.name: island_fleet(island) for island in mix.islands}
    started = time.process_time()
    union = makespan(spec, [node for nodes in fleets.values() for node in nodes], experts)
    union_cpu = time.process_time() - started
    singles = {name: makespan(spec, nodes, experts) for name, nodes in fleets.items()}
    best = min(singles, key=lambda name: singles[name])
    split = hand_split(spec, fleets, experts)
    return {
        "mix": mix.name,
        "islands": len(mix.islands),
        "experts": mix.experts,
        "preset": mix.preset,
        "acrossHours": union / 3600,
        "bestIsland": best,
        "bestIslandHours": singles[best] / 3600,
        "speedupOverBestIsland": singles[best] / union,
        "handSplitHours": split / 3600,
        "speedupOverHandSplit": split / union,
        "planCpuSeconds": union_cpu,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the rows as JSON to this file")
    args = parser.parse_args()
    print(f"# islands benchmark — {hardware()}")
    header = (
        "| islands | experts | across islands h | best single island h | × best island | split by hand h"
        " | × hand split | plan CPU s |"
    )
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    rows = []
    for mix in MIXES:
        row = run_mix(mix)
        rows.append(row)
        print(
            f"| {row['mix']} ({row['islands']}) | {row['experts']} {row['preset']} | {row['acrossHours']:.2f}"
            f" | {row['bestIslandHours']:.2f} ({row['bestIsland']}) | {row['speedupOverBestIsland']:.2f}×"
            f" | {row['handSplitHours']:.2f} | {row['speedupOverHandSplit']:.3f}× | {row['planCpuSeconds']:.2f} |",
            flush=True,
        )
    over_best = [r["speedupOverBestIsland"] for r in rows]
    over_split = [r["speedupOverHandSplit"] for r in rows]
    print()
    print(
        f"across islands vs the best single island: geometric mean {statistics.geometric_mean(over_best):.2f}×,"
        f" min {min(over_best):.2f}×, max {max(over_best):.2f}×"
    )
    print(
        f"across islands vs one run per island split by hand: geometric mean"
        f" {statistics.geometric_mean(over_split):.3f}×, min {min(over_split):.3f}×, max {max(over_split):.3f}×"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
