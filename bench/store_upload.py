"""Checkpoint upload throughput: CheckpointStore.commit + flush against a raw `fput_object`
of the same files with a default `minio` client, in the same run, on the same MinIO.

    .venv/bin/python bench/store_upload.py [--mb 300] [--repeats 3]

Uses MINIO_ENDPOINT / MINIO_ACCESS_KEY / MINIO_SECRET_KEY when set, otherwise starts the
pinned test MinIO (tests/env) on loopback. Prints MB/s of both and their ratio (goal ≥ 0.8).
The checkpoint path includes everything a real commit does: fence checks, sha256 of every
file, manifest, cleanup. Runs alternate the order so page-cache and disk effects even out.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from minio import Minio  # noqa: E402

from atoll.store import CheckpointStore, open_store  # noqa: E402

SHARES = {"model.safetensors": 0.4, "ema.safetensors": 0.4, "optimizer.pt": 0.2 - 1e-6, "state.json": 1e-6}


@contextmanager
def minio_env() -> Iterator[dict[str, str]]:
    """The MINIO_* variables of an existing server, or of a scratch one started here."""
    if os.environ.get("MINIO_ENDPOINT"):
        yield {k: os.environ[k] for k in ("MINIO_ENDPOINT", "MINIO_ACCESS_KEY", "MINIO_SECRET_KEY")}
        return
    from tests.env.minio import MinioServer

    with MinioServer() as server:
        os.environ.update(server.env())
        yield server.env()


def make_checkpoint(directory: Path, total_mb: int) -> int:
    directory.mkdir(parents=True)
    total = 0
    for name, share in SHARES.items():
        size = max(2, int(total_mb * share * 1e6))
        with (directory / name).open("wb") as handle:
            for start in range(0, size, 8 << 20):
                handle.write(os.urandom(min(8 << 20, size - start)))
        total += size
    return total


def raw_upload(client: Any, bucket: str, source: Path, run: int) -> tuple[float, float]:
    """(wall seconds, client CPU seconds) of fput_object of every file."""
    os.sync()  # no writeback of earlier copies competing with the timed upload
    started, cpu = time.perf_counter(), time.process_time()
    for path in sorted(source.iterdir()):
        client.fput_object(bucket, f"raw/{run}/{path.name}", str(path))
    return time.perf_counter() - started, time.process_time() - cpu


def checkpoint_upload(checkpoints: CheckpointStore, source: Path, step: int, scratch: Path) -> tuple[float, float]:
    """(wall seconds, client CPU seconds) of commit + flush."""
    staged = scratch / f"staged-{step}"
    shutil.copytree(source, staged)  # commit() takes the directory; copy outside the timing
    os.sync()
    started, cpu = time.perf_counter(), time.process_time()
    checkpoints.commit(step, staged)
    checkpoints.flush()
    return time.perf_counter() - started, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, default=300, help="checkpoint size in MB (default 300)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with minio_env() as env, tempfile.TemporaryDirectory(prefix="atoll-bench-") as tmp:
        scratch = Path(tmp)
        source = scratch / "checkpoint"
        total = make_checkpoint(source, args.mb)
        bucket = f"bench-{uuid.uuid4().hex[:10]}"
        client = Minio(env["MINIO_ENDPOINT"], env["MINIO_ACCESS_KEY"], env["MINIO_SECRET_KEY"], secure=False)
        client.make_bucket(bucket)
        store = open_store(f"s3://{bucket}/runs/bench")
        checkpoints = CheckpointStore(store, "experts/0")
        raw_runs: list[tuple[float, float]] = []
        checkpoint_runs: list[tuple[float, float]] = []
        for run in range(args.repeats):
            if run % 2 == 0:
                raw_runs.append(raw_upload(client, bucket, source, run))
                checkpoint_runs.append(checkpoint_upload(checkpoints, source, run + 1, scratch))
            else:
                checkpoint_runs.append(checkpoint_upload(checkpoints, source, run + 1, scratch))
                raw_runs.append(raw_upload(client, bucket, source, run))
            print(
                f"run {run}: raw fput_object {total / raw_runs[-1][0] / 1e6:7.1f} MB/s   "
                f"checkpoint commit {total / checkpoint_runs[-1][0] / 1e6:7.1f} MB/s",
                flush=True,
            )
        checkpoints.close()
        latest = checkpoints.latest()
        if latest is None or latest.step != args.repeats:
            raise SystemExit(f"the last checkpoint did not verify: {latest}")
        raw = statistics.median(wall for wall, _ in raw_runs)
        ours = statistics.median(wall for wall, _ in checkpoint_runs)
        raw_cpu = statistics.median(cpu for _, cpu in raw_runs)
        ours_cpu = statistics.median(cpu for _, cpu in checkpoint_runs)
        print(f"checkpoint: {total / 1e6:.0f} MB in {len(SHARES)} files, {args.repeats} runs, medians")
        print(f"raw fput_object   {total / raw / 1e6:7.1f} MB/s  ({raw:.2f} s, client CPU {raw_cpu:.2f} s)")
        print(f"CheckpointStore   {total / ours / 1e6:7.1f} MB/s  ({ours:.2f} s, client CPU {ours_cpu:.2f} s)")
        print(f"ratio             {raw / ours:7.2f}  (goal >= 0.8)")
        for obj in client.list_objects(bucket, recursive=True):
            client.remove_object(bucket, obj.object_name)
        client.remove_bucket(bucket)


if __name__ == "__main__":
    main()
