"""Overhead of the full expert training loop over a bare forward/backward/optimizer step.

    .venv/bin/python bench/expert_loop.py [--preset tiny] [--steps 60] [--batch 64] [--micro-batch M]
                                          [--side 16] [--channels 3] [--every 20] [--rounds 2]

Both run the same PixArt expert on the same batch size in the same process:
  * bare: forward, flow-matching MSE, backward, AdamW.step on one fixed batch already in
    memory — nothing else;
  * loop: the real stage path, `run_training` on expert 0 of a synthetic run in a local
    store: data order, per-example noise, caption dropout, accumulation (with
    --micro-batch), autocast context, gradient clipping, EMA, warm-up schedule, heartbeat
    thread, checkpoints staged and committed asynchronously every --every steps.
Rounds alternate bare and loop so that load drift on a shared machine hits both. Reported:
the median step (steady state) and the mean step (checkpoint steps included, i.e. the
amortised cost at this checkpoint interval), each as a ratio loop / bare, in wall time and
in CPU time of the whole process (every thread: the heartbeat and upload threads count
against the loop). On a machine shared with other work the CPU-time ratio is the stable
one; use --threads 1 there, since idle OpenMP threads spin and bill CPU time under
contention. Goal ≤ 1.10. The first 3 steps of every run are warm-up and not counted.
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

WARMUP = 3


Clocks = list[tuple[float, float]]
"""(wall, CPU) seconds per step."""


def _clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _deltas(marks: list[tuple[float, float]]) -> Clocks:
    return [(b[0] - a[0], b[1] - a[1]) for a, b in itertools.pairwise(marks)]


def bare_steps(
    preset: str, *, steps: int, batch: int, micro: int, latent: tuple[int, int, int], text: tuple[int, int]
) -> Clocks:
    """Per-step seconds of forward/backward (per micro-batch) and AdamW.step on one fixed batch."""
    import torch

    from atoll.api.presets import PRESETS
    from atoll.trainer import flow
    from atoll.trainer.models.expert import build_expert, velocity

    model = build_expert(preset, latent_shape=latent, text_dim=text[1], seed=0).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=PRESETS[preset].recipe.learning_rate, foreach=True)
    generator = torch.Generator().manual_seed(0)
    x0 = torch.randn(batch, *latent, generator=generator)
    noise = torch.randn(batch, *latent, generator=generator)
    sigma = torch.rand(batch, generator=generator)
    caption = torch.randn(batch, *text, generator=generator)
    mask = torch.ones(batch, text[0], dtype=torch.bool)
    x_t = flow.add_noise(x0, noise, sigma)
    marks = [_clock()]
    for _ in range(steps):
        for start in range(0, batch, micro):
            part = slice(start, start + micro)
            prediction = velocity(model, x_t[part], sigma[part], caption[part], mask[part])
            loss = flow.flow_matching_loss(prediction, x0[part], noise[part]).sum() / batch
            loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        marks.append(_clock())
    return _deltas(marks)[WARMUP:]


def loop_steps(
    preset: str,
    *,
    steps: int,
    batch: int,
    micro_batch: int | None,
    every: int,
    latent: tuple[int, int, int],
    text: tuple[int, int],
    workdir: Path,
) -> tuple[Clocks, int]:
    """Per-step seconds of the real stage path (run_training), and the checkpoint size in bytes."""
    from atoll.store import LocalStore
    from atoll.store.checkpoint import CheckpointStore
    from atoll.trainer.context import StageContext
    from atoll.trainer.stages.expert import expert_job
    from atoll.trainer.training.runner import run_training
    from tests.trainer.training.synthetic import write_synthetic_run

    store = LocalStore(tempfile.mkdtemp(dir=workdir))
    spec = write_synthetic_run(
        store,
        sizes=(max(4 * batch, 256), 64),
        shard_size=1024,
        latent_shape=latent,
        text_shape=text,
        steps=steps,
        checkpoint_every=every,
        global_batch=batch,
        expert={"preset": preset, "learningRate": None, "warmupSteps": None},
    )
    job = expert_job(StageContext(spec=spec, store=store, expert=0, micro_batch=micro_batch))
    marks: list[tuple[float, float]] = []
    result = run_training(job, store, on_step=lambda step, loss: marks.append(_clock()))
    assert result is not None
    checkpoint = CheckpointStore(store, job.prefix, read_only=True).latest()
    # marks[i] is taken after step i + 1, so deltas[j] is the duration of step j + 2.
    return _deltas(marks)[WARMUP - 1 :], checkpoint.size if checkpoint is not None else 0


def is_checkpoint_step(index: int, every: int) -> bool:
    """Whether loop_steps' index-th duration is a step that staged and committed a checkpoint."""
    return (index + WARMUP + 1) % every == 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch", type=int, default=64, help="global batch size")
    parser.add_argument("--micro-batch", type=int, default=None, help="micro-batch (accumulation = batch / micro)")
    parser.add_argument("--side", type=int, default=16, help="latent side")
    parser.add_argument("--channels", type=int, default=3, help="latent channels")
    parser.add_argument("--text", type=int, nargs=2, default=(16, 64), metavar=("L", "D"), help="caption shape")
    parser.add_argument("--every", type=int, default=20, help="checkpointEvery")
    parser.add_argument("--rounds", type=int, default=2, help="alternating bare/loop rounds")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: the cores available)")
    args = parser.parse_args()
    if args.threads is not None:
        os.environ["ATOLL_TORCH_THREADS"] = str(args.threads)  # what the loop's configure_threads honours

    import diffusers
    import torch

    from atoll.api.presets import PRESETS
    from atoll.trainer.training.distributed import configure_threads

    threads = configure_threads(1)
    latent = (args.channels, args.side, args.side)
    text = (args.text[0], args.text[1])
    load_before = os.getloadavg()[0]
    micro = args.micro_batch or args.batch
    bare: Clocks = []
    bare_split: Clocks = []
    loop: Clocks = []
    checkpoint_flags: list[bool] = []
    size = 0
    with tempfile.TemporaryDirectory(prefix="atoll-bench-loop-") as tmp:
        for _ in range(args.rounds):
            bare += bare_steps(
                args.preset, steps=args.steps, batch=args.batch, micro=args.batch, latent=latent, text=text
            )
            if micro != args.batch:
                bare_split += bare_steps(
                    args.preset, steps=args.steps, batch=args.batch, micro=micro, latent=latent, text=text
                )
            times, size = loop_steps(
                args.preset,
                steps=args.steps,
                batch=args.batch,
                micro_batch=args.micro_batch,
                every=args.every,
                latent=latent,
                text=text,
                workdir=Path(tmp),
            )
            loop += times
            checkpoint_flags += [is_checkpoint_step(i, args.every) for i in range(len(times))]
    print(
        f"preset {args.preset}: batch {args.batch} = micro-batch {micro} × accumulation {args.batch // micro},"
        f" latents {list(latent)}, captions {list(text)}, checkpoint every {args.every} steps"
        f" ({size / 1e6:.1f} MB), {args.rounds} rounds × {args.steps} steps"
    )
    print(
        f"python {platform.python_version()}, torch {torch.__version__}, diffusers {diffusers.__version__},"
        f" {threads} torch threads, {platform.processor() or platform.machine()}"
    )
    print(f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after")
    baselines = [("bare, whole batch", bare)]
    if bare_split:
        baselines.append((f"bare, {micro} × {args.batch // micro}", bare_split))
    report(loop, checkpoint_flags, baselines, checkpoint_every=PRESETS[args.preset].recipe.checkpoint_every)


def report(
    loop: Clocks, checkpoint_flags: list[bool], baselines: list[tuple[str, Clocks]], *, checkpoint_every: int
) -> None:
    """Print loop / bare ratios per clock, and the checkpoint steps' extra cost amortised at the
    preset's default checkpoint interval."""
    bare = baselines[0][1]
    for clock, name in ((0, "wall"), (1, "CPU")):
        lp = [t[clock] for t in loop]
        print(
            f"{name} time: loop median {statistics.median(lp) * 1e3:.1f} ms, mean {statistics.fmean(lp) * 1e3:.1f} ms"
        )
        for label, runs in baselines:
            b = [t[clock] for t in runs]
            print(
                f"  vs {label}: median {statistics.median(b) * 1e3:.1f} ms, mean {statistics.fmean(b) * 1e3:.1f} ms"
                f" -> ratio median {statistics.median(lp) / statistics.median(b):.3f},"
                f" mean {statistics.fmean(lp) / statistics.fmean(b):.3f}"
            )
        plain = [t for t, flag in zip(lp, checkpoint_flags, strict=True) if not flag]
        staged = [t for t, flag in zip(lp, checkpoint_flags, strict=True) if flag]
        if staged and plain:
            extra = statistics.median(staged) - statistics.median(plain)
            amortised = (statistics.median(plain) + extra / checkpoint_every) / statistics.median(
                [t[clock] for t in bare]
            )
            print(
                f"  checkpoint step costs {extra * 1e3:.1f} ms more ({len(staged)} checkpoint steps);"
                f" at the preset's checkpointEvery {checkpoint_every}: ratio {amortised:.3f}"
            )
    print("goal: ratio <= 1.10 (mean includes the checkpoint steps)")


if __name__ == "__main__":
    main()
