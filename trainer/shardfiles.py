"""Row-range reads of the cluster shards, without loading a whole shard or cluster into memory.

A shard in a local store is read in place; a shard in any other store (s3://) is downloaded
once into a scratch directory that keeps at most `cache_files` shards on disk (least
recently used leaves first). Rows [a, b) of the named tensors are read through safetensors'
memory map, so only those bytes are touched. This module reads only: it never writes to the
store, and it knows nothing of training order (see atoll.trainer.training.stream).
"""

from __future__ import annotations

import shutil
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import torch
from safetensors import SafetensorError, safe_open

from atoll.store import LocalStore, NotFoundError, Store
from atoll.trainer.clusterdata import ClusterDataError, ShardRef


class ShardFiles:
    """Local files of the shards of one run's store, and reads of row ranges from them."""

    def __init__(self, store: Store, *, cache_files: int = 4) -> None:
        self.store = store
        self.cache_files = max(1, cache_files)
        self._local = store.root if isinstance(store, LocalStore) else None
        self._scratch: Path | None = None
        self._cached: OrderedDict[str, Path] = OrderedDict()
        self._checked: set[str] = set()
        self._lock = threading.Lock()  # the stream's prefetch thread reads too

    def __enter__(self) -> ShardFiles:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Delete the downloaded shards."""
        with self._lock:
            if self._scratch is not None:
                shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None
            self._cached.clear()

    def read(self, shard: ShardRef, start: int, stop: int, names: Sequence[str]) -> dict[str, torch.Tensor]:
        """Rows [start, stop) of each named tensor of `shard` (copies, independent of the file)."""
        if not 0 <= start <= stop <= shard.examples:
            raise IndexError(f"rows {start}:{stop} out of range for the {shard.examples} rows of {shard.key}")
        path = self._path(shard)
        where = self.store.uri_of(shard.key)
        try:
            with safe_open(str(path), framework="pt") as handle:
                if shard.key not in self._checked:
                    _check_rows(handle, shard, names, where)
                    self._checked.add(shard.key)
                return {name: handle.get_slice(name)[start:stop].clone() for name in names}
        except (SafetensorError, OSError) as error:
            raise ClusterDataError(f"{where} is not a readable safetensors file: {error}") from None

    def read_rows(self, shard: ShardRef, rows: torch.Tensor, names: Sequence[str]) -> dict[str, torch.Tensor]:
        """The given rows (sorted or not) of each named tensor, reading only the range they span."""
        if rows.numel() == 0:
            return self.read(shard, 0, 0, names)
        low, high = int(rows.min()), int(rows.max()) + 1
        block = self.read(shard, low, high, names)
        return {name: tensor[rows - low] for name, tensor in block.items()}

    def _path(self, shard: ShardRef) -> Path:
        if self._local is not None:
            path = self._local / shard.key
            if not path.is_file():
                raise ClusterDataError(f"{self.store.uri_of(shard.key)} is missing: run the partition stage first")
            return path
        with self._lock:
            cached = self._cached.get(shard.key)
            if cached is not None:
                self._cached.move_to_end(shard.key)
                return cached
            if self._scratch is None:
                self._scratch = Path(tempfile.mkdtemp(prefix="atoll-shards-"))
            path = self._scratch / shard.key.replace("/", "__")
            try:
                self.store.get_file(shard.key, path)
            except NotFoundError:
                raise ClusterDataError(
                    f"{self.store.uri_of(shard.key)} is missing: run the partition stage first"
                ) from None
            self._cached[shard.key] = path
            while len(self._cached) > self.cache_files:
                _, old = self._cached.popitem(last=False)
                old.unlink(missing_ok=True)
            return path


def _check_rows(handle: object, shard: ShardRef, names: Sequence[str], where: str) -> None:
    keys = set(handle.keys())  # type: ignore[attr-defined]
    missing = [name for name in names if name not in keys]
    if missing:
        raise ClusterDataError(f"{where} lacks tensors {missing}")
    for name in names:
        rows = int(handle.get_slice(name).get_shape()[0])  # type: ignore[attr-defined]
        if rows != shard.examples:
            raise ClusterDataError(f"{where} holds {rows} rows of {name}, index.json says {shard.examples}")
