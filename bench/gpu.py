"""The trainer on one GPU, in one command: samples/s, MFU, peak memory and compile on/off of the
real expert and router loops, a torchrun/DDP run of the stage and the NVML agent's readings.

    .venv/bin/python bench/gpu.py [--out build/bench/gpu.json] [--budget-seconds 390]

Made for one H100/H200 and at most 8 minutes. Cases, each in a process of its own (clean
compile caches and memory peaks), most important first: the expert loop of dit-b/2, dit-s/2
and dit-l/2 (and the largest video preset that fits, once video presets exist), each with
torch.compile off and on, then the router (dit-b/2, as in Paris) the same way. Every case
trains on 256 px latents [4, 32, 32] with 77 × 768 captions (the planner's workload), the
preset's recipe batch (256) split as the planner splits it for this GPU's memory, bf16
autocast, SDPA attention, fused AdamW, EMA and a checkpoint half-way (bench/gpu_case.py has
what each case measures). Before the cases: `atoll agent --once --print` (what the NVML agent
would publish on its Node) and a 1-process `torchrun` run of the expert stage (NCCL,
DistributedDataParallel). The JSON is rewritten after every case, so a run cut short keeps
what it measured; cases not started within --budget-seconds are listed as skipped.

MFU = counted FLOPs per sample (torch.utils.flop_counter) × steady samples/s ÷ the GPU's dense
bf16 peak from the planner's catalogue (or --peak-tflops). `atoll calibrate OUT.json` turns
the result into the planner's speed table. On a CPU (`--device cpu`: the test does this with
the tiny preset) every case runs in this process and MFU needs --peak-tflops.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SCHEMA = "atoll-gpu-bench/v1"
MIB = 1024**2


def main() -> int:
    args = parse_args()
    if args.case:
        return run_one(args)
    import torch

    from atoll.api.presets import PRESETS
    from bench.gpu_case import Case

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    started = time.monotonic()
    environment = describe_environment(device)
    peak = args.peak_tflops or environment.get("bf16PeakTflops")
    report: dict[str, Any] = {
        "schema": SCHEMA,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "environment": environment,
        "peakTflops": peak,
        "agent": None,
        "ddpSmoke": None,
        "runs": [],
        "skipped": [],
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write(out, report)
    report["agent"] = agent_once()
    write(out, report)
    report["ddpSmoke"] = ddp_smoke(args, device)
    write(out, report)
    memory_mib = environment.get("memoryMiB")
    cases = []
    for model, presets in (("expert", [*args.presets, *video_presets(args, memory_mib)]), ("router", args.router)):
        for preset in presets:
            video = PRESETS[preset].architecture.family == "wan"
            for compiled in args.compile:
                cases.append(
                    Case(
                        model=model,  # type: ignore[arg-type]
                        preset=preset,
                        compile=compiled,
                        latent=tuple(args.clip if video else args.latent),
                        text=(args.text[0], args.text[1]),
                        warmup=args.warmup,
                        steps=args.steps,
                        batch=args.batch,
                        peak_tflops=peak,
                    )
                )
    in_process = args.in_process or device == "cpu"
    for case in cases:
        elapsed = time.monotonic() - started
        if elapsed > args.budget_seconds:
            report["skipped"].append({"case": case.describe(), "reason": f"over the {args.budget_seconds} s budget"})
            write(out, report)
            continue
        print(f"[{elapsed:5.0f} s] {case.describe()}", file=sys.stderr, flush=True)
        if in_process:
            record = measure_in_process(case, device)
        else:
            record = measure_in_subprocess(case, timeout=max(60.0, args.budget_seconds + 120 - elapsed))
        report["runs"].append(record)
        write(out, report)
        print(summary(record), file=sys.stderr, flush=True)
    report["seconds"] = time.monotonic() - started
    write(out, report)
    print(f"wrote {out} in {report['seconds']:.0f} s", file=sys.stderr)
    return 0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "build" / "bench" / "gpu.json"), help="the JSON to write")
    parser.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    parser.add_argument("--presets", type=_names, default=["dit-b/2", "dit-s/2", "dit-l/2"], help="expert presets")
    parser.add_argument("--router", type=_names, default=["dit-b/2"], help="router presets")
    parser.add_argument(
        "--video",
        default="auto",
        help="video expert presets, none, or auto: the largest wan preset whose planner estimate fits this GPU",
    )
    parser.add_argument("--compile", type=_switches, default=[False, True], help="off,on (default both)")
    parser.add_argument("--latent", type=int, nargs=3, default=(4, 32, 32), metavar=("C", "H", "W"))
    parser.add_argument("--clip", type=int, nargs=4, default=(16, 5, 32, 32), metavar=("C", "T", "H", "W"))
    parser.add_argument("--text", type=int, nargs=2, default=(77, 768), metavar=("L", "D"), help="caption shape")
    parser.add_argument("--batch", type=int, default=None, help="global batch (default: the preset's recipe)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per case (compilation happens here)")
    parser.add_argument("--steps", type=int, default=8, help="timed steps before and after the mid-run checkpoint")
    parser.add_argument("--peak-tflops", type=float, default=None, help="peak for MFU (default: the catalogue's)")
    parser.add_argument("--budget-seconds", type=float, default=390.0, help="start no case after this")
    parser.add_argument("--smoke-preset", default=None, help="preset of the torchrun run (default: the first)")
    parser.add_argument("--smoke-steps", type=int, default=6)
    parser.add_argument("--in-process", action="store_true", help="run cases in this process (always on a CPU)")
    parser.add_argument("--case", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.warmup < 1 or args.steps < 2:
        parser.error("--warmup must be at least 1 and --steps at least 2")
    return args


def _names(text: str) -> list[str]:
    """Comma-separated names; `none` for none."""
    return [] if text.strip() == "none" else [name.strip() for name in text.split(",") if name.strip()]


def _switches(text: str) -> list[bool]:
    values = {"off": False, "on": True}
    try:
        return [values[item] for item in _names(text)]
    except KeyError:
        raise argparse.ArgumentTypeError(f"expected off, on or off,on; got {text!r}") from None


def video_presets(args: argparse.Namespace, memory_mib: int | None) -> list[str]:
    """The video expert presets to measure: as given, or (auto) the largest wan preset whose planner
    memory estimate fits this GPU at its recipe batch. None exist on builds without video presets."""
    from atoll.api.presets import PRESETS
    from atoll.operator.placement.workload import Workload

    if args.video != "auto":
        return _names(args.video)
    fitting = []
    for name, preset in PRESETS.items():
        if preset.architecture.family != "wan":
            continue
        workload = Workload(
            preset=preset, latent_shape=tuple(args.clip), text_tokens=args.text[0], text_dim=args.text[1]
        )
        batch = args.batch or preset.recipe.global_batch_size
        if memory_mib is None or workload.split_batch(batch, 1, memory_mib, bf16=True) is not None:
            fitting.append((workload.parameters, name))
    return [max(fitting)[1]] if fitting else []


def describe_environment(device: str) -> dict[str, Any]:
    """Versions and the device, read without creating a CUDA context (NVML for the GPU)."""
    import diffusers
    import torch

    from atoll.operator.placement.gpus import canonical_product, lookup

    env: dict[str, Any] = {
        "device": device,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "diffusers": diffusers.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpuCores": os.cpu_count(),
    }
    if device != "cuda":
        return env
    try:
        nccl = torch.cuda.nccl.version()
        env["nccl"] = ".".join(str(v) for v in nccl) if isinstance(nccl, tuple) else str(nccl)
    except Exception as error:  # a build without NCCL: the torchrun run says more
        env["nccl"] = f"unavailable: {error}"
    env["cudnn"] = torch.backends.cudnn.version()
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        name = pynvml.nvmlDeviceGetName(handle)
        env.update(
            gpu=name.decode() if isinstance(name, bytes) else name,
            driver=_text(pynvml.nvmlSystemGetDriverVersion()),
            memoryMiB=int(pynvml.nvmlDeviceGetMemoryInfo(handle).total) // MIB,
            gpus=pynvml.nvmlDeviceGetCount(),
        )
        pynvml.nvmlShutdown()
    except Exception as error:  # NVML missing: fall back to torch (creates a context in this process)
        env["nvmlError"] = str(error)
        props = torch.cuda.get_device_properties(0)
        env.update(gpu=props.name, memoryMiB=props.total_memory // MIB, gpus=torch.cuda.device_count())
    env["product"] = canonical_product(env["gpu"])
    entry = lookup(env["product"])
    if entry is not None:
        env.update(catalogue=entry.key, bf16PeakTflops=entry.bf16_tflops)
        env["peakSource"] = f"dense bf16 TFLOP/s of {entry.key} in atoll.operator.placement.gpus"
    return env


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def agent_once() -> dict[str, Any]:
    """What the NVML node agent would publish on this node's annotations, read once."""
    command = [sys.executable, "-m", "atoll", "agent", "--once", "--print"]
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False, cwd=ROOT)
    out: dict[str, Any] = {"command": "atoll agent --once --print", "returncode": done.returncode}
    out["seconds"] = time.monotonic() - started
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    out["annotations"] = json.loads(lines[-1]) if lines else None
    out["stderr"] = done.stderr.strip().splitlines()[-3:]
    return out


def ddp_smoke(args: argparse.Namespace, device: str) -> dict[str, Any]:
    """`torchrun --nproc_per_node 1 -m atoll.trainer expert …` on a synthetic run: the stage joins
    torchrun's process group (NCCL on a GPU, gloo on a CPU) and trains under DistributedDataParallel."""
    from atoll import layout
    from atoll.store import LocalStore
    from atoll.store.checkpoint import CheckpointStore
    from atoll.trainer.heartbeat import read_progress
    from tests.trainer.training.synthetic import synthetic_spec, write_synthetic_run

    preset = args.smoke_preset or args.presets[0]
    steps = args.smoke_steps
    with tempfile.TemporaryDirectory(prefix="atoll-bench-ddp-") as tmp:
        store = LocalStore(Path(tmp) / "run")
        expert = {"preset": preset, "learningRate": None, "warmupSteps": None}
        batch = args.batch or 16
        spec = synthetic_spec(steps=steps, checkpoint_every=max(1, steps // 2), global_batch=batch, expert=expert)
        write_synthetic_run(
            store, spec=spec, sizes=(2 * batch, batch), latent_shape=tuple(args.latent), text_shape=tuple(args.text)
        )
        command = [
            *(sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1"),
            # "--" ends torchrun's own options: it would otherwise read the stage's --run as its --run-path.
            *(
                "-m",
                "--",
                "atoll.trainer",
                "expert",
                "--run",
                str(store.root / layout.SPEC),
                "--store",
                str(store.root),
            ),
            *("--expert", "0", "--gpus", "1"),
        ]
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES", "0")}
        if device == "cpu":
            env["CUDA_VISIBLE_DEVICES"] = ""
        started = time.monotonic()
        done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False, cwd=ROOT, env=env)
        final = CheckpointStore(store, layout.expert(0), read_only=True).latest()
        progress = read_progress(store, "expert", 0)
        logged = [line for line in done.stderr.splitlines() if "DistributedDataParallel" in line]
        return {
            "command": "torchrun --standalone --nproc_per_node 1 -m atoll.trainer expert … --expert 0 --gpus 1",
            "preset": preset,
            "steps": steps,
            "returncode": done.returncode,
            "seconds": time.monotonic() - started,
            "distributedDataParallel": logged[-1].strip() if logged else None,
            "finalCheckpointStep": final.step if final is not None else None,
            "progress": progress.model_dump(mode="json", by_alias=True) if progress is not None else None,
            "stderr": done.stderr.strip().splitlines()[-5:],
        }


def measure_in_process(case: Any, device: str) -> dict[str, Any]:
    import torch

    from bench.gpu_case import run_case

    try:
        return run_case(case, torch.device(device))
    except Exception as error:
        return {**asdict(case), "error": f"{type(error).__name__}: {error}"}


def measure_in_subprocess(case: Any, *, timeout: float) -> dict[str, Any]:
    command = [sys.executable, str(Path(__file__).resolve()), "--case", json.dumps(asdict(case))]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {**asdict(case), "error": f"timed out after {timeout:.0f} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = " | ".join(done.stderr.strip().splitlines()[-6:])
        return {**asdict(case), "error": f"exit {done.returncode}: {tail}"}
    record: dict[str, Any] = json.loads(lines[-1])
    return record


def run_one(args: argparse.Namespace) -> int:
    """--case: measure one case on the GPU in this (fresh) process and print its record."""
    import torch

    from bench.gpu_case import Case

    fields = json.loads(args.case)
    fields["latent"], fields["text"] = tuple(fields["latent"]), tuple(fields["text"])
    case = Case(**fields)
    record = measure_in_process(case, "cuda" if torch.cuda.is_available() else "cpu")
    print(json.dumps(record))
    return 0


def summary(record: dict[str, Any]) -> str:
    if record.get("error"):
        return f"    error: {record['error']}"
    sps = record["samplesPerSecond"]["steady"]
    mfu = record.get("mfu")
    memory = record["memory"]
    parts = [
        f"    {sps:.1f} samples/s",
        f"MFU {mfu:.3f}" if mfu is not None else "MFU n/a",
        f"loop/bare {record['loopOverBare']:.3f}",
        f"micro-batch {record['microBatch']} × {record['gradAccum']}",
    ]
    if memory.get("measuredBytes") is not None:
        parts.append(
            f"memory {memory['measuredBytes'] / 2**30:.1f} GiB vs planner {memory['plannerBytes'] / 2**30:.1f}"
        )
    return ", ".join(parts)


def write(path: Path, report: dict[str, Any]) -> None:
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(report, indent=2) + "\n")
    partial.replace(path)


if __name__ == "__main__":
    sys.exit(main())
