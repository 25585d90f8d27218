"""Training stall per checkpoint with asynchronous upload, on the real expert training loop.

    .venv/bin/python bench/checkpoint_stall.py [--preset tiny] [--steps 60] [--every 10] [--store s3|local]

Trains expert 0 of a synthetic run (tests/trainer/training/synthetic.py) with the shared
loop, committing every `--every` steps through the CheckpointStore to MinIO (started here
unless MINIO_ENDPOINT is set) or a local directory. The training thread's checkpoint call
(staging model/EMA/optimizer files locally + CheckpointStore.commit) is timed directly:
  * stall per checkpoint: time the training thread spent in that call, against the
    measured wall time between two checkpoints (goal: ≤ 5 %);
  * commit() blocked: the part of it spent waiting for the previous upload (backpressure);
  * upload: how long the background upload took (training ran meanwhile).
A run without checkpoints is timed too, after an untimed warm-up run (whole-run overhead,
which also counts the CPU the background upload takes from training; noisy on a shared
machine).
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.store_upload import minio_env  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--every", type=int, default=10, help="checkpointEvery")
    parser.add_argument("--batch", type=int, default=64, help="global batch size")
    parser.add_argument("--store", choices=["s3", "local"], default="s3")
    args = parser.parse_args()

    import torch

    from atoll.store import CheckpointStore, open_store
    from atoll.trainer.context import StageContext
    from atoll.trainer.stages.expert import expert_job
    from atoll.trainer.training import loop as loop_module
    from atoll.trainer.training.loop import train
    from tests.trainer.training.synthetic import write_synthetic_run

    torch.set_num_threads(max(1, (os.cpu_count() or 2) - 1))
    with minio_env() as _env, tempfile.TemporaryDirectory(prefix="atoll-bench-") as tmp:
        uri = f"s3://bench-{uuid.uuid4().hex[:10]}/runs/stall" if args.store == "s3" else f"{tmp}/store"
        store = open_store(uri)
        spec = write_synthetic_run(
            store,
            sizes=(512, 512),
            steps=args.steps,
            checkpoint_every=args.every,
            global_batch=args.batch,
            expert={"preset": args.preset},
        )
        job = expert_job(StageContext(spec=spec, store=store, expert=0))
        task = job.make_task(store)

        calls: list[tuple[float, float]] = []  # (start, seconds) of every checkpoint call
        original = loop_module._Loop._checkpoint

        def timed_checkpoint(self: Any, step: int, loss: float, *, final: bool) -> None:
            started = time.perf_counter()
            original(self, step, loss, final=final)
            calls.append((started, time.perf_counter() - started))

        loop_module._Loop._checkpoint = timed_checkpoint  # type: ignore[method-assign]

        def timed_run(checkpoints: CheckpointStore | None) -> float:
            started = time.perf_counter()
            train(task, job.settings, checkpoints=checkpoints)
            if checkpoints is not None:
                checkpoints.close()
            return time.perf_counter() - started

        timed_run(None)  # warm-up: the first run pays for allocator, thread pool and data caches
        plain_total = timed_run(None)
        calls.clear()
        checkpoints = CheckpointStore(store, job.prefix, retention=job.retention)
        ckpt_total = timed_run(checkpoints)

        stalls = [seconds for _, seconds in calls]
        intervals = [b[0] - a[0] for a, b in itertools.pairwise(calls)]
        commits = checkpoints.stats.commits
        size = commits[0].bytes if commits else 0
        print(
            f"preset {args.preset}, {args.steps} steps, checkpoint every {args.every}, global batch {args.batch}, "
            f"store {args.store}, checkpoint {size / 1e6:.2f} MB in {commits[0].files if commits else 0} files, "
            f"torch {torch.__version__}"
        )
        print(f"time between checkpoints (median)  {statistics.median(intervals):8.2f} s")
        print(
            f"stall per checkpoint (median)      {statistics.median(stalls) * 1e3:8.1f} ms  "
            f"(max {max(stalls) * 1e3:.1f} ms, {len(stalls)} checkpoints)"
        )
        print(f"  of which commit() blocked        {statistics.median(c.stall_seconds for c in commits) * 1e3:8.2f} ms")
        print(
            f"background upload (median)         {statistics.median(c.upload_seconds for c in commits) * 1e3:8.1f} ms"
        )
        fraction = statistics.median(stalls) / statistics.median(intervals)
        print(f"stall / time between checkpoints   {fraction * 100:8.2f} %  (goal <= 5 %)")
        print(
            f"whole run: {plain_total:.1f} s without checkpoints, {ckpt_total:.1f} s with "
            f"({(ckpt_total - plain_total) / plain_total * 100:+.1f} %, final flush included)"
        )


if __name__ == "__main__":
    main()
