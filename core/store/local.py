"""The local-directory store backend (the embedded default).

A root with a control character or backslash is refused (atoll.api.uris.local_root_problem),
as is a child prefix or key with an empty, '.' or '..' segment: nothing reaches outside the root.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Iterator
from pathlib import Path

from atoll.api.uris import local_root_problem, prefix_problem
from atoll.store.base import CHUNK_SIZE, NotFoundError, ObjectInfo, Store, StoreError, join_key, replacing


class LocalStore(Store):
    """Objects are files under a root directory; writes go through a temp file + rename."""

    def __init__(self, root: str | Path) -> None:
        if problem := local_root_problem(str(root)):
            raise StoreError(f"invalid local store root {str(root)!r}: {problem}")
        self.root = Path(root).expanduser().absolute()
        self.uri = str(self.root)

    def _path(self, key: str) -> Path:
        key = key.strip("/")
        if not key or any(part in ("", ".", "..") for part in key.split("/")):
            raise ValueError(f"invalid store key {key!r}")
        return self.root / key

    def put_bytes(self, key: str, data: bytes) -> None:
        with replacing(self._path(key), fsync=True) as handle:
            handle.write(data)

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise NotFoundError(self.uri_of(key)) from None

    def put_file(self, key: str, path: Path) -> None:
        _copy(path, self._path(key))

    def put_file_sha256(self, key: str, path: Path) -> str:
        digest = hashlib.sha256()
        with path.open("rb") as source, replacing(self._path(key)) as sink:
            while chunk := source.read(CHUNK_SIZE):
                digest.update(chunk)
                sink.write(chunk)
        return digest.hexdigest()

    def read_chunks(self, key: str, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
        try:
            handle = self._path(key).open("rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise NotFoundError(self.uri_of(key)) from None
        with handle:
            while chunk := handle.read(chunk_size):
                yield chunk

    def get_file(self, key: str, path: Path) -> None:
        source = self._path(key)
        if not source.is_file():
            raise NotFoundError(self.uri_of(key))
        _copy(source, path)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list_objects(self, prefix: str = "") -> list[ObjectInfo]:
        prefix = prefix.lstrip("/")
        base = self.root / prefix.rsplit("/", 1)[0] if "/" in prefix else self.root
        if not base.is_dir():
            return []
        found = []
        for path in base.rglob("*"):
            if not path.is_file() or (path.name.endswith(".tmp") and path.name.startswith(".")):
                continue
            key = path.relative_to(self.root).as_posix()
            if key.startswith(prefix):
                found.append(ObjectInfo(key=key, size=path.stat().st_size))
        return sorted(found, key=lambda info: info.key)

    def delete(self, key: str) -> None:
        path = self._path(key)
        path.unlink(missing_ok=True)
        parent = path.parent
        while parent != self.root and parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()
            parent = parent.parent

    def child(self, prefix: str) -> LocalStore:
        if problem := prefix_problem(prefix):
            raise StoreError(f"invalid child prefix {prefix!r} of {self.uri}: {problem}")
        return LocalStore(self.root / join_key(prefix))


def _copy(source: Path, target: Path) -> None:
    """Copy a file so that `target` is the old file or the whole copy, never a part."""
    with source.open("rb") as reader, replacing(target) as writer:
        shutil.copyfileobj(reader, writer, CHUNK_SIZE)
