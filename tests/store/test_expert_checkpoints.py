"""A real expert's checkpoints in MinIO: round trip, exact resume after a crash, fallback past
a corrupted newest checkpoint, and training through a MinIO outage (tiny preset, in-process)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch

from atoll import layout
from atoll.api.load import load_spec_json
from atoll.store import Store, open_store
from atoll.store.checkpoint import CheckpointStore
from atoll.trainer.context import StageContext
from atoll.trainer.stages import expert
from atoll.trainer.training.loop import TrainResult
from atoll.trainer.training.runner import run_training
from tests.env.minio import MinioServer
from tests.trainer.training.synthetic import synthetic_spec, write_synthetic_run

pytestmark = pytest.mark.minio

SPEC = synthetic_spec(steps=8, checkpoint_every=2, global_batch=8)


class CrashError(Exception):
    """Stands in for the pod being killed after a step."""


def train_expert(store: Store, **kwargs: object) -> TrainResult | None:
    spec = load_spec_json(store.get_bytes(layout.SPEC))
    return run_training(expert.expert_job(StageContext(spec=spec, store=store, expert=0)), store, **kwargs)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> list[float]:
    """The loss curve of the same expert trained without interruption (local store)."""
    store = open_store(str(tmp_path_factory.mktemp("reference")))
    write_synthetic_run(store, spec=SPEC)
    result = train_expert(store)
    assert result is not None
    return result.losses


@pytest.fixture
def run_store(minio_bucket: str, s3_env: dict[str, str]) -> Store:
    store = open_store(f"s3://{minio_bucket}/runs/expert-test")
    write_synthetic_run(store, spec=SPEC)
    return store


def crash_at(step: int):  # type: ignore[no-untyped-def]
    def hook(done: int, loss: float) -> None:
        if done == step:
            raise CrashError(f"killed after step {done}")

    return hook


def test_expert_checkpoint_round_trip_and_exact_resume(
    run_store: Store, uninterrupted: list[float], tmp_path: Path
) -> None:
    with pytest.raises(CrashError):
        train_expert(run_store, on_step=crash_at(5))
    checkpoints = CheckpointStore(run_store, layout.expert(0), read_only=True)
    assert [c.step for c in checkpoints.list()] == [2, 4]
    newest = checkpoints.latest()
    assert newest is not None
    restored = checkpoints.restore(newest, tmp_path / "restored")
    assert sorted(p.relative_to(restored).as_posix() for p in restored.rglob("*") if p.is_file()) == sorted(
        newest.files
    )
    assert newest.metadata["final"] is False

    resumed = train_expert(run_store)
    assert resumed is not None
    assert resumed.start_step == 4
    torch.testing.assert_close(resumed.losses, uninterrupted[4:], rtol=1e-6, atol=1e-7)
    final = checkpoints.latest()
    assert final is not None
    assert (final.step, final.attempt, final.metadata["final"]) == (8, 2, True)


def test_resume_falls_back_past_a_flipped_byte(run_store: Store, uninterrupted: list[float]) -> None:
    with pytest.raises(CrashError):
        train_expert(run_store, on_step=crash_at(5))
    checkpoints = CheckpointStore(run_store, layout.expert(0), read_only=True)
    newest = checkpoints.list()[-1]
    assert newest.step == 4
    biggest = max(newest.files.values(), key=lambda f: f.size)
    data = bytearray(run_store.get_bytes(biggest.key))
    data[len(data) // 2] ^= 0x10
    run_store.put_bytes(biggest.key, bytes(data))

    resumed = train_expert(run_store)
    assert resumed is not None
    assert resumed.start_step == 2, "the corrupt step-4 checkpoint must be skipped"
    torch.testing.assert_close(resumed.losses, uninterrupted[2:], rtol=1e-6, atol=1e-7)


def test_training_continues_through_a_minio_outage(
    run_store: Store, uninterrupted: list[float], minio: MinioServer
) -> None:
    """MinIO is killed right after the step-4 checkpoint was handed to the uploader and comes
    back a moment later: the upload is retried, training never stops, nothing is lost."""
    restarted = threading.Event()

    def outage(done: int, loss: float) -> None:
        if done == 4:
            minio.kill()
            timer = threading.Timer(1.5, lambda: (minio.start(), restarted.set()))
            timer.start()

    result = train_expert(run_store, on_step=outage)
    assert restarted.wait(timeout=120)
    assert result is not None
    torch.testing.assert_close(result.losses, uninterrupted, rtol=1e-6, atol=1e-7)
    checkpoints = CheckpointStore(run_store, layout.expert(0), read_only=True)
    assert [c.step for c in checkpoints.list()] == [4, 6, 8]  # retention: the last 3
    final = checkpoints.latest()
    assert final is not None
    assert final.step == 8
