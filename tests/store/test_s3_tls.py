"""The S3 backend over TLS: a MinIO serving HTTPS with a self-signed certificate is reached
with MINIO_SECURE=true (or an https:// endpoint) once the CA is trusted, and an untrusted
certificate is a clear, immediate error (retrying will not fix it)."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from atoll.store import StoreError
from atoll.store.retry import RetryPolicy
from atoll.store.s3 import S3Store
from tests.env.minio import MinioServer

pytestmark = pytest.mark.minio


class TlsMinioServer(MinioServer):
    """MinIO with certs/public.crt + private.key: it serves HTTPS only."""

    @property
    def url(self) -> str:
        return f"https://{self.endpoint}"


@pytest.fixture
def tls_minio(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[TlsMinioServer, Path]]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    certs = tmp_path / "minio" / "config" / "certs"
    certs.mkdir(parents=True)
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-keyout", str(certs / "private.key"), "-out", str(certs / "public.crt"),
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    # OpenSSL's default verify paths honour SSL_CERT_FILE: the health check and the store trust it.
    monkeypatch.setenv("SSL_CERT_FILE", str(certs / "public.crt"))
    server = TlsMinioServer(tmp_path / "minio")
    server.start()
    yield server, certs / "public.crt"
    server.close()


def test_tls_round_trip(tls_minio: tuple[TlsMinioServer, Path]) -> None:
    server, _ = tls_minio
    credentials = {"MINIO_ACCESS_KEY": server.access_key, "MINIO_SECRET_KEY": server.secret_key}
    for endpoint in ({"MINIO_ENDPOINT": server.endpoint, "MINIO_SECURE": "true"}, {"MINIO_ENDPOINT": server.url}):
        store = S3Store.from_uri("s3://tls-bucket/runs/a", env=credentials | endpoint)
        assert store.secure
        store.put_bytes("spec.json", b'{"tls": true}')
        assert store.get_bytes("spec.json") == b'{"tls": true}'
        store.delete_prefix("")
        assert store.list_objects() == []


def test_untrusted_certificate_fails_at_once(
    tls_minio: tuple[TlsMinioServer, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    server, _ = tls_minio
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "no-such-ca.pem"))
    env = {
        "MINIO_ENDPOINT": server.endpoint,
        "MINIO_SECURE": "true",
        "MINIO_ACCESS_KEY": server.access_key,
        "MINIO_SECRET_KEY": server.secret_key,
    }
    store = S3Store.from_uri("s3://tls-bucket/runs/a", env=env, policy=RetryPolicy(deadline_seconds=60))
    started = time.monotonic()
    with pytest.raises(StoreError, match=r"CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
        store.put_bytes("spec.json", b"{}")
    assert time.monotonic() - started < 10
