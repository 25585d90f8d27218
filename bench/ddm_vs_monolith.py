"""DDM vs monolith at equal training FLOPs: the papers' comparison, scaled down to digits on a CPU.

Runs the quickstart DDM (K=4 tiny experts + a tiny router) and two monoliths through the
local runtime, each trained for as many FLOPs as the DDM's experts *and router* cost: one
tiny expert on all the data, and one tiny-w2 expert (twice as wide: as many parameters as
the four experts together), so the DDM's win cannot be read as capacity alone. Prints the
domain Fréchet distance of each sampling strategy against the equal-FLOPs monolith's.
FLOPs per training example are counted with torch.utils.flop_counter on one forward +
backward pass of each model (matmuls and convolutions; partition k-means and sampling are
not training and are not counted).

    .venv/bin/python bench/ddm_vs_monolith.py [--quick] [--workdir DIR] [--keep]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import yaml
from comparison import expert_flops, monolith, parameters, router_flops, run_manifest, score, versions

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "manifests" / "examples" / "quickstart.yaml"
STRATEGIES = ["top-1", "top-2", "full"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="200 expert steps, 100 router steps, 128 samples")
    parser.add_argument("--workdir", type=Path, default=ROOT / ".atoll" / "bench", help="runs and logs")
    parser.add_argument("--keep", action="store_true", help="reuse finished runs in --workdir")
    args = parser.parse_args()

    base = yaml.safe_load(QUICKSTART.read_text())
    spec = base["spec"]
    if args.quick:
        spec["expert"]["steps"], spec["router"]["steps"] = 200, 100
        spec["evaluation"]["samples"] = 128
    spec["evaluation"]["strategies"] = STRATEGIES
    suffix = "-quick" if args.quick else ""
    if not args.keep:
        shutil.rmtree(args.workdir, ignore_errors=True)
    args.workdir.mkdir(parents=True, exist_ok=True)

    clusters = int(spec["partition"]["clusters"])
    expert_batch = int(spec["expert"]["globalBatchSize"])
    router_batch = int(spec["router"].get("globalBatchSize", 64))  # the tiny preset's recipe
    expert, wide, router = (
        expert_flops(spec["expert"]["preset"], spec),
        expert_flops("tiny-w2", spec),
        router_flops(spec),
    )
    ddm_expert_total = clusters * spec["expert"]["steps"] * expert_batch * expert
    ddm_router_total = spec["router"]["steps"] * router_batch * router
    ddm_total = ddm_expert_total + ddm_router_total
    monolith_steps = round(ddm_total / (expert_batch * expert))
    wide_steps = round(ddm_total / (expert_batch * wide))

    runs: dict[str, dict[str, Any]] = {
        "ddm": {**base, "metadata": {"name": f"bench-ddm{suffix}"}},
        "monolith": monolith(base, name=f"bench-monolith{suffix}", preset="tiny", steps=monolith_steps),
        "wide": monolith(base, name=f"bench-monolith-w2{suffix}", preset="tiny-w2", steps=wide_steps),
    }
    metrics: dict[str, dict[str, Any]] = {}
    seconds: dict[str, float] = {}
    for key, document in runs.items():
        metrics[key], seconds[key] = run_manifest(document, args.workdir / f"{key}.yaml", args.workdir)

    baseline = score(metrics["monolith"]["strategies"]["full"])
    rows = [
        ("monolith (K=1)", metrics["monolith"]["strategies"]["full"]),
        ("monolith, equal parameters (tiny-w2, K=1)", metrics["wide"]["strategies"]["full"]),
    ] + [(f"DDM {s}", metrics["ddm"]["strategies"][s]) for s in STRATEGIES]
    table = [
        "| model | domain Fréchet ↓ | vs monolith | experts run / step | s / image |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, row in rows:
        table.append(
            f"| {label} | {score(row):.3f} | {score(row) / baseline:.2f}× |"
            f" {row['expertsPerStep']:.2f} | {row['secondsPerImage']:.4f} |"
        )
    table.append(f"| real vs real (noise floor) | {score(metrics['ddm']['reference']):.3f} | | | |")

    results = {
        "quick": args.quick,
        "flopsPerExample": {"expert": expert, "wideExpert": wide, "router": router},
        "parameters": {"expert": parameters("tiny", spec), "wideExpert": parameters("tiny-w2", spec)},
        "trainingFlops": {"ddmExperts": ddm_expert_total, "ddmRouter": ddm_router_total, "each": ddm_total},
        "steps": {
            "ddmExpert": spec["expert"]["steps"],
            "ddmRouter": spec["router"]["steps"],
            "monolith": monolith_steps,
            "wideMonolith": wide_steps,
        },
        "wallSeconds": seconds,
        "evaluatorReliable": all(m["classifier"]["reliable"] for m in metrics.values()),
        "metrics": metrics,
        "versions": versions(),
    }
    (args.workdir / "results.json").write_text(json.dumps(results, indent=2))
    print()
    print(
        f"training FLOPs per example: expert {expert / 1e6:.2f} MFLOP, wide expert {wide / 1e6:.2f} MFLOP,"
        f" router {router / 1e6:.2f} MFLOP"
    )
    print(
        f"DDM: {clusters} experts × {spec['expert']['steps']} steps × {expert_batch} + router {spec['router']['steps']}"
        f" steps × {router_batch} = {ddm_total / 1e12:.3f} TFLOP; monolith: {monolith_steps} steps × {expert_batch};"
        f" wide monolith: {wide_steps} steps × {expert_batch} (same FLOPs)"
    )
    print(f"parameters: {clusters} × {results['parameters']['expert']:,} vs {results['parameters']['wideExpert']:,}")
    print(
        "wall time on this machine: "
        + ", ".join(f"{k} {v:.0f}s" for k, v in seconds.items())
        + (" (--keep: finished runs were reused)" if args.keep else "")
    )
    print()
    print("\n".join(table))
    print(f"\nresults: {args.workdir / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
