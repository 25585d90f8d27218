"""Expert denoisers sized by a named preset: PixArt-style for images, Wan for video.

Image presets build diffusers' PixArtTransformer2DModel over latents [C, H, W]; video
presets build diffusers' WanTransformer3DModel over clips [C, T, H, W] (3-D RoPE,
cross-attention to the caption, any frame count), optionally with fixed 3-D sin-cos positions
added to its patch tokens (a config key, so saved models keep it). An expert predicts the flow-matching
velocity of its cluster, conditioned on the caption by cross-attention and on the timestep
1000·σ. Training, assembly and sampling all call `velocity(...)` so the conditioning
convention — including image-to-video's clean first frame — lives in one place.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import torch

from atoll.api.presets import get_preset
from atoll.trainer import flow
from atoll.trainer.models.common import ModelConfigError, architecture, seeded

WAN_FREQ_DIM = 256
"""Width of the sinusoidal timestep features of Wan experts (Wan 2.1's)."""

PREDICTION_KEY = "_prediction_type"
"""Config key (kept by diffusers' save/load, private so it warns nobody) naming what an expert's
network outputs: "sample" (the clean x0, converted to a velocity by `velocity`) or, when absent,
"flow_prediction" (the velocity itself)."""

POSITIONS_KEY = "_absolute_positions"
"""Config key (private, kept by save/load like PREDICTION_KEY) of Wan experts that add fixed 3-D sin-cos
positions to their patch tokens: "sincos-3d", or absent for RoPE only (diffusers' Wan)."""

SINCOS_3D = "sincos-3d"

SAMPLE_PREDICTION_MIN_SIGMA = 0.05
"""σ floor of the x0 → velocity conversion v = (x_t − x̂0) / max(σ, floor), so that the
velocity stays bounded as σ → 0 (JiT's 0.05, "Back to Basics: Let Denoising Generative Models
Denoise", Li & He 2025)."""


def expert_config(name: str, *, latent_shape: Sequence[int], text_dim: int) -> dict[str, Any]:
    """The diffusers config of preset `name` for latents [C, H, W] (or clips [C, T, H, W]) and captions of width D."""
    arch, shape = architecture(name, latent_shape)
    if text_dim < 1:
        raise ModelConfigError(f"text embedding width must be positive, got {text_dim}")
    channels = shape[0]
    if arch.video:
        return {
            "_class_name": "WanTransformer3DModel",
            "patch_size": list(arch.patch),
            "num_attention_heads": arch.heads,
            "attention_head_dim": arch.head_dim,
            "in_channels": channels,
            "out_channels": channels,
            "text_dim": text_dim,
            "freq_dim": WAN_FREQ_DIM,
            "ffn_dim": arch.ffn_dim,
            "num_layers": arch.depth,
            "cross_attn_norm": True,
            "qk_norm": "rms_norm_across_heads",
            "eps": 1e-6,
            "rope_max_seq_len": 1024,
            # Wan experts predict the clean clip: a velocity target (mostly the noise) has to pass
            # every pixel's noise through the network, which a patch of 3·1·4·4 = 48 values per
            # 64-wide token cannot (docs/video.md, "Why the video experts predict x0").
            PREDICTION_KEY: "sample",
            # RoPE alone gives attention relative offsets only; absolute positions tell a token where
            # in the clip it is, which the x0 estimate from near-pure noise needs (docs/video.md).
            **({POSITIONS_KEY: SINCOS_3D} if arch.absolute_positions else {}),
        }
    return {
        "_class_name": "PixArtTransformer2DModel",
        "num_attention_heads": arch.heads,
        "attention_head_dim": arch.head_dim,
        "in_channels": channels,
        "out_channels": channels,  # velocity only: no learned variance channels
        "num_layers": arch.depth,
        "cross_attention_dim": arch.hidden_size,  # the caption is projected to the width first
        "caption_channels": text_dim,
        "sample_size": shape[-1],
        "patch_size": arch.patch[-1],
        # PixArt switches on resolution/aspect-ratio conditioning when sample_size == 128;
        # our experts condition on the timestep and caption only, at every size.
        "use_additional_conditions": False,
        "interpolation_scale": 1,
    }


def expert_class(config: dict[str, Any]) -> type[Any]:
    """The diffusers class an expert config names."""
    from diffusers import PixArtTransformer2DModel, WanTransformer3DModel

    return WanTransformer3DModel if config["_class_name"] == "WanTransformer3DModel" else PixArtTransformer2DModel


def build_expert(name: str, *, latent_shape: Sequence[int], text_dim: int, seed: int | None = None) -> torch.nn.Module:
    """A freshly initialised expert (deterministic when `seed` is given)."""
    config = expert_config(name, latent_shape=latent_shape, text_dim=text_dim)
    with seeded(seed):
        model: torch.nn.Module = expert_class(config).from_config(config)
    attach_positions(model)
    return model


def expert_parameter_count(name: str, *, latent_shape: Sequence[int] | None = None, text_dim: int = 768) -> int:
    """Exact parameter count of an expert, built on the meta device (no memory allocated)."""
    if latent_shape is None:
        latent_shape = (16, 4, 32, 32) if get_preset(name).architecture.video else (4, 32, 32)
    config = expert_config(name, latent_shape=latent_shape, text_dim=text_dim)
    with torch.device("meta"):
        model = expert_class(config).from_config(config)
    return sum(p.numel() for p in model.parameters())


def is_video_expert(expert: torch.nn.Module) -> bool:
    """Whether an expert denoises clips (a Wan transformer)."""
    inner = getattr(expert, "module", expert)  # DistributedDataParallel keeps the model in .module
    return type(inner).__name__ == "WanTransformer3DModel"


def prediction_type(expert: torch.nn.Module) -> str:
    """What an expert's network outputs: "sample" (x0) or "flow_prediction" (the velocity)."""
    config: Any = getattr(getattr(expert, "module", expert), "config", {})
    return str(config.get(PREDICTION_KEY, "flow_prediction"))


@functools.lru_cache(maxsize=32)
def sincos_positions(dim: int, frames: int, rows: int, cols: int) -> torch.Tensor:
    """Fixed 3-D sin-cos positions [dim, frames, rows, cols] of a patch-token grid (float32, CPU):
    3/4 of the channels for (h, w), 1/4 for t, as the video router's."""
    from diffusers.models.embeddings import get_3d_sincos_pos_embed

    table = get_3d_sincos_pos_embed(dim, (cols, rows), frames, output_type="pt")  # [T, rows·cols, D], row-major
    return table.permute(2, 0, 1).reshape(dim, frames, rows, cols).float().contiguous()


def _add_positions(module: torch.nn.Module, inputs: Any, tokens: torch.Tensor) -> torch.Tensor:
    """Forward hook of a Wan expert's patch embedding: its output [B, D, T', H', W'] plus the positions."""
    positions = sincos_positions(*(int(v) for v in tokens.shape[1:]))
    return tokens + positions.to(device=tokens.device, dtype=tokens.dtype)


def uses_absolute_positions(expert: torch.nn.Module) -> bool:
    """Whether a (Wan) expert's config asks for 3-D sin-cos positions on its patch tokens."""
    config: Any = getattr(getattr(expert, "module", expert), "config", {})
    return bool(config.get(POSITIONS_KEY) == SINCOS_3D)


def attach_positions(expert: torch.nn.Module) -> None:
    """Make a Wan expert whose config asks for absolute positions add them (idempotent; kept by
    deepcopy). Building and loading an expert call it, and so does `velocity`, for experts that
    diffusers' own loader built."""
    if not uses_absolute_positions(expert):
        return
    inner: Any = getattr(expert, "module", expert)  # DistributedDataParallel keeps the model in .module
    embedding: torch.nn.Module = inner.patch_embedding
    if _add_positions not in embedding._forward_hooks.values():
        embedding.register_forward_hook(_add_positions)


def velocity_from_sample(x_t: torch.Tensor, sample: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The velocity (x_t − x̂0) / max(σ, floor) implied by a clean-sample prediction x̂0 at noise levels σ ([B]).

    Exact for σ ≥ the floor: one Euler step from σ to 0 then lands on x̂0.
    """
    floor = sigma.float().clamp(min=SAMPLE_PREDICTION_MIN_SIGMA)
    scale = floor.reshape(-1, *([1] * (x_t.ndim - 1))).to(x_t.dtype)
    return (x_t - sample.to(x_t.dtype)) / scale


def token_timesteps(
    sigma: torch.Tensor, x_t: torch.Tensor, patch: Sequence[int], condition: torch.Tensor
) -> torch.Tensor:
    """Per-token timesteps [B, tokens] of clips x_t [B, C, T, H, W]: 1000·σ, and 0 on the first latent
    frame's tokens of the clips whose first frame is a clean condition (`condition` [B] bool).

    Wan 2.2's TI2V convention: a given first frame is a sample at σ = 0.
    """
    _, _, frames, height, width = x_t.shape
    p_t, p_h, p_w = (int(v) for v in patch)
    per_frame = (height // p_h) * (width // p_w)
    steps = flow.timestep(sigma).float()[:, None, None].expand(-1, frames // p_t, per_frame).clone()
    steps[:, 0] = torch.where(condition[:, None], torch.zeros_like(steps[:, 0]), steps[:, 0])
    return steps.flatten(1)


def velocity(
    expert: torch.nn.Module,
    x_t: torch.Tensor,
    sigma: torch.Tensor,
    text: torch.Tensor,
    text_mask: torch.Tensor,
    *,
    first_frame_given: torch.Tensor | None = None,
) -> torch.Tensor:
    """The expert's velocity prediction for noisy latents x_t at noise levels σ ([B]).

    first_frame_given ([B] bool, clips only): those clips' first latent frame is a clean
    condition (image-to-video), which the expert sees at timestep 0.
    """
    dtype = x_t.dtype
    if is_video_expert(expert):
        attach_positions(expert)
        timestep = flow.timestep(sigma)
        if first_frame_given is not None and bool(first_frame_given.any()):
            config: Any = getattr(expert, "module", expert).config
            timestep = token_timesteps(sigma, x_t, config.patch_size, first_frame_given)
        # Wan attends to every caption token: padded positions of our encoders are zero vectors,
        # as Wan pads its own captions.
        out: torch.Tensor = expert(x_t, timestep=timestep, encoder_hidden_states=text.to(dtype), return_dict=False)[0]
        if prediction_type(expert) == "sample":
            return velocity_from_sample(x_t, out, sigma)
        return out
    if first_frame_given is not None and bool(first_frame_given.any()):
        raise ModelConfigError("a first-frame condition is for video experts; this expert denoises images")
    image_out: torch.Tensor = expert(
        x_t,
        encoder_hidden_states=text.to(dtype),
        encoder_attention_mask=text_mask,
        timestep=flow.timestep(sigma),
        return_dict=False,
    )[0]
    return image_out
