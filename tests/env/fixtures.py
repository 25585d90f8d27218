"""pytest fixtures for the real test environment: MinIO, the control plane, the fake GPU
fleet, the pod process runtime and a namespace per test. Registered by tests/conftest.py.

One server of each kind per pytest session. A missing prerequisite fails the test in CI
(CI=true) and skips it locally, with the reason; it is never silently ignored.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.env.binaries import MissingPrerequisiteError
from tests.env.minio import MinioServer


def _prerequisite(make: Callable[[], Any]) -> Any:
    """Run make(); turn a missing binary into a failure (CI) or a skip (locally)."""
    try:
        return make()
    except MissingPrerequisiteError as missing:
        if missing.fatal:
            pytest.fail(str(missing), pytrace=False)
        pytest.skip(str(missing))


# --- MinIO -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def minio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MinioServer]:
    """The session's MinIO server (endpoint, access_key, secret_key, env(), client(), restart())."""
    server: MinioServer = _prerequisite(lambda: MinioServer(tmp_path_factory.mktemp("minio")))
    server.start()
    yield server
    server.close()


@pytest.fixture
def minio_client(minio: MinioServer) -> Any:
    """A `minio.Minio` client for the session's server (restarted first if a test stopped it)."""
    minio.start()
    return minio.client()


@pytest.fixture
def minio_bucket(minio: MinioServer, minio_client: Any) -> Iterator[str]:
    """A fresh, uniquely named, empty bucket; emptied and removed after the test."""
    name = f"test-{uuid.uuid4().hex[:16]}"
    minio_client.make_bucket(name)
    yield name
    minio.start()  # a test may have stopped the server
    from minio.deleteobjects import DeleteObject

    objects = [DeleteObject(obj.object_name) for obj in minio_client.list_objects(name, recursive=True)]
    errors = list(minio_client.remove_objects(name, objects)) if objects else []
    assert not errors, f"cleaning bucket {name}: {errors}"
    minio_client.remove_bucket(name)


@pytest.fixture
def s3_env(minio: MinioServer, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Sets MINIO_ENDPOINT / MINIO_ACCESS_KEY / MINIO_SECRET_KEY for this test; returns them."""
    env = minio.env()
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("MINIO_SECURE", raising=False)
    return env
