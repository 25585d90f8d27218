"""Smoke test (c): the real MinIO server: bucket creation, a 50 MB put/get round trip with
the `minio` client, and the data still there after a graceful restart and after a crash."""

from __future__ import annotations

import hashlib
import io
import os
from typing import Any

import pytest

from tests.env.minio import MinioServer

pytestmark = pytest.mark.minio

SIZE = 50 * 1024 * 1024


def test_bucket_round_trip_survives_restart(minio: MinioServer, minio_client: Any, minio_bucket: str) -> None:
    assert minio_client.bucket_exists(minio_bucket)
    payload = os.urandom(SIZE)
    digest = hashlib.sha256(payload).hexdigest()
    minio_client.put_object(minio_bucket, "blob.bin", io.BytesIO(payload), SIZE, part_size=16 * 1024 * 1024)
    del payload

    def fetched_digest() -> str:
        response = minio_client.get_object(minio_bucket, "blob.bin")
        try:
            return hashlib.sha256(response.read()).hexdigest()
        finally:
            response.close()
            response.release_conn()

    assert fetched_digest() == digest
    port, pid = minio.port, minio.pid
    minio.restart()
    assert (minio.port, minio.pid != pid) == (port, True)
    assert fetched_digest() == digest
    assert minio_client.stat_object(minio_bucket, "blob.bin").size == SIZE

    minio.kill()
    minio.start()
    assert fetched_digest() == digest


def test_s3_env_names_the_running_server(s3_env: dict[str, str], minio: MinioServer) -> None:
    assert os.environ["MINIO_ENDPOINT"] == minio.endpoint == s3_env["MINIO_ENDPOINT"]
    assert "://" not in minio.endpoint
    assert os.environ["MINIO_SECRET_KEY"] == minio.secret_key
