"""What the expert and router builders share: preset lookup, shape checks, seeded init."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch

from atoll.api.presets import PRESETS, Preset
from atoll.errors import AtollError


class ModelConfigError(AtollError):
    """A model cannot be built for the data it is asked to fit (shape or preset mismatch)."""


def preset(name: str) -> Preset:
    """The named preset, or a clear error listing the known ones."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ModelConfigError(f"unknown preset {name!r}: use one of {', '.join(PRESETS)}") from None


def check_latent_shape(shape: Sequence[int], *, video: bool = False, name: str = "") -> tuple[int, ...]:
    """(C, H, W) of an image latent or (C, T, H, W) of a clip's, square, or a clear error."""
    wanted = "[C, T, H, W]" if video else "[C, H, W]"
    if len(shape) != (4 if video else 3) or any(int(s) < 1 for s in shape):
        what = f"preset {name} denoises {'clips' if video else 'images'}: " if name else ""
        raise ModelConfigError(f"{what}latent shape must be {wanted} with positive sides, got {list(shape)}")
    if int(shape[-1]) != int(shape[-2]):
        raise ModelConfigError(f"latents must be square, got {int(shape[-2])}×{int(shape[-1])}")
    return tuple(int(s) for s in shape)


@contextmanager
def seeded(seed: int | None) -> Iterator[None]:
    """Initialise under torch's global RNG seeded with `seed`, leaving the caller's RNG untouched."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
