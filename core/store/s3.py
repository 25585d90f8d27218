"""The S3 store backend (MinIO, or any S3 service) through the `minio` client.

`S3Store.from_uri("s3://bucket/prefix")` reads MINIO_ENDPOINT (host:port or an http(s) URL),
MINIO_ACCESS_KEY, MINIO_SECRET_KEY, and optionally MINIO_SECURE and MINIO_REGION. Every
call goes through atoll.store.retry (the client's own urllib3 retries are off, so a
refused connection or a wrong key never hides in minutes of silent retries). A PUT is
atomic in S3, so single-object writes are; large files go up as multipart uploads.
A URI or child prefix that breaks atoll.api.uris' rules (a query or fragment `urlsplit`
would move the prefix into, '..', empty segments …) is refused before any request.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import io
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlsplit

import urllib3
from minio import Minio
from minio.deleteobjects import DeleteObject
from minio.error import S3Error

from atoll.api.uris import prefix_problem, uri_problem
from atoll.log import get_logger
from atoll.store.base import CHUNK_SIZE, NotFoundError, ObjectInfo, Store, StoreError, join_key, replacing
from atoll.store.retry import Retrier, RetryPolicy, classify

log = get_logger(__name__)

DEFAULT_PART_SIZE = 16 << 20
"""Multipart part size; 16 MiB parts keep a 500 MB checkpoint at ~30 requests."""
DEFAULT_PARALLEL_UPLOADS = 4
CONNECT_TIMEOUT_SECONDS = 5.0
READ_TIMEOUT_SECONDS = 60.0
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}


class _HashingReader:
    """A file wrapper that hashes what the uploader reads, so the file is read once."""

    def __init__(self, handle: BinaryIO) -> None:
        self.handle = handle
        self.digest = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self.handle.read(size)
        self.digest.update(data)
        return data


class _Bucket:
    """Shared by a store and its children: the bucket is created once, on the first write."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.ready = False
        self.lock = threading.Lock()


class S3Store(Store):
    """Objects under `prefix` in one bucket of an S3 endpoint."""

    def __init__(
        self,
        client: Minio,
        bucket: str,
        prefix: str = "",
        *,
        endpoint: str,
        secure: bool = False,
        region: str | None = None,
        policy: RetryPolicy | None = None,
        part_size: int = DEFAULT_PART_SIZE,
        parallel_uploads: int = DEFAULT_PARALLEL_UPLOADS,
        _bucket: _Bucket | None = None,
    ) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint = endpoint
        self.secure = secure
        self.region = region
        self.policy = policy or RetryPolicy.from_env()
        self.part_size = part_size
        self.parallel_uploads = parallel_uploads
        self.retry = Retrier(f"{'https' if secure else 'http'}://{endpoint}", self.policy)
        self._bucket = _bucket or _Bucket(bucket)
        self.uri = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"

    @classmethod
    def from_uri(cls, uri: str, *, env: dict[str, str] | None = None, policy: RetryPolicy | None = None) -> S3Store:
        """Open s3://bucket/prefix with the endpoint and credentials of the MINIO_* variables."""
        environ = os.environ if env is None else env
        parts = urlsplit(uri)
        if parts.scheme != "s3" or not parts.netloc:
            raise StoreError(f"not an S3 store URI: {uri!r} (expected s3://bucket/prefix)")
        if (problem := uri_problem(uri)) and not problem.startswith("invalid bucket name"):
            # urlsplit would move what follows a '?' or '#' out of the prefix: refuse, never guess.
            raise StoreError(f"invalid S3 store URI {uri!r}: {problem}")
        endpoint, secure = parse_endpoint(environ.get("MINIO_ENDPOINT", ""), environ.get("MINIO_SECURE", ""))
        missing = [name for name in ("MINIO_ACCESS_KEY", "MINIO_SECRET_KEY") if not environ.get(name)]
        if missing:
            raise StoreError(f"{uri} needs {' and '.join(missing)} (the S3 credentials) in the environment")
        region = environ.get("MINIO_REGION") or None
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=CONNECT_TIMEOUT_SECONDS, read=READ_TIMEOUT_SECONDS),
            maxsize=16,
            cert_reqs="CERT_REQUIRED",
            retries=False,  # atoll.store.retry decides; auth errors must never be retried
        )
        try:
            client = Minio(
                endpoint,
                access_key=environ["MINIO_ACCESS_KEY"],
                secret_key=environ["MINIO_SECRET_KEY"],
                secure=secure,
                region=region,
                http_client=http,
            )
        except ValueError as error:
            raise StoreError(f"MINIO_ENDPOINT={endpoint!r} is not a valid S3 endpoint: {error}") from error
        bucket = parts.netloc
        try:
            from minio.helpers import check_bucket_name

            check_bucket_name(bucket, strict=True)
        except ValueError as error:
            raise StoreError(
                f"{uri}: invalid bucket name {bucket!r} (3-63 lowercase letters, digits, dots, hyphens)"
            ) from error
        return cls(client, bucket, parts.path, endpoint=endpoint, secure=secure, region=region, policy=policy)

    # --- keys ---------------------------------------------------------------------------

    def _name(self, key: str) -> str:
        key = key.strip("/")
        if not key or any(part in ("", ".", "..") for part in key.split("/")):
            raise ValueError(f"invalid store key {key!r}")
        return join_key(self.prefix, key)

    def _ensure_bucket(self) -> None:
        state = self._bucket
        if state.ready:
            return
        with state.lock:
            if not state.ready:
                self._create_bucket()
                state.ready = True

    def _create_bucket(self) -> None:
        uri = f"s3://{self.bucket}"
        if self.retry.call(lambda: self.client.bucket_exists(self.bucket), action="checking", uri=uri):
            return
        try:
            self.retry.call(
                lambda: self.client.make_bucket(self.bucket, location=self.region),
                action="creating bucket",
                uri=uri,
            )
            log.info("bucket created", bucket=uri, endpoint=self.endpoint)
        except StoreError as error:
            cause = error.__cause__
            if not (isinstance(cause, S3Error) and cause.code == "BucketAlreadyOwnedByYou"):
                raise

    # --- Store --------------------------------------------------------------------------

    def put_bytes(self, key: str, data: bytes) -> None:
        name = self._name(key)
        self._ensure_bucket()
        self.retry.call(
            lambda: self.client.put_object(self.bucket, name, io.BytesIO(data), len(data)),
            action="writing",
            uri=self.uri_of(key),
        )

    def get_bytes(self, key: str) -> bytes:
        return b"".join(self.read_chunks(key))

    def put_file(self, key: str, path: Path) -> None:
        self.put_file_sha256(key, path)

    def put_file_sha256(self, key: str, path: Path) -> str:
        name = self._name(key)
        self._ensure_bucket()

        def upload() -> str:
            size = path.stat().st_size
            with path.open("rb") as handle:
                reader = _HashingReader(handle)
                self.client.put_object(
                    self.bucket,
                    name,
                    reader,  # type: ignore[arg-type]  # anything with read() will do
                    size,
                    part_size=self.part_size,
                    num_parallel_uploads=self.parallel_uploads,
                )
                return reader.digest.hexdigest()

        return self.retry.call(upload, action="uploading", uri=self.uri_of(key))

    def read_chunks(self, key: str, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
        """Stream an object; a connection lost mid-way resumes at the same offset (Range)."""
        name, uri = self._name(key), self.uri_of(key)
        offset, failures, first_failure = 0, 0, 0.0
        while True:
            response: Any = self.retry.call(
                functools.partial(self.client.get_object, self.bucket, name, offset=offset),
                action="reading",
                uri=uri,
            )
            try:
                for chunk in response.stream(chunk_size):
                    offset += len(chunk)
                    yield chunk
                return
            except Exception as error:
                if classify(error) != "transient":
                    raise StoreError(f"reading {uri} failed at byte {offset}: {error}") from error
                failures, first_failure = failures + 1, first_failure or time.monotonic()
                if time.monotonic() - first_failure > self.policy.deadline_seconds:
                    raise StoreError(f"reading {uri} kept failing at byte {offset}: {error}") from error
                log.warning("object read interrupted, resuming", uri=uri, offset=offset, error=str(error))
                time.sleep(self.policy.backoff(failures))
            finally:
                response.close()
                response.release_conn()

    def get_file(self, key: str, path: Path) -> None:
        with replacing(path) as sink:
            for chunk in self.read_chunks(key):
                sink.write(chunk)

    def exists(self, key: str) -> bool:
        name = self._name(key)
        try:
            self.retry.call(lambda: self.client.stat_object(self.bucket, name), action="checking", uri=self.uri_of(key))
        except NotFoundError:
            return False
        return True

    def list_objects(self, prefix: str = "") -> list[ObjectInfo]:
        full = join_key(self.prefix, prefix)
        if prefix.endswith("/") or not prefix:
            full = f"{full}/" if full else ""
        skip = len(self.prefix) + 1 if self.prefix else 0

        def listing() -> list[ObjectInfo]:
            return [
                ObjectInfo(key=obj.object_name[skip:], size=int(obj.size or 0))
                for obj in self.client.list_objects(self.bucket, prefix=full, recursive=True)
                if not obj.is_dir and not obj.object_name.endswith("/")
            ]

        try:
            found = self.retry.call(listing, action="listing", uri=self.uri_of(prefix))
        except NotFoundError:  # no bucket yet: nothing stored
            return []
        return sorted(found, key=lambda info: info.key)

    def delete(self, key: str) -> None:
        name = self._name(key)
        with contextlib.suppress(NotFoundError):  # no bucket: nothing to delete
            self.retry.call(
                lambda: self.client.remove_object(self.bucket, name), action="deleting", uri=self.uri_of(key)
            )

    def delete_prefix(self, prefix: str) -> None:
        names = [DeleteObject(join_key(self.prefix, info.key)) for info in self.list_objects(prefix)]
        for start in range(0, len(names), 1000):
            batch = names[start : start + 1000]
            errors = self.retry.call(
                functools.partial(_remove_objects, self.client, self.bucket, batch),
                action="deleting under",
                uri=self.uri_of(prefix),
            )
            if errors:
                raise StoreError(f"deleting under {self.uri_of(prefix)}: {errors[0]} ({len(errors)} objects failed)")

    def child(self, prefix: str) -> S3Store:
        if problem := prefix_problem(prefix):
            raise StoreError(f"invalid child prefix {prefix!r} of {self.uri}: {problem}")
        return self._derive(join_key(self.prefix, prefix), self.policy)

    def with_retry_deadline(self, seconds: float) -> S3Store:
        return self._derive(self.prefix, dataclasses.replace(self.policy, deadline_seconds=seconds))

    def _derive(self, prefix: str, policy: RetryPolicy) -> S3Store:
        """A store on the same client, bucket and settings (shared bucket-created state)."""
        return S3Store(
            self.client,
            self.bucket,
            prefix,
            endpoint=self.endpoint,
            secure=self.secure,
            region=self.region,
            policy=policy,
            part_size=self.part_size,
            parallel_uploads=self.parallel_uploads,
            _bucket=self._bucket,
        )


def _remove_objects(client: Minio, bucket: str, batch: list[DeleteObject]) -> list[Any]:
    """Delete a batch; the client reports failures lazily, so drain them here."""
    return list(client.remove_objects(bucket, batch))


def parse_endpoint(raw: str, secure_flag: str) -> tuple[str, bool]:
    """MINIO_ENDPOINT (host:port, or http(s)://host:port) and MINIO_SECURE → (host:port, TLS)."""
    raw = raw.strip()
    if not raw:
        raise StoreError("an s3:// store needs MINIO_ENDPOINT (host:port, or an http(s):// URL of the S3 server)")
    flag = secure_flag.strip().lower()
    if flag not in _TRUE | _FALSE:
        raise StoreError(f"MINIO_SECURE={secure_flag!r}: use true or false")
    secure = flag in _TRUE
    if "://" in raw:
        parts = urlsplit(raw)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path.strip("/"):
            raise StoreError(f"MINIO_ENDPOINT={raw!r}: expected host:port or http(s)://host:port (no path)")
        return parts.netloc, parts.scheme == "https"
    if "/" in raw:
        raise StoreError(f"MINIO_ENDPOINT={raw!r}: expected host:port or http(s)://host:port (no path)")
    return raw, secure
