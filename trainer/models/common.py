"""What the expert and router builders share: preset lookup, shape checks (images and clips), seeded init."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch

from atoll.api.presets import Architecture, PresetError, get_preset
from atoll.errors import BadInputError


class ModelConfigError(BadInputError):
    """A model cannot be built for the data it is asked to fit (shape or preset mismatch)."""


def architecture(name: str, latent_shape: Sequence[int]) -> tuple[Architecture, tuple[int, ...]]:
    """Preset `name`'s architecture and the latent shape it must patch — [C, H, W] for image (dit)
    presets, [C, T, H, W] for video (wan) ones, square, every side a multiple of the patch — or a
    clear error."""
    try:
        arch = get_preset(name).architecture
    except PresetError as error:
        raise ModelConfigError(str(error)) from None
    shape = check_latent_shape(latent_shape, video=arch.video, name=name)
    if shape[-1] != shape[-2]:
        raise ModelConfigError(f"preset {name} needs square latents, got {shape[-2]}×{shape[-1]}")
    if arch.patch[-1] != arch.patch[-2]:
        raise ModelConfigError(f"preset {name} has a non-square patch {arch.patch}")
    if shape[-1] % arch.patch[-1]:
        raise ModelConfigError(
            f"latent side {shape[-1]} is not a multiple of preset {name}'s patch size {arch.patch[-1]}"
        )
    if arch.video and shape[1] % arch.patch[0]:
        raise ModelConfigError(
            f"{shape[1]} latent frames are not a multiple of preset {name}'s temporal patch {arch.patch[0]}"
        )
    return arch, shape


def image_architecture(name: str, latent_shape: Sequence[int]) -> tuple[Architecture, int, int]:
    """Preset `name`'s architecture, a 2-D (dit) one, and (C, side) of the square latent [C, H, W] it
    must patch; a clear error otherwise."""
    arch, shape = architecture(name, latent_shape)
    if arch.family != "dit":
        raise ModelConfigError(f"preset {name} is a {arch.family} model, this builder takes dit presets")
    return arch, shape[0], shape[-1]


def check_latent_shape(shape: Sequence[int], *, video: bool = False, name: str = "") -> tuple[int, ...]:
    """(C, H, W) of an image latent or (C, T, H, W) of a clip's with positive sides, or a clear error."""
    wanted = "[C, T, H, W]" if video else "[C, H, W]"
    if len(shape) != (4 if video else 3) or any(int(s) < 1 for s in shape):
        what = f"preset {name} denoises {'clips' if video else 'images'}: " if name else ""
        raise ModelConfigError(f"{what}latent shape must be {wanted} with positive sides, got {list(shape)}")
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
