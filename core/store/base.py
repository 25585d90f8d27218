"""The object-store interface every stage, the local runtime and the operator use.

Keys are '/'-separated paths relative to the store's root (for a run: the run's prefix,
e.g. s3://atoll/runs/<run>). Backends implement byte and file transfer, listing and
deletion; everything above (checkpoints, progress, layout) is written once against this
interface. Implementations must make single-object writes atomic: a reader sees the old
object, the new one, or none — never a torn one.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from atoll.errors import AtollError

CHUNK_SIZE = 8 << 20
"""Bytes per read when streaming or hashing objects and files."""


class StoreError(AtollError):
    """A store operation failed for a reason that retrying will not fix."""


class NotFoundError(StoreError, KeyError):
    """The key does not exist."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "not found"


class StoreAuthError(StoreError):
    """The store refused the credentials or the permission (never retried)."""


class FencedError(StoreError):
    """A newer attempt of the same stage exists; this one must stop without writing."""


class StoreUnavailableError(StoreError):
    """The store stayed unreachable through every retry."""


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """One stored object."""

    key: str
    size: int


class Store(ABC):
    """A flat key → bytes store with atomic single-object writes."""

    uri: str
    """The URI of the store's root, e.g. `s3://atoll/runs/digits` or `/data/runs/digits`."""

    @abstractmethod
    def put_bytes(self, key: str, data: bytes) -> None:
        """Write one object atomically."""

    @abstractmethod
    def get_bytes(self, key: str) -> bytes:
        """Read one object; NotFoundError if absent."""

    @abstractmethod
    def put_file(self, key: str, path: Path) -> None:
        """Upload a local file as one object (multipart where the backend needs it)."""

    @abstractmethod
    def get_file(self, key: str, path: Path) -> None:
        """Download one object to a local file (written atomically); NotFoundError if absent."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether the object exists."""

    @abstractmethod
    def list_objects(self, prefix: str = "") -> list[ObjectInfo]:
        """Every object whose key starts with `prefix`, recursively, sorted by key."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove one object; absent objects are not an error."""

    def delete_prefix(self, prefix: str) -> None:
        """Remove every object under `prefix`."""
        for info in self.list_objects(prefix):
            self.delete(info.key)

    @abstractmethod
    def child(self, prefix: str) -> Store:
        """A store rooted at `prefix` inside this one (same backend and credentials)."""

    def read_chunks(self, key: str, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
        """Stream one object in chunks (NotFoundError if absent); backends override to avoid
        holding the whole object in memory."""
        data = self.get_bytes(key)
        for start in range(0, len(data), chunk_size):
            yield data[start : start + chunk_size]

    def put_file_sha256(self, key: str, path: Path) -> str:
        """Upload a local file like put_file and return the sha256 (hex) of the bytes sent.

        Backends override this to hash while uploading (one read of the file instead of two).
        """
        digest = file_sha256(path)
        self.put_file(key, path)
        return digest

    def with_retry_deadline(self, seconds: float) -> Store:
        """This store with failing calls retried for at most `seconds` (backends that never
        retry return themselves). For writes that must not hold a trainer up during a store
        outage, such as the progress heartbeat."""
        return self

    def uri_of(self, key: str) -> str:
        """The full URI of a key, for status and logs."""
        return f"{self.uri.rstrip('/')}/{key.lstrip('/')}"

    def put_json(self, key: str, value: Any) -> None:
        """Write a JSON document (sorted keys, indented)."""
        self.put_bytes(key, json.dumps(value, indent=2, sort_keys=True).encode())

    def get_json(self, key: str) -> Any:
        """Read a JSON document; NotFoundError if absent."""
        return json.loads(self.get_bytes(key))

    def list_dirs(self, prefix: str) -> list[str]:
        """The immediate 'sub-directories' under prefix (names only, sorted)."""
        prefix = prefix.rstrip("/") + "/" if prefix else ""
        rests = (info.key[len(prefix) :] for info in self.list_objects(prefix))
        return sorted({rest.split("/", 1)[0] for rest in rests if "/" in rest})


@contextmanager
def replacing(target: Path, *, fsync: bool = False) -> Iterator[BinaryIO]:
    """A temp file beside `target`, open for writing, that replaces `target` when the block
    ends without error and is removed otherwise: a reader sees the old file or the whole new
    one, never a part (`fsync`: the data reaches the disk before the rename)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            if fsync:
                handle.flush()
                os.fsync(handle.fileno())
        Path(tmp).replace(target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def file_sha256(path: Path) -> str:
    """The sha256 (hex) of a local file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK_SIZE):
            digest.update(chunk)
    return digest.hexdigest()


def join_key(*parts: str) -> str:
    """Join key segments with '/' (no leading or doubled slashes)."""
    return "/".join(p.strip("/") for p in parts if p.strip("/"))
