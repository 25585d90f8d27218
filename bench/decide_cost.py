"""CPU cost of one reconcile decision at scale: this checkout vs a baseline revision, in one run.

    .venv/bin/python bench/decide_cost.py [--baseline REV] [--nodes 1000] [--experts 64] [--rounds 3]

The operator decides every tick of every run on its worker threads, which share one GIL with
the event loop that reads the watch streams: CPU spent deciding delays everything else the
process does (see "Operator scale" in docs/benchmarks.md). This bench measures that CPU
directly, without a cluster, so a busy machine disturbs it little: the thread CPU time
(`time.thread_time`) of `decide_reserving` — the call a tick makes — on three recorded
situations of one run of `--experts` experts on a fleet of `--nodes` simulated GPU nodes
(tests/env/fleet.py, as bench/operator_scale.py uses):

* **place**: the partition is done, every DDMExpert exists, no expert pod yet: the tick plans
  and creates every expert's pod;
* **turning Running**: every expert pod from that plan is bound and Running: the tick patches
  every DDMExpert to Running;
* **watching**: the tick after that: nothing changes.

Each version runs in its own process (the baseline exported from git and laid out as the
`atoll` package, like bench/stage_memory.py), the versions alternate for `--rounds` rounds,
and the bench prints the median per situation and the ratio after ÷ before.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SITUATIONS = ("place", "turning Running", "watching")


def measure(nodes: int, experts: int, repeats: int) -> dict[str, float]:
    """Median thread CPU milliseconds of decide_reserving per situation (in this process's atoll)."""
    from atoll.operator.ledger import GpuLedger
    from atoll.operator.reconcile import decide_reserving
    from atoll.operator.reconcile.actions import CreatePod
    from atoll.operator.views import NodeView, PodView
    from tests.env.fleet import simulated_fleet
    from tests.operator.situations import (
        SETTINGS,
        SPEC,
        expert,
        heartbeat,
        observe,
        pod,
        run_body,
        status_body,
        step,
        store,
    )

    fleet = tuple(NodeView.from_body(body) for body in simulated_fleet(nodes))
    sizes = tuple(1000 + k for k in range(experts))
    spec = {"partition": {**SPEC["partition"], "clusters": experts}}
    first = step(observe(run_body(**spec), nodes=fleet))
    finished = store(
        progress={"partition": heartbeat("partition", 1, "done", step=200, total_steps=200)},
        done={"partition": True},
        cluster_sizes=sizes,
        claims={"partition": 1},
    )
    exited = (pod("partition", 1, "Succeeded", exit_code=0, node=fleet[0].name),)
    done = step(
        observe(run_body(status_body(first.status), **spec), pods=exited, snapshot=finished, nodes=fleet), first.memory
    )
    run = run_body(status_body(done.status), **spec)
    views = tuple(expert(k) for k in range(experts))
    base = {"run": run, "experts": views, "nodes": fleet, "snapshot": store(cluster_sizes=sizes)}

    def timed(observation: Any, memory: Any) -> tuple[float, Any]:
        started = time.thread_time()
        decision = decide_reserving(GpuLedger(), observation, dict, memory, SETTINGS)
        return (time.thread_time() - started) * 1000, decision

    placed = timed(observe(**base), done.memory)[1]
    pods = []
    for create in placed.of(CreatePod):
        body = copy.deepcopy(create.manifest)
        body["spec"]["nodeName"] = create.node
        body["status"] = {"phase": "Running"}
        view = PodView.from_body(body)
        assert view is not None
        pods.append(view)
    placed_experts = sum(1 for create in placed.of(CreatePod) if create.stage.startswith("expert-"))
    assert placed_experts == experts, f"the plan placed {placed_experts} of {experts} experts"
    running = timed(observe(**base, pods=pods), placed.memory)[1]
    situations = {
        "place": (observe(**base), done.memory),
        "turning Running": (observe(**base, pods=pods), placed.memory),
        "watching": (observe(**base, pods=pods), running.memory),
    }
    return {
        name: statistics.median(timed(observation, memory)[0] for _ in range(repeats))
        for name, (observation, memory) in situations.items()
    }


def baseline_tree(revision: str, work: Path) -> str:
    """`revision` exported and laid out as the `atoll` package; its PYTHONPATH entry."""
    sys.path.insert(0, str(REPO / "bench"))
    from stage_memory import baseline

    return baseline(revision, work).pythonpath


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", default="main", help="git revision to compare with (default: main)")
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--experts", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5, help="decisions per situation in one measurement")
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.nodes, args.experts, args.repeats)))
        return 0
    work = Path(tempfile.mkdtemp(prefix="atoll-bench-decide-"))
    versions = {"before": baseline_tree(args.baseline, work), "after": None}
    samples: dict[str, dict[str, list[float]]] = {v: {s: [] for s in SITUATIONS} for v in versions}
    for _ in range(args.rounds):
        for version, pythonpath in versions.items():
            env = dict(os.environ, HF_HUB_OFFLINE="1")
            if pythonpath is not None:
                env["PYTHONPATH"] = pythonpath
            command = [
                sys.executable,
                __file__,
                "--measure",
                "--nodes",
                str(args.nodes),
                "--experts",
                str(args.experts),
            ]
            command += ["--repeats", str(args.repeats)]
            out = subprocess.run(command, env=env, cwd=REPO, check=True, capture_output=True, text=True).stdout
            for name, value in json.loads(out.splitlines()[-1]).items():
                samples[version][name].append(value)
    results: dict[str, Any] = {"nodes": args.nodes, "experts": args.experts, "baseline": args.baseline}
    print(f"decide_reserving, thread CPU ms (median of {args.rounds} rounds × {args.repeats}), {args.nodes} nodes:")
    for name in SITUATIONS:
        before = statistics.median(samples["before"][name])
        after = statistics.median(samples["after"][name])
        results[name] = {"before_ms": round(before, 2), "after_ms": round(after, 2), "ratio": round(after / before, 3)}
        print(f"  {name:16s} before {before:8.1f}  after {after:8.1f}  after ÷ before {after / before:.2f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
