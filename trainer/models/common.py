"""What the expert and router builders share: preset lookup, shape checks, seeded init."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch

from atoll.api.presets import PRESETS, Preset
from atoll.errors import BadInputError


class ModelConfigError(BadInputError):
    """A model cannot be built for the data it is asked to fit (shape or preset mismatch)."""


def preset(name: str) -> Preset:
    """The named preset, or a clear error listing the known ones."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ModelConfigError(f"unknown preset {name!r}: use one of {', '.join(PRESETS)}") from None


def check_latent_shape(shape: Sequence[int]) -> tuple[int, int, int]:
    """(C, H, W) of a latent shape, or a clear error."""
    if len(shape) != 3 or any(int(s) < 1 for s in shape):
        raise ModelConfigError(f"latent shape must be [C, H, W] with positive sides, got {list(shape)}")
    return int(shape[0]), int(shape[1]), int(shape[2])


@contextmanager
def seeded(seed: int | None) -> Iterator[None]:
    """Initialise under torch's global RNG seeded with `seed`, leaving the caller's RNG untouched."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
