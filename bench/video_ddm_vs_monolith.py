"""Paris 2.0's table at toy scale: a video DDM vs monoliths at equal training FLOPs, on moving digits.

Runs the video quickstart DDM (K Wan experts of the manifest's preset + a router) and two
monoliths through the local runtime, every model trained with the same total FLOPs (counted
with torch's FlopCounterMode, router included):

* the equal-FLOPs monolith: one expert of the manifest's preset (e.g. video-nano) on all the data;
* the equal-parameter monolith: one expert of its `-w2` preset (twice as wide: as many
  parameters as four experts together), so a DDM win cannot be read as capacity alone.

Prints, per model and strategy, the domain FVD (a 3-D CNN evaluator trained at evaluate time
on half of the real clips), text–video alignment (how often that evaluator recognises the
digit and the direction the caption asked for), temporal consistency and seconds per clip,
with the real-vs-real floor and real clips with shuffled frames. Goal: DDM top-2 domain FVD
≤ 0.7× the equal-FLOPs monolith's.

    .venv/bin/python bench/video_ddm_vs_monolith.py [--quick] [--workdir DIR] [--keep]
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
from pathlib import Path
from typing import Any

import yaml
from comparison import (
    expert_flops,
    monolith,
    monolith_presets,
    parameters,
    router_flops,
    run_manifest,
    score,
    versions,
)

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "manifests" / "examples" / "video-quickstart.yaml"
STRATEGIES = ["top-1", "top-2", "full"]
GOAL = 0.7
"""DDM top-2 domain FVD over the equal-FLOPs monolith's must be at most this."""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a quarter of the steps, 64 clips per strategy")
    parser.add_argument("--workdir", type=Path, default=ROOT / ".atoll" / "bench-video", help="runs and logs")
    parser.add_argument("--keep", action="store_true", help="reuse finished runs in --workdir")
    args = parser.parse_args()

    base = yaml.safe_load(QUICKSTART.read_text())
    spec = base["spec"]
    if args.quick:
        spec["expert"]["steps"] //= 4
        spec["router"]["steps"] //= 4
        spec["evaluation"]["samples"] = 64
    spec["evaluation"]["strategies"] = STRATEGIES
    suffix = "-quick" if args.quick else ""
    if not args.keep:
        shutil.rmtree(args.workdir, ignore_errors=True)
    args.workdir.mkdir(parents=True, exist_ok=True)

    clusters = int(spec["partition"]["clusters"])
    batch = int(spec["expert"]["globalBatchSize"])
    router_batch = int(spec["router"]["globalBatchSize"])
    narrow_preset, wide_preset = monolith_presets(spec["expert"]["preset"])
    expert = expert_flops(narrow_preset, spec)
    wide = expert_flops(wide_preset, spec)
    router = router_flops(spec)
    ddm_total = clusters * spec["expert"]["steps"] * batch * expert + spec["router"]["steps"] * router_batch * router
    equal_flops_steps = round(ddm_total / (batch * expert))
    equal_params_steps = round(ddm_total / (batch * wide))

    runs = {
        "ddm": {**base, "metadata": {"name": f"bench-video-ddm{suffix}"}},
        "monolith": monolith(base, name=f"bench-video-monolith{suffix}", preset=narrow_preset, steps=equal_flops_steps),
        "wide": monolith(base, name=f"bench-video-monolith-w2{suffix}", preset=wide_preset, steps=equal_params_steps),
    }
    metrics: dict[str, dict[str, Any]] = {}
    seconds: dict[str, float] = {}
    for key, document in runs.items():
        metrics[key], seconds[key] = run_manifest(document, args.workdir / f"{key}.yaml", args.workdir)

    baseline = score(metrics["monolith"]["strategies"]["full"])
    table = _table(metrics, clusters, baseline, (narrow_preset, wide_preset))
    reliable = all(m["classifier"]["reliable"] for m in metrics.values())
    top2 = score(metrics["ddm"]["strategies"]["top-2"]) / baseline
    results = {
        "quick": args.quick,
        "flopsPerExample": {"expert": expert, "wideExpert": wide, "router": router},
        "parameters": {
            "expert": parameters(narrow_preset, spec),
            "wideExpert": parameters(wide_preset, spec),
            "experts": clusters,
        },
        "trainingFlops": ddm_total,
        "steps": {
            "ddmExpert": spec["expert"]["steps"],
            "ddmRouter": spec["router"]["steps"],
            "monolith": equal_flops_steps,
            "wideMonolith": equal_params_steps,
        },
        "wallSeconds": seconds,
        "evaluatorReliable": reliable,
        "top2OverMonolith": top2,
        "goalMet": bool(top2 <= GOAL) if math.isfinite(top2) else False,
        "metrics": metrics,
        "versions": versions(),
    }
    (args.workdir / "results.json").write_text(json.dumps(results, indent=2))
    print()
    print(
        f"training FLOPs per clip: expert {expert / 1e9:.3f} GFLOP, wide expert {wide / 1e9:.3f} GFLOP,"
        f" router {router / 1e9:.3f} GFLOP; every model trained {ddm_total / 1e12:.2f} TFLOP"
        f" (monolith {equal_flops_steps} steps, wide monolith {equal_params_steps} steps of {batch})"
    )
    print(f"parameters: {clusters} × {results['parameters']['expert']:,} vs {results['parameters']['wideExpert']:,}")
    print("wall time on this machine: " + ", ".join(f"{k} {v:.0f}s" for k, v in seconds.items()))
    if not reliable:
        print("WARNING: an evaluator was near chance: its scores are not scores (see metrics' classifier.reason)")
    print()
    print("\n".join(table))
    verdict = "met" if results["goalMet"] else "NOT met"
    print(f"\nDDM top-2 / equal-FLOPs monolith: {top2:.2f}× (goal ≤ {GOAL}×: {verdict})")
    print(f"results: {args.workdir / 'results.json'}")
    return 0


def _table(metrics: dict[str, dict[str, Any]], clusters: int, baseline: float, presets: tuple[str, str]) -> list[str]:
    """The markdown table: monoliths, DDM strategies, the real-vs-real floor and shuffled frames."""
    rows = [
        (f"monolith, equal FLOPs ({presets[0]}, K=1)", metrics["monolith"]["strategies"]["full"]),
        (f"monolith, equal FLOPs and parameters ({presets[1]})", metrics["wide"]["strategies"]["full"]),
    ] + [(f"DDM {s} (K={clusters})", metrics["ddm"]["strategies"][s]) for s in STRATEGIES]
    table = [
        "| model | domain FVD ↓ | vs monolith | alignment ↑ | temporal consistency | experts run / step | s / clip |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for label, row in rows:
        fvd = score(row)
        table.append(
            f"| {label} | {fvd:.2f} | {fvd / baseline:.2f}× | {score(row, 'alignment'):.3f} |"
            f" {row['temporalConsistency']:.3f} | {row['expertsPerStep']:.2f} | {row['secondsPerClip']:.3f} |"
        )
    reference = metrics["ddm"]["reference"]
    table.append(
        f"| real vs real (noise floor) | {score(reference):.2f} | | {score(reference, 'alignment'):.3f} |"
        f" {reference['temporalConsistency']:.3f} | | |"
    )
    table.append(f"| real clips, frames shuffled | {score(reference, 'shuffledFramesFrechetDistance'):.2f} | | | | | |")
    return table


if __name__ == "__main__":
    sys.exit(main())
