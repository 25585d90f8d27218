"""A training stage's examples, streamed from its shards through a bounded shuffle window.

The loop asks for the examples at positions of a step's global batch; the stream finds
their window (data_order.WindowedOrder), reads that window's rows from the shards
(atoll.trainer.shardfiles) into one buffer already in shuffled order, and hands out rows.
While a window is in use the next one is read by one background thread, so at most two
windows are in memory whatever the dataset's size. The order is the pure function of
data_order: a stream built anywhere — another process, another micro-batch split, after a
resume — returns the same examples for the same positions. Never trains, never writes.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from types import TracebackType

import torch

from atoll.store import Store
from atoll.trainer.clusterdata import ClusterDataError, DataInfo, ShardRef
from atoll.trainer.shardfiles import ShardFiles
from atoll.trainer.training.data_order import Piece, WindowedOrder, WindowPlan


@dataclass(frozen=True)
class StreamSource:
    """The shards of one source (a cluster), with the rows held out of training."""

    shards: tuple[ShardRef, ...]
    held_out: dict[int, tuple[int, ...]] = field(default_factory=dict)
    """Shard index → sorted rows of that shard that training never sees (the router's held-out split)."""

    def train_rows(self) -> list[int]:
        """Training rows of each shard."""
        return [s.examples - len(self.held_out.get(j, ())) for j, s in enumerate(self.shards)]


@dataclass(frozen=True)
class StreamData:
    """Where a stage's training examples are and how they are shuffled."""

    store: Store
    sources: tuple[StreamSource, ...]
    tensors: tuple[str, ...]
    """Shard tensors the stage reads (e.g. the router without captions reads latents only)."""
    window: int
    """Examples shuffled together (spec: shuffleBuffer); memory grows with this, not the dataset."""
    row_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    """The shape one example's row of a tensor must have (from data/info.json); checked as rows are read."""

    @property
    def examples(self) -> int:
        """Training examples over all sources."""
        return sum(sum(source.train_rows()) for source in self.sources)

    def order(self, seed: int) -> WindowedOrder:
        return WindowedOrder([s.train_rows() for s in self.sources], seed=seed, window=self.window)


def row_shapes(info: DataInfo) -> dict[str, tuple[int, ...]]:
    """What one example's rows of the shard tensors look like, from data/info.json."""
    length, _ = info.text_shape
    return {"latents": tuple(info.latent_shape), "text": tuple(info.text_shape), "text_mask": (length,)}


@dataclass(frozen=True)
class ExampleBatch:
    """Examples in the order they were asked for: shard tensors by name, and their source."""

    tensors: dict[str, torch.Tensor]
    source: torch.Tensor
    """[m] int64: the source (cluster) of each example."""

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.tensors[name]

    def __len__(self) -> int:
        return int(self.source.shape[0])


WindowKey = tuple[int, int]
"""(epoch, window)."""


class ExampleStream:
    """The examples at positions of the endless training sequence, read window by window."""

    def __init__(self, data: StreamData, *, seed: int, global_batch: int, prefetch: bool = True) -> None:
        self.data = data
        self.order = data.order(seed)
        self.global_batch = global_batch
        self.prefetch = prefetch
        self.files = ShardFiles(data.store, cache_files=len(data.sources) + 2)
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="atoll-stream")
        self._windows: dict[WindowKey, Future[ExampleBatch]] = {}
        self.loads = 0
        """Windows read (or being read ahead) so far, for tests and benchmarks."""
        self.peak_rows = 0
        """Most example rows held at once (the current window plus the one being read ahead)."""

    def __enter__(self) -> ExampleStream:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Stop reading ahead and delete downloaded shards."""
        self._reader.shutdown(wait=True, cancel_futures=True)
        self._windows.clear()
        self.files.close()

    def batch(self, step: int, positions: slice) -> ExampleBatch:
        """The examples at `positions` of step `step`'s global batch (any sub-range of it)."""
        base = step * self.global_batch
        epoch, w, offsets = self.order.locate(torch.arange(base + positions.start, base + positions.stop))
        parts: list[ExampleBatch] = []
        at = 0
        for key, count in _runs(epoch, w):
            window = self._window(key)
            index = offsets[at : at + count]
            parts.append(ExampleBatch({n: t[index] for n, t in window.tensors.items()}, window.source[index]))
            at += count
        if len(parts) == 1:
            return parts[0]
        names = parts[0].tensors
        return ExampleBatch(
            {n: torch.cat([p.tensors[n] for p in parts]) for n in names}, torch.cat([p.source for p in parts])
        )

    def _window(self, key: WindowKey) -> ExampleBatch:
        for old in [k for k in self._windows if k < key]:
            del self._windows[old]  # positions only move forward: earlier windows are done
        wanted = [key, self._next(key)] if self.prefetch else [key]
        for k in wanted:
            if k not in self._windows:
                self._windows[k] = self._reader.submit(self._read, k)
                self.loads += 1
        self.peak_rows = max(self.peak_rows, sum(self.order.size(w) for _, w in self._windows))
        return self._windows[key].result()

    def _next(self, key: WindowKey) -> WindowKey:
        epoch, w = key
        return (epoch, w + 1) if w + 1 < self.order.windows else (epoch + 1, 0)

    def _read(self, key: WindowKey) -> ExampleBatch:
        """Read one window into buffers laid out in its shuffled order (runs on the reader thread)."""
        return read_window(self.files, self.data, self.order.plan(*key))


def _runs(epoch: torch.Tensor, window: torch.Tensor) -> list[tuple[WindowKey, int]]:
    """Consecutive positions that share a window: ((epoch, window), count) in order."""
    runs: list[tuple[WindowKey, int]] = []
    for e, w in zip(epoch.tolist(), window.tolist(), strict=True):
        if runs and runs[-1][0] == (e, w):
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append(((e, w), 1))
    return runs


def read_window(files: ShardFiles, data: StreamData, plan: WindowPlan) -> ExampleBatch:
    """The rows of `plan`, each written straight to its shuffled place (no second copy of the window)."""
    n = len(plan)
    place = torch.empty(n, dtype=torch.int64)
    place[plan.permutation] = torch.arange(n)  # row r of the pieces goes to place[r]
    out: dict[str, torch.Tensor] = {}
    source = torch.empty(n, dtype=torch.int64)
    at = 0
    for piece in plan.pieces:
        rows = _read_piece(files, data, piece)
        for name, shape in data.row_shapes.items():
            if name in rows and tuple(rows[name].shape[1:]) != tuple(shape):
                shard = data.sources[piece.source].shards[piece.shard]
                raise ClusterDataError(
                    f"{data.store.uri_of(shard.key)} holds {name} rows of shape {list(rows[name].shape[1:])},"
                    f" data/info.json says {list(shape)}"
                )
        where = place[at : at + len(piece)]
        for name, tensor in rows.items():
            if name not in out:
                out[name] = torch.empty((n, *tensor.shape[1:]), dtype=tensor.dtype)
            out[name][where] = tensor
        source[where] = piece.source
        at += len(piece)
    return ExampleBatch(out, source)


def _read_piece(files: ShardFiles, data: StreamData, piece: Piece) -> dict[str, torch.Tensor]:
    source = data.sources[piece.source]
    shard = source.shards[piece.shard]
    held = source.held_out.get(piece.shard, ())
    if not held:
        return files.read(shard, piece.start, piece.stop, data.tensors)
    rows = training_rows(held, piece.start, piece.stop)
    return files.read_rows(shard, rows, data.tensors)


def training_rows(held: Sequence[int], start: int, stop: int) -> torch.Tensor:
    """Shard rows of training rows [start, stop): the rows that remain once `held` (sorted) is removed."""
    first = _nth_kept(held, start)
    rows: list[int] = []
    row = first
    skip = bisect.bisect_left(held, row)
    while len(rows) < stop - start:
        if skip < len(held) and held[skip] == row:
            skip += 1
        else:
            rows.append(row)
        row += 1
    return torch.tensor(rows, dtype=torch.int64)


def _nth_kept(held: Sequence[int], n: int) -> int:
    """The shard row of training row n."""
    row = n
    for h in held:  # sorted: each held row at or before the candidate pushes it one further
        if h <= row:
            row += 1
        else:
            break
    return row
