"""What the expert and router builders share: preset lookup, shape checks, seeded init."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch

from atoll.api.presets import Architecture, PresetError, get_preset
from atoll.errors import BadInputError


class ModelConfigError(BadInputError):
    """A model cannot be built for the data it is asked to fit (shape or preset mismatch)."""


def image_architecture(name: str, latent_shape: Sequence[int]) -> tuple[Architecture, int, int]:
    """Preset `name`'s architecture, a 2-D (dit) one with square patches, and (C, side) of the
    square latent [C, H, W] it must patch; a clear error otherwise."""
    try:
        arch = get_preset(name).architecture
    except PresetError as error:
        raise ModelConfigError(str(error)) from None
    if arch.family != "dit":
        raise ModelConfigError(f"preset {name} is a {arch.family} model, this builder takes dit presets")
    channels, height, width = check_latent_shape(latent_shape)
    if height != width:
        raise ModelConfigError(f"preset {name} needs square latents, got {height}×{width}")
    side = arch.patch[0]
    if arch.patch != (side, side):
        raise ModelConfigError(f"preset {name} has a non-square patch {arch.patch}")
    if height % side:
        raise ModelConfigError(f"latent side {height} is not a multiple of preset {name}'s patch size {side}")
    return arch, channels, height


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
