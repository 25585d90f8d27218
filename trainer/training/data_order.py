"""Which examples an optimizer step sees, and the noise each one gets: pure functions of the seed.

Example order is a fresh permutation per epoch, seeded by (seed, epoch); step s takes the
global-batch positions s·B … s·B + B − 1 of that endless sequence. Each example's random
draws (the normal behind σ, the noise ε, the caption-dropout coin) come from a generator
seeded by (seed, step, position in the global batch). Neither depends on how the batch is
split into micro-batches, accumulation steps or GPUs, nor on where a run was resumed, so a
resumed run with a different split sees exactly the same data. Never use global RNG here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

_MASK64 = (1 << 64) - 1

# Independent random streams derived from one seed.
STREAM_ORDER = 1
STREAM_EXAMPLE = 2
STREAM_SPLIT = 3
STREAM_EVAL = 4

DATA_ORDER_VERSION = "epoch-permutation/splitmix64/v1"
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


class ExampleOrder:
    """The examples of every optimizer step: epoch-wise permutations of range(examples)."""

    def __init__(self, examples: int, *, seed: int, global_batch: int) -> None:
        if examples < 1:
            raise ValueError("there are no training examples")
        self.examples = examples
        self.seed = seed
        self.global_batch = global_batch
        self._cache: dict[int, torch.Tensor] = {}

    def permutation(self, epoch: int) -> torch.Tensor:
        """The order of epoch `epoch` (cached: consecutive steps mostly share an epoch)."""
        perm = self._cache.get(epoch)
        if perm is None:
            generator = torch.Generator().manual_seed(derive_seed(self.seed, STREAM_ORDER, epoch))
            perm = torch.randperm(self.examples, generator=generator)
            self._cache = {e: p for e, p in self._cache.items() if e >= epoch - 1}
            self._cache[epoch] = perm
        return perm

    def indices(self, step: int) -> torch.Tensor:
        """Example indices [global_batch] of optimizer step `step` (0-based)."""
        positions = torch.arange(step * self.global_batch, (step + 1) * self.global_batch)
        epochs = positions // self.examples
        within = positions % self.examples
        out = torch.empty(self.global_batch, dtype=torch.int64)
        for epoch in torch.unique(epochs).tolist():
            selected = epochs == epoch
            out[selected] = self.permutation(int(epoch))[within[selected]]
        return out

    def epoch(self, step: int) -> float:
        """Epochs completed at the start of `step`."""
        return step * self.global_batch / self.examples


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


def held_out_split(examples: int, *, seed: int, fraction: float, limit: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, held-out) example indices: a seeded random `fraction` (at most `limit`, at least 1 when
    there are 2+ examples) held out for evaluation, both sorted."""
    held = min(limit, round(examples * fraction))
    held = max(1, min(held, examples - 1)) if examples >= 2 else 0
    generator = torch.Generator().manual_seed(derive_seed(seed, STREAM_SPLIT))
    perm = torch.randperm(examples, generator=generator)
    return perm[held:].sort().values, perm[:held].sort().values
