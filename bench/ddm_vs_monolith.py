"""DDM vs monolith at equal training FLOPs: the papers' comparison, scaled down to digits on a CPU.

Runs the quickstart DDM (K=4 tiny experts + a tiny router) and one monolith (a single tiny
expert on all the data) through the local runtime, the monolith trained for as many steps
as the DDM's experts *and router* cost in FLOPs, then prints the domain Fréchet distance
of each sampling strategy against the monolith's. FLOPs per training example are counted
with torch.utils.flop_counter on one forward + backward pass of each model (matmuls and
convolutions; partition k-means and sampling are not training and are not counted).

    .venv/bin/python bench/ddm_vs_monolith.py [--quick] [--workdir DIR] [--keep]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "manifests" / "examples" / "quickstart.yaml"
STRATEGIES = ["top-1", "top-2", "full"]


def training_flops_per_example(spec: dict[str, Any]) -> tuple[float, float]:
    """FLOPs of one training example (forward + backward) of an expert and of the router."""
    from torch.utils.flop_counter import FlopCounterMode

    from atoll.trainer import flow
    from atoll.trainer.encoders import text_encoder_for
    from atoll.trainer.models.expert import build_expert, velocity
    from atoll.trainer.models.router import build_router, router_logits

    side = int(spec["dataset"]["resolution"])
    latent = (3, side, side)  # identity VAE: pixel space
    text = text_encoder_for(spec["dataset"].get("textEncoder", "hashed-bow"))
    caption, mask = (t.clone() for t in text.encode_prompts(["a handwritten 7"]))  # out of inference mode
    x = torch.randn(1, *latent)
    sigma = torch.tensor([0.5])

    expert = build_expert(spec["expert"]["preset"], latent_shape=latent, text_dim=text.dim, seed=0)
    with FlopCounterMode(display=False) as counter:
        velocity(expert, x, sigma, caption, mask).square().mean().backward()
    expert_flops = float(counter.get_total_flops())

    reads_caption = bool(spec["router"].get("conditionOnText", False))
    router = build_router(
        spec["router"]["preset"],
        clusters=spec["partition"]["clusters"],
        latent_shape=latent,
        text_dim=text.dim if reads_caption else None,
    )
    x_t = flow.add_noise(x, torch.randn_like(x), sigma)
    with FlopCounterMode(display=False) as counter:
        router_logits(router, x_t, sigma, caption, mask).logsumexp(1).sum().backward()
    return expert_flops, float(counter.get_total_flops())


def run_manifest(document: dict[str, Any], path: Path, workdir: Path) -> tuple[dict[str, Any], float]:
    """`atoll run FILE --local`; returns eval/metrics.json and the wall time."""
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    start = time.perf_counter()
    command = [sys.executable, "-m", "atoll", "run", str(path), "--local", "--workdir", str(workdir)]
    subprocess.run(command, check=True)
    seconds = time.perf_counter() - start
    name = document["metadata"]["name"]
    metrics = json.loads((workdir / "runs" / name / "eval" / "metrics.json").read_text())
    return metrics, seconds


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
    expert_flops, router_flops = training_flops_per_example(spec)
    ddm_expert_total = clusters * spec["expert"]["steps"] * expert_batch * expert_flops
    ddm_router_total = spec["router"]["steps"] * router_batch * router_flops
    monolith_steps = round((ddm_expert_total + ddm_router_total) / (expert_batch * expert_flops))

    ddm = {**base, "metadata": {"name": f"bench-ddm{suffix}"}}
    monolith_spec = json.loads(json.dumps(spec))
    monolith_spec["partition"]["clusters"] = 1
    monolith_spec["expert"]["steps"] = monolith_steps
    # One expert: every strategy is the same (and top-2 of one expert is refused by the spec).
    monolith_spec["sampling"]["strategy"] = "full"
    monolith_spec["evaluation"]["strategies"] = ["full"]
    monolith = {**base, "metadata": {"name": f"bench-monolith{suffix}"}, "spec": monolith_spec}

    ddm_metrics, ddm_seconds = run_manifest(ddm, args.workdir / "ddm.yaml", args.workdir)
    mono_metrics, mono_seconds = run_manifest(monolith, args.workdir / "monolith.yaml", args.workdir)

    mono = mono_metrics["strategies"]["full"]
    baseline = mono["frechetDistance"]
    rows = [("monolith (K=1)", mono)] + [(f"DDM {s}", ddm_metrics["strategies"][s]) for s in STRATEGIES]
    table = [
        "| model | domain Fréchet ↓ | vs monolith | experts run / step | s / image |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, row in rows:
        table.append(
            f"| {label} | {row['frechetDistance']:.3f} | {row['frechetDistance'] / baseline:.2f}× |"
            f" {row['expertsPerStep']:.2f} | {row['secondsPerImage']:.4f} |"
        )
    table.append(f"| real vs real (noise floor) | {ddm_metrics['reference']['frechetDistance']:.3f} | | | |")

    results = {
        "quick": args.quick,
        "flopsPerExample": {"expert": expert_flops, "router": router_flops},
        "trainingFlops": {
            "ddmExperts": ddm_expert_total,
            "ddmRouter": ddm_router_total,
            "monolith": monolith_steps * expert_batch * expert_flops,
        },
        "steps": {
            "ddmExpert": spec["expert"]["steps"],
            "ddmRouter": spec["router"]["steps"],
            "monolith": monolith_steps,
        },
        "wallSeconds": {"ddm": ddm_seconds, "monolith": mono_seconds},
        "ddm": ddm_metrics,
        "monolith": mono_metrics,
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "diffusers": __import__("diffusers").__version__,
        },
    }
    (args.workdir / "results.json").write_text(json.dumps(results, indent=2))
    print()
    print(f"training FLOPs per example: expert {expert_flops / 1e6:.2f} MFLOP, router {router_flops / 1e6:.2f} MFLOP")
    monolith_total = monolith_steps * expert_batch * expert_flops
    print(
        f"DDM: {clusters} experts × {spec['expert']['steps']} steps × {expert_batch} + router {spec['router']['steps']}"
        f" steps × {router_batch} = {(ddm_expert_total + ddm_router_total) / 1e12:.3f} TFLOP;"
        f" monolith: {monolith_steps} steps × {expert_batch} = {monolith_total / 1e12:.3f} TFLOP"
    )
    print(
        f"wall time on this machine: DDM {ddm_seconds:.0f}s (stages in parallel), monolith {mono_seconds:.0f}s"
        + (" (--keep: finished runs were reused)" if args.keep else "")
    )
    print()
    print("\n".join(table))
    print(f"\nresults: {args.workdir / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
