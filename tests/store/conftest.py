"""Fixtures of the store tests: every contract test runs on the local and the S3 backend.

The S3 variant talks to the session's real MinIO server (tests/env) in a fresh bucket.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from atoll.store import Store, open_store
from atoll.store import checkpoint as checkpoint_module

BACKENDS = [pytest.param("local", id="local"), pytest.param("s3", id="s3", marks=pytest.mark.minio)]


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    """A fresh, empty store rooted at a run prefix: a local directory or a MinIO bucket."""
    if request.param == "local":
        return open_store(str(tmp_path / "store"))
    bucket = request.getfixturevalue("minio_bucket")
    request.getfixturevalue("s3_env")
    return open_store(f"s3://{bucket}/runs/test")


class RecordedLog:
    """Stands in for a module's structlog logger and keeps (level, event, fields)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict[str, Any]]] = []

    def __getattr__(self, level: str) -> Callable[..., None]:
        def record(event: str, **fields: Any) -> None:
            self.events.append((level, event, fields))

        return record

    def warnings(self) -> list[dict[str, Any]]:
        return [{"event": event, **fields} for level, event, fields in self.events if level == "warning"]


@pytest.fixture
def checkpoint_log(monkeypatch: pytest.MonkeyPatch) -> Iterator[RecordedLog]:
    """What atoll.store.checkpoint logs during the test."""
    recorded = RecordedLog()
    monkeypatch.setattr(checkpoint_module, "log", recorded)
    return recorded


class GatedStore(Store):
    """Delegates to a real store; file uploads wait for `gate` and can be made to fail.

    Lets tests hold an upload in flight (backpressure, fencing races) without sleeping.
    """

    def __init__(self, inner: Store) -> None:
        import threading

        self.inner = inner
        self.uri = inner.uri
        self.gate = threading.Event()
        self.gate.set()
        self.uploading = threading.Event()
        self.fail_uploads: Exception | None = None

    def put_file_sha256(self, key: str, path: Path) -> str:
        self.uploading.set()
        assert self.gate.wait(timeout=60), "test gate never opened"
        if self.fail_uploads is not None:
            raise self.fail_uploads
        return self.inner.put_file_sha256(key, path)

    def put_bytes(self, key: str, data: bytes) -> None:
        self.inner.put_bytes(key, data)

    def get_bytes(self, key: str) -> bytes:
        return self.inner.get_bytes(key)

    def put_file(self, key: str, path: Path) -> None:
        self.inner.put_file(key, path)

    def get_file(self, key: str, path: Path) -> None:
        self.inner.get_file(key, path)

    def read_chunks(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        return self.inner.read_chunks(key, chunk_size)

    def exists(self, key: str) -> bool:
        return self.inner.exists(key)

    def list_objects(self, prefix: str = "") -> list[Any]:
        return self.inner.list_objects(prefix)

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def delete_prefix(self, prefix: str) -> None:
        self.inner.delete_prefix(prefix)

    def child(self, prefix: str) -> Store:
        return GatedStore(self.inner.child(prefix))
