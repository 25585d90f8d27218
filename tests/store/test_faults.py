"""MinIO dies in the middle of a checkpoint upload: no valid-looking partial checkpoint ever
appears, and once the server is back the upload completes and training goes on."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import pytest

from atoll import layout
from atoll.api.spec import RetentionSpec
from atoll.store import CheckpointStore, Store, StoreUnavailableError, open_store
from atoll.store import s3 as s3_module
from atoll.store.s3 import S3Store
from tests.env.minio import MinioServer

pytestmark = pytest.mark.minio

STAGE = "experts/1"
PART = 5 << 20  # the smallest multipart part S3 allows: a 12 MiB file is 3 parts


class Outage:
    """Kills MinIO (SIGKILL) once the uploader has read `after` bytes of the `nth` file it
    uploads after being armed: in the middle of that file's multipart upload."""

    def __init__(self, minio: MinioServer, after: int, nth: int = 2) -> None:
        self.minio = minio
        self.after = after
        self.nth = nth
        self.files = 0
        self.killed = threading.Event()
        self.armed = False
        outage = self

        class KillingReader(s3_module._HashingReader):
            def __init__(self, handle: BinaryIO) -> None:
                super().__init__(handle)
                self.read_so_far = 0
                outage.files += outage.armed
                self.index = outage.files

            def read(self, size: int = -1) -> bytes:
                if outage.armed and self.index == outage.nth and self.read_so_far >= outage.after:
                    outage.armed = False
                    outage.minio.kill()
                    outage.killed.set()
                data = super().read(size)
                self.read_so_far += len(data)
                return data

        self.reader = KillingReader


@pytest.fixture
def s3_checkpoints(
    minio: MinioServer, minio_bucket: str, s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[S3Store, Outage]]:
    store = open_store(f"s3://{minio_bucket}/runs/faults")
    assert isinstance(store, S3Store)
    store.part_size = PART
    outage = Outage(minio, after=PART + 1)
    monkeypatch.setattr(s3_module, "_HashingReader", outage.reader)
    yield store, outage
    minio.start()


def staged(root: Path, step: int) -> tuple[Path, dict[str, bytes]]:
    files = {"model.safetensors": os.urandom(6 << 20), "optimizer.pt": os.urandom(12 << 20), "state.json": b"{}"}
    directory = root / f"staged-{step}"
    directory.mkdir()
    for name, data in files.items():
        (directory / name).write_bytes(data)
    return directory, files


def committed_steps(store: Store) -> list[int]:
    return [c.step for c in CheckpointStore(store, STAGE, read_only=True).list()]


def test_outage_longer_than_the_retry_deadline(
    s3_checkpoints: tuple[S3Store, Outage], tmp_path: Path, minio: MinioServer
) -> None:
    store, outage = s3_checkpoints
    store.policy = store.retry.policy = s3_module.RetryPolicy(deadline_seconds=2.0)
    checkpoints = CheckpointStore(store, STAGE, retention=RetentionSpec(last=2))
    checkpoints.commit(100, staged(tmp_path, 100)[0])
    checkpoints.flush()

    outage.armed = True
    checkpoints.commit(200, staged(tmp_path, 200)[0])
    assert outage.killed.wait(timeout=60), "the upload never reached its second part"
    with pytest.raises(StoreUnavailableError, match=f"{minio.endpoint}.*unreachable"):
        checkpoints.flush()

    minio.start()
    # The first file of step 200 made it, the second died mid-way: not a checkpoint.
    partial = layout.checkpoint(STAGE, 200)
    assert [info.key[len(partial) :] for info in store.list_objects(partial)] == ["/attempt-000001/model.safetensors"]
    assert not store.exists(f"{layout.checkpoint(STAGE, 200)}/manifest.json")
    assert committed_steps(store) == [100]
    latest = CheckpointStore(store, STAGE, read_only=True).latest()
    assert latest is not None
    assert latest.step == 100

    # Training goes on: the next checkpoint commits normally and retention drops the leftovers.
    directory, files = staged(tmp_path, 300)
    checkpoints.commit(300, directory)
    checkpoints.close()
    assert committed_steps(store) == [100, 300]
    assert store.list_dirs(layout.checkpoints(STAGE)) == ["step-000000100", "step-000000300"]
    restored = CheckpointStore(store, STAGE, read_only=True).restore_latest(tmp_path / "resume")
    assert restored is not None
    assert restored.step == 300
    assert (tmp_path / "resume" / "model.safetensors").read_bytes() == files["model.safetensors"]


def test_outage_shorter_than_the_retry_deadline(
    s3_checkpoints: tuple[S3Store, Outage], tmp_path: Path, minio: MinioServer
) -> None:
    store, outage = s3_checkpoints
    store.policy = store.retry.policy = s3_module.RetryPolicy(deadline_seconds=120.0, cap_seconds=1.0)
    checkpoints = CheckpointStore(store, STAGE)
    outage.armed = True
    directory, files = staged(tmp_path, 100)
    checkpoints.commit(100, directory)
    assert outage.killed.wait(timeout=60), "the upload never reached its second part"
    minio.start()  # the worker retried meanwhile; it now completes the upload
    checkpoints.flush()
    [record] = checkpoints.stats.commits
    assert record.error is None

    latest = CheckpointStore(store, STAGE, read_only=True).latest()
    assert latest is not None
    assert latest.step == 100
    assert latest.files["model.safetensors"].sha256 == hashlib.sha256(files["model.safetensors"]).hexdigest()
    checkpoints.commit(200, staged(tmp_path, 200)[0])
    checkpoints.close()
    assert committed_steps(store) == [100, 200]
