"""Which examples an optimizer step sees, and the noise each one gets: pure functions of the seed.

The examples live in shards grouped into sources (one cluster for an expert, every cluster
for the router). Each epoch reads every source's shards in a fresh order seeded by (seed,
epoch, source) and cuts the epoch into W windows of at most `window` examples (plus one per
source): window w takes the w-th W-th of every source's sequence, so each window mixes the
sources in proportion to their size, and its examples are permuted, seeded by (seed, epoch,
w). Only a window has to be in memory (the shuffle buffer of WebDataset and torchtitan),
yet the order is a pure function of (seed, position): step s takes positions s·B … s·B + B − 1
of the endless sequence of epochs. Each example's random draws (the normal behind σ, the
noise ε, the caption-dropout coin) come from a generator seeded by (seed, step, position in
the global batch). Neither depends on how the batch is split into micro-batches,
accumulation steps or GPUs, nor on where a run was resumed, so a resumed run with a
different split sees exactly the same data. Never use global RNG here.
"""

from __future__ import annotations

import bisect
import itertools
import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch

_MASK64 = (1 << 64) - 1

# Independent random streams derived from one seed.
STREAM_ORDER = 1
STREAM_EXAMPLE = 2
STREAM_SPLIT = 3
STREAM_EVAL = 4
STREAM_SHARDS = 5

DATA_ORDER_VERSION = "shard-windows/splitmix64/v2"
"""Recorded in checkpoints: a resume refuses a checkpoint made with another scheme."""


def derive_seed(*parts: int) -> int:
    """A 63-bit seed mixed from integers with splitmix64 (deterministic across processes and platforms)."""
    state = 0
    for part in parts:
        state = _splitmix64(state ^ (part & _MASK64))
    return state >> 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


@dataclass(frozen=True, slots=True)
class Piece:
    """Rows [start, stop) of one shard of one source, counted among the shard's training rows."""

    source: int
    shard: int
    start: int
    stop: int

    def __len__(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class WindowPlan:
    """What one window holds: pieces of shards in reading order, and the shuffle applied to them."""

    epoch: int
    window: int
    pieces: tuple[Piece, ...]
    permutation: torch.Tensor
    """[n] example j of the window is row permutation[j] of the pieces concatenated."""

    def __len__(self) -> int:
        return int(self.permutation.shape[0])


class WindowedOrder:
    """The example at every position of the endless training sequence, window by window.

    `shards[k][j]` is the number of training rows of shard j of source k. Pure: the same
    arguments give the same order in every process, at any step, in any call order.
    """

    def __init__(self, shards: Sequence[Sequence[int]], *, seed: int, window: int) -> None:
        if window < 1:
            raise ValueError(f"the shuffle window must hold at least 1 example, got {window}")
        self.shards = [[int(n) for n in source] for source in shards]
        self.sizes = [sum(source) for source in self.shards]
        self.examples = sum(self.sizes)
        if self.examples < 1:
            raise ValueError("there are no training examples")
        self.seed = seed
        self.window = window
        self.windows = -(-self.examples // window)
        """Windows per epoch."""
        starts = torch.zeros(self.windows + 1, dtype=torch.int64)
        w = torch.arange(self.windows + 1, dtype=torch.int64)
        for n in self.sizes:
            starts += w * n // self.windows
        self.starts = starts
        """[windows + 1]: epoch offset of each window's first example (and the epoch's length)."""

    def size(self, w: int) -> int:
        """Examples in window w (the same in every epoch)."""
        return int(self.starts[w + 1] - self.starts[w])

    def locate(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(epoch, window, offset in the window) of each position [m] of the endless sequence."""
        epoch, within = positions // self.examples, positions % self.examples
        w = torch.searchsorted(self.starts, within, right=True) - 1
        return epoch, w, within - self.starts[w]

    def shard_order(self, epoch: int, source: int) -> list[int]:
        """The order source `source` reads its shards in during `epoch`."""
        generator = torch.Generator().manual_seed(derive_seed(self.seed, STREAM_SHARDS, epoch, source))
        return [int(j) for j in torch.randperm(len(self.shards[source]), generator=generator)]

    def plan(self, epoch: int, w: int) -> WindowPlan:
        """Window w of `epoch`: its pieces and its permutation."""
        if not 0 <= w < self.windows:
            raise IndexError(f"window {w} out of range for {self.windows} windows")
        pieces: list[Piece] = []
        for source, n in enumerate(self.sizes):
            first, last = w * n // self.windows, (w + 1) * n // self.windows
            if first == last:
                continue
            order = self.shard_order(epoch, source)
            counts = [self.shards[source][j] for j in order]
            ends = list(itertools.accumulate(counts))
            # Walk the shards in this epoch's order that overlap [first, last).
            at = bisect.bisect_right(ends, first)
            while first < last:
                begin = ends[at] - counts[at]
                stop = min(last, ends[at])
                pieces.append(Piece(source, order[at], first - begin, stop - begin))
                first = stop
                at += 1
        length = sum(len(p) for p in pieces)
        generator = torch.Generator().manual_seed(derive_seed(self.seed, STREAM_ORDER, epoch, w))
        return WindowPlan(epoch, w, tuple(pieces), torch.randperm(length, generator=generator))

    def epoch(self, step: int, global_batch: int) -> float:
        """Epochs completed at the start of `step`."""
        return step * global_batch / self.examples


@dataclass(frozen=True)
class ExampleDraws:
    """The random numbers of a run of examples, one row per example."""

    normal: torch.Tensor
    """[m] standard normal: mapped to σ by the stage's timestep distribution."""
    noise: torch.Tensor
    """[m, *latent_shape] standard normal: the ε of the forward process."""
    uniform: torch.Tensor
    """[m] uniform in [0, 1): caption dropout when below the dropout probability."""
    condition: torch.Tensor
    """[m] uniform in [0, 1): a clip's first frame is given as a condition when below
    expert.firstFrameConditioning (drawn after the others, so they do not depend on it)."""


def draw_examples(
    seed: int, step: int, positions: Sequence[int] | range, latent_shape: Sequence[int], *, stream: int = STREAM_EXAMPLE
) -> ExampleDraws:
    """Draws for the examples at `positions` of step `step`'s global batch (float32, CPU)."""
    m = len(positions)
    normal = torch.empty(m)
    uniform = torch.empty(m)
    condition = torch.empty(m)
    noise = torch.empty(m, *latent_shape)
    generator = torch.Generator()
    for row, position in enumerate(positions):
        generator.manual_seed(derive_seed(seed, stream, step, position))
        normal[row] = torch.randn((), generator=generator)
        uniform[row] = torch.rand((), generator=generator)
        torch.randn(tuple(latent_shape), generator=generator, out=noise[row])
        condition[row] = torch.rand((), generator=generator)
    return ExampleDraws(normal=normal, noise=noise, uniform=uniform, condition=condition)


def held_out_rows(examples: int, *, seed: int, fraction: float, limit: int) -> torch.Tensor:
    """The sorted rows of range(examples) held out for evaluation: a seeded random `fraction` of
    them, at most `limit`, at least 1 when there are 2+ examples. Memory grows with the rows
    held out, not with `examples` (sampling without a permutation of the whole range)."""
    held = min(limit, round(examples * fraction))
    held = max(1, min(held, examples - 1)) if examples >= 2 else 0
    rows = random.Random(derive_seed(seed, STREAM_SPLIT)).sample(range(examples), held)  # noqa: S311 - not crypto
    return torch.tensor(sorted(rows), dtype=torch.int64)
