"""Object stores: one interface, a local-directory and an S3 (MinIO) backend.

`open_store(uri)` picks the backend from the URI: a plain path or file://… is local,
s3://bucket/prefix is S3 with credentials from MINIO_ENDPOINT, MINIO_ACCESS_KEY and
MINIO_SECRET_KEY. Every backend refuses a root or child prefix that could point anywhere
but under the given root (atoll.api.uris), whatever validated it before.
"""

from __future__ import annotations

from atoll.api import DDMRunSpec, load_spec_json
from atoll.store.base import (
    FencedError,
    NotFoundError,
    ObjectInfo,
    Store,
    StoreAuthError,
    StoreError,
    StoreUnavailableError,
    join_key,
)
from atoll.store.checkpoint import CheckpointStore
from atoll.store.commits import CommitRecord, CommitStats
from atoll.store.local import LocalStore
from atoll.store.manifest import Checkpoint, CheckpointFile, CorruptCheckpointError


def open_store(uri: str) -> Store:
    """Open the store at `uri` (a path, file://path or s3://bucket/prefix)."""
    if uri.startswith("s3://"):
        from atoll.store.s3 import S3Store

        return S3Store.from_uri(uri)
    if uri.startswith("file://"):
        uri = uri[len("file://") :]
    if "://" in uri:
        raise StoreError(f"unsupported store URI {uri!r}: use a path, file://path or s3://bucket/prefix")
    return LocalStore(uri)


def read_spec(uri: str) -> DDMRunSpec:
    """Read and validate a spec.json given as a path, file:// or s3:// URI."""
    parent, _, name = uri.rstrip("/").rpartition("/")
    return load_spec_json(open_store(parent or ".").get_bytes(name), source=uri)


__all__ = [
    "Checkpoint",
    "CheckpointFile",
    "CheckpointStore",
    "CommitRecord",
    "CommitStats",
    "CorruptCheckpointError",
    "FencedError",
    "LocalStore",
    "NotFoundError",
    "ObjectInfo",
    "Store",
    "StoreAuthError",
    "StoreError",
    "StoreUnavailableError",
    "join_key",
    "open_store",
    "read_spec",
]
