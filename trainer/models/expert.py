"""Expert denoisers: diffusers' PixArtTransformer2DModel sized by a named preset.

An expert predicts the flow-matching velocity of its cluster, conditioned on the caption
by cross-attention and on the timestep 1000·σ by adaLN-single. Training, assembly and
sampling all call `velocity(...)` so the conditioning convention lives in one place.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from atoll.trainer import flow
from atoll.trainer.models.common import ModelConfigError, image_architecture, seeded

if TYPE_CHECKING:
    from diffusers import PixArtTransformer2DModel


def expert_config(name: str, *, latent_shape: Sequence[int], text_dim: int) -> dict[str, Any]:
    """The PixArtTransformer2DModel config of preset `name` for latents [C, H, W] and captions of width D."""
    arch, channels, side = image_architecture(name, latent_shape)
    if text_dim < 1:
        raise ModelConfigError(f"text embedding width must be positive, got {text_dim}")
    return {
        "num_attention_heads": arch.heads,
        "attention_head_dim": arch.head_dim,
        "in_channels": channels,
        "out_channels": channels,  # velocity only: no learned variance channels
        "num_layers": arch.depth,
        "cross_attention_dim": arch.hidden_size,  # the caption is projected to the width first
        "caption_channels": text_dim,
        "sample_size": side,
        "patch_size": arch.patch[0],
        # PixArt switches on resolution/aspect-ratio conditioning when sample_size == 128;
        # our experts condition on the timestep and caption only, at every size.
        "use_additional_conditions": False,
        "interpolation_scale": 1,
    }


def build_expert(
    name: str, *, latent_shape: Sequence[int], text_dim: int, seed: int | None = None
) -> PixArtTransformer2DModel:
    """A freshly initialised expert (deterministic when `seed` is given)."""
    from diffusers import PixArtTransformer2DModel

    config = expert_config(name, latent_shape=latent_shape, text_dim=text_dim)
    with seeded(seed):
        model: PixArtTransformer2DModel = PixArtTransformer2DModel.from_config(  # type: ignore[no-untyped-call]
            config
        )
    return model


def expert_parameter_count(name: str, *, latent_shape: Sequence[int] = (4, 32, 32), text_dim: int = 768) -> int:
    """Exact parameter count of an expert, built on the meta device (no memory allocated)."""
    from diffusers import PixArtTransformer2DModel

    with torch.device("meta"):
        model = PixArtTransformer2DModel.from_config(  # type: ignore[no-untyped-call]
            expert_config(name, latent_shape=latent_shape, text_dim=text_dim)
        )
    return sum(p.numel() for p in model.parameters())


def velocity(
    expert: torch.nn.Module,
    x_t: torch.Tensor,
    sigma: torch.Tensor,
    text: torch.Tensor,
    text_mask: torch.Tensor,
) -> torch.Tensor:
    """The expert's velocity prediction for noisy latents x_t at noise levels σ ([B])."""
    dtype = x_t.dtype
    out: torch.Tensor = expert(
        x_t,
        encoder_hidden_states=text.to(dtype),
        encoder_attention_mask=text_mask,
        timestep=flow.timestep(sigma),
        return_dict=False,
    )[0]
    return out
