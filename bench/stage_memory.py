"""Stage memory benchmark: peak RSS and speed of partition, expert and router as the dataset grows.

Generates WebDataset tar shards of N small captioned, labelled images (16 px) for N = base ×
each scale, and runs every stage as its own process (`python -m atoll.trainer <stage>`,
exactly as pods run it) on each, with the code of this checkout ("after") and with the code
of a baseline git revision ("before", default `main`) in the same session. Each stage's
peak resident set comes from os.wait4 (that process alone); speed is the stage's wall time,
and for expert and router the samples/s of their own progress.json (whole run: the first
data read, every step and the one final checkpoint). Prints a markdown table.

    .venv/bin/python bench/stage_memory.py                          # 1×, 10×, 100× of 1000 images
    .venv/bin/python bench/stage_memory.py --scales 1 10 --steps 20  # quicker
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
STAGES = ("partition", "expert", "router")


@dataclass(frozen=True)
class Version:
    """Code to run a stage with: this checkout (no PYTHONPATH) or a baseline revision's link tree."""

    label: str
    revision: str
    pythonpath: str | None


@dataclass(frozen=True)
class Measurement:
    version: str
    stage: str
    examples: int
    peak_rss_mib: float
    seconds: float
    samples_per_second: float | None


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), *args], check=True, capture_output=True, text=True).stdout.strip()


def baseline(revision: str, work: Path) -> Version:
    """Export `revision` and lay it out as the `atoll` package (core/ is atoll, trainer/ and operator/ inside)."""
    sha = git("rev-parse", "--short", revision)
    root = work / f"baseline-{sha}"
    links = root / "links"
    if not (links / "atoll").is_dir():
        shutil.rmtree(root, ignore_errors=True)
        (root / "src").mkdir(parents=True)
        archive = subprocess.run(["git", "-C", str(REPO), "archive", sha], check=True, capture_output=True).stdout
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(root / "src", filter="data")
        package = links / "atoll"
        package.mkdir(parents=True)
        for entry in (root / "src" / "core").iterdir():
            (package / entry.name).symlink_to(entry)
        (package / "trainer").symlink_to(root / "src" / "trainer")
        (package / "operator").symlink_to(root / "src" / "operator")
    return Version(label=f"before ({revision} {sha})", revision=sha, pythonpath=str(links))


def write_images(root: Path, n: int, *, per_shard: int = 10_000, side: int = 16) -> Path:
    """n captioned, labelled images as tar shards (cached: written once per n)."""
    done = root / "complete"
    if done.exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for first in range(0, n, per_shard):
        with tarfile.open(root / f"shard-{first // per_shard:05d}.tar", "w") as tar:
            for i in range(first, min(n, first + per_shard)):
                label = int(rng.integers(10))
                pixels = (rng.random((side, side, 3)) * 64 + label * 19).astype(np.uint8)
                png = io.BytesIO()
                Image.fromarray(pixels).save(png, format="PNG")
                caption = f"a picture of {label} number {i % 97}".encode()
                for ext, data in (("png", png.getvalue()), ("txt", caption), ("cls", b"%d" % label)):
                    member = tarfile.TarInfo(f"{i:08d}.{ext}")
                    member.size = len(data)
                    tar.addfile(member, io.BytesIO(data))
    done.write_text(str(n))
    return root


def spec_document(images: Path, args: argparse.Namespace) -> dict[str, object]:
    """A spec both versions accept (only fields the baseline knows too)."""
    training = {"preset": "tiny", "steps": args.steps, "globalBatchSize": args.batch, "checkpointEvery": args.steps}
    return {
        "dataset": {"uri": str(images), "resolution": 16},
        "partition": {
            "clusters": args.clusters,
            "features": "pixels",
            "fineClusters": 64,
            "sampleSize": args.sample_size,
        },
        "expert": dict(training),
        "router": dict(training),
    }


def run_stage(version: Version, stage: str, run: Path, log: Path, threads: int) -> tuple[float, float]:
    """(peak RSS MiB, wall seconds) of one stage process."""
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTHONDONTWRITEBYTECODE")}
    env["ATOLL_TORCH_THREADS"] = str(threads)
    env["HF_HUB_OFFLINE"] = "1"
    if version.pythonpath:
        env["PYTHONPATH"] = version.pythonpath
    argv = [sys.executable, "-m", "atoll.trainer", stage, "--run", str(run / "spec.json"), "--store", str(run)]
    if stage == "expert":
        argv += ["--expert", "0"]
    started = time.perf_counter()
    with log.open("wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=run)
        _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{version.label} {stage} failed; see {log}:\n{log.read_text()[-2000:]}")
    return usage.ru_maxrss / 1024, seconds


def samples_per_second(run: Path, stage: str) -> float | None:
    path = run / ("experts/0" if stage == "expert" else stage) / "progress.json"
    value = json.loads(path.read_text()).get("samplesPerSecond")
    return float(value) if value is not None else None


def measure(version: Version, images: Path, n: int, args: argparse.Namespace) -> list[Measurement]:
    run = args.work / "runs" / f"{version.revision}-{n}"
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    (run / "spec.json").write_text(json.dumps(spec_document(images, args), indent=2))
    results = []
    for stage in args.stages:
        rss, seconds = run_stage(version, stage, run, run / f"{stage}.log", args.threads)
        speed = samples_per_second(run, stage) if stage != "partition" else n / seconds
        results.append(Measurement(version.label, stage, n, rss, seconds, speed))
        print(
            f"  {version.label:>24} {stage:>9} {n:>8} examples: peak RSS {rss:7.1f} MiB, {seconds:6.1f} s,"
            f" {speed:8.1f} samples/s",
            flush=True,
        )
    if not args.keep:
        shutil.rmtree(run, ignore_errors=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=int, default=1000, help="examples at scale 1")
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 10, 100])
    parser.add_argument("--baseline", default="main", help="git revision measured as 'before'")
    parser.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    parser.add_argument("--clusters", type=int, default=4)
    parser.add_argument("--sample-size", type=int, default=2000, help="partition.sampleSize")
    parser.add_argument("--steps", type=int, default=30, help="expert and router steps")
    parser.add_argument("--batch", type=int, default=64, help="global batch")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per stage (ATOLL_TORCH_THREADS)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/atoll-stage-memory"))
    parser.add_argument("--keep", action="store_true", help="keep each run's store")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)

    head = git("rev-parse", "--short", "HEAD") + (
        "-dirty" if git("status", "--porcelain", "--untracked-files=no") else ""
    )
    versions = [baseline(args.baseline, args.work), Version(label=f"after ({head})", revision=head, pythonpath=None)]
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    print(f"{cpu} · {os.cpu_count()} cores · python {platform.python_version()} · torch {torch.__version__}")
    print(f"load average at start: {os.getloadavg()}")
    print(
        f"tar shards of 16 px PNGs; K={args.clusters}, pixel features, sampleSize {args.sample_size};"
        f" tiny expert and router, {args.steps} steps of batch {args.batch}, {args.threads} torch thread(s)"
    )
    results: list[Measurement] = []
    for scale in args.scales:
        n = args.base * scale
        started = time.perf_counter()
        images = write_images(args.work / "data" / f"images-{n}", n)
        print(f"{n} examples ({scale}×) ready in {time.perf_counter() - started:.1f} s", flush=True)
        for version in versions:
            results.extend(measure(version, images, n, args))
    print(f"load average at end: {os.getloadavg()}")
    print()
    print(
        "| stage | examples | peak RSS before (MiB) | peak RSS after (MiB) | wall before (s) | wall after (s) |"
        " samples/s before | samples/s after | after / before speed |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    before, after = versions[0].label, versions[1].label
    for stage in args.stages:
        for scale in args.scales:
            n = args.base * scale
            row = {m.version: m for m in results if m.stage == stage and m.examples == n}
            b, a = row[before], row[after]
            ratio = (
                a.samples_per_second / b.samples_per_second if a.samples_per_second and b.samples_per_second else 0.0
            )
            print(
                f"| {stage} | {n} ({scale}×) | {b.peak_rss_mib:.0f} | {a.peak_rss_mib:.0f} | {b.seconds:.1f} |"
                f" {a.seconds:.1f} | {b.samples_per_second or 0:.1f} | {a.samples_per_second or 0:.1f} | {ratio:.2f} |"
            )


if __name__ == "__main__":
    main()
