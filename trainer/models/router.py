"""The router: a DiT-style classifier of the cluster k a noisy sample x_t came from.

It estimates p(k | x_t, σ) (and p(k | x_t, σ, caption) when conditioned on text) with the
same building blocks as the experts — patch embedding, adaLN-single timestep conditioning,
transformer blocks — and a pooled linear head over K logits. For video it patches the
whole noisy clip in (t, h, w) with 3-D sin-cos positions and pools over every token of
the clip, so it gives one distribution per clip, never per frame. A plain diffusers
model: precision, parallelism and training live in the trainer, never here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.embeddings import PatchEmbed, PixArtAlphaTextProjection, get_3d_sincos_pos_embed
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.normalization import AdaLayerNormSingle
from torch import nn

from atoll.api.presets import PresetError, get_preset
from atoll.trainer import flow
from atoll.trainer.models.common import ModelConfigError, check_latent_shape, seeded


class VideoPatchEmbed(nn.Module):
    """Clips [B, C, T, H, W] → tokens [B, T'·H'·W', D]: a (t, h, w)-strided convolution plus fixed
    3-D sin-cos positions."""

    def __init__(self, *, frames: int, side: int, patch_t: int, patch: int, in_channels: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv3d(
            in_channels, embed_dim, kernel_size=(patch_t, patch, patch), stride=(patch_t, patch, patch)
        )
        positions = get_3d_sincos_pos_embed(embed_dim, side // patch, frames // patch_t, output_type="pt")
        self.register_buffer("pos_embed", positions.flatten(0, 1).unsqueeze(0).float(), persistent=False)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        tokens: torch.Tensor = self.proj(clips).flatten(2).transpose(1, 2)
        positions = self.get_buffer("pos_embed")
        if tokens.shape[1] != positions.shape[1]:
            raise ValueError(f"this router was built for {positions.shape[1]} tokens per clip, got {tokens.shape[1]}")
        return tokens + positions.to(tokens.dtype)


class RouterModel(ModelMixin, ConfigMixin):  # type: ignore[misc]
    """Cluster classifier over noisy latents: logits [B, K] from (x_t, timestep[, caption]).

    x_t is [B, C, H, W], or a clip [B, C, T, H, W] when `num_frames` is set.
    """

    _supports_gradient_checkpointing = False

    @register_to_config  # type: ignore[untyped-decorator]
    def __init__(
        self,
        *,
        num_clusters: int = 8,
        in_channels: int = 4,
        sample_size: int = 32,
        patch_size: int = 2,
        num_attention_heads: int = 12,
        attention_head_dim: int = 64,
        num_layers: int = 12,
        caption_channels: int | None = None,
        norm_eps: float = 1e-6,
        num_frames: int | None = None,
        patch_size_t: int = 1,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        if num_clusters < 1:
            raise ModelConfigError(f"the router needs at least one cluster, got {num_clusters}")
        inner = num_attention_heads * attention_head_dim
        self.pos_embed: nn.Module
        if num_frames is None:
            self.pos_embed = PatchEmbed(  # type: ignore[no-untyped-call]
                height=sample_size,
                width=sample_size,
                patch_size=patch_size,
                in_channels=in_channels,
                embed_dim=inner,
                interpolation_scale=1,
            )
        else:
            self.pos_embed = VideoPatchEmbed(
                frames=num_frames,
                side=sample_size,
                patch_t=patch_size_t,
                patch=patch_size,
                in_channels=in_channels,
                embed_dim=inner,
            )
        self.adaln_single = AdaLayerNormSingle(inner, use_additional_conditions=False)
        self.caption_projection = (
            PixArtAlphaTextProjection(  # type: ignore[no-untyped-call]
                in_features=caption_channels, hidden_size=inner
            )
            if caption_channels is not None
            else None
        )
        self.transformer_blocks = nn.ModuleList(
            [
                BasicTransformerBlock(
                    inner,
                    num_attention_heads,
                    attention_head_dim,
                    cross_attention_dim=inner if caption_channels is not None else None,
                    activation_fn="gelu-approximate",
                    num_embeds_ada_norm=1000,
                    attention_bias=True,
                    norm_type="ada_norm_single",
                    norm_elementwise_affine=False,
                    norm_eps=norm_eps,
                )
                for _ in range(num_layers)
            ]
        )
        self.norm_out = nn.LayerNorm(inner, elementwise_affine=False, eps=norm_eps)
        self.scale_shift_table = nn.Parameter(torch.randn(2, inner) / inner**0.5)
        self.head = nn.Linear(inner, num_clusters)

    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Cluster logits [B, K] for latents [B, C, H, W] (or clips [B, C, T, H, W]) at timesteps [B] (1000·σ)."""
        batch = hidden_states.shape[0]
        tokens = self.pos_embed(hidden_states)
        block_modulation, embedded_timestep = self.adaln_single(
            timestep, None, batch_size=batch, hidden_dtype=tokens.dtype
        )
        caption = None
        bias = None
        if self.caption_projection is not None:
            if encoder_hidden_states is None:
                raise ValueError("this router is conditioned on text: pass encoder_hidden_states")
            caption = self.caption_projection(encoder_hidden_states.to(tokens.dtype)).view(batch, -1, tokens.shape[-1])
            if encoder_attention_mask is not None:
                # Same convention as PixArt: boolean keep-mask → additive bias [B, 1, L].
                bias = ((1 - encoder_attention_mask.to(tokens.dtype)) * -10000.0).unsqueeze(1)
        for block in self.transformer_blocks:
            tokens = block(
                tokens,
                encoder_hidden_states=caption,
                encoder_attention_mask=bias,
                timestep=block_modulation,
            )
        shift, scale = (self.scale_shift_table[None] + embedded_timestep[:, None]).chunk(2, dim=1)
        tokens = self.norm_out(tokens) * (1 + scale) + shift
        logits: torch.Tensor = self.head(tokens.mean(dim=1))
        return logits


def router_config(
    name: str, *, clusters: int, latent_shape: Sequence[int], text_dim: int | None = None
) -> dict[str, Any]:
    """The RouterModel config of preset `name` for K clusters (text_dim set: condition on the caption).

    latent_shape [C, T, H, W] makes a router over whole clips, patched (t, h, w) by the preset.
    """
    try:
        arch = get_preset(name).architecture
    except PresetError as error:
        raise ModelConfigError(str(error)) from None
    video = len(latent_shape) == 4
    shape = check_latent_shape(latent_shape, video=video)
    channels, side = shape[0], shape[-1]
    if shape[-2] != side:
        raise ModelConfigError(f"the router needs square latents, got {shape[-2]}×{side}")
    patch, patch_t = arch.patch[-1], arch.patch[0] if arch.video else 1  # an image preset patches clips (1, p, p)
    if side % patch:
        raise ModelConfigError(f"latent side {side} is not a multiple of preset {name}'s patch size {patch}")
    if video and shape[1] % patch_t:
        raise ModelConfigError(f"{shape[1]} latent frames are not a multiple of preset {name}'s patch {patch_t}")
    if video and arch.hidden_size % 16:
        raise ModelConfigError(
            f"a video router needs a width divisible by 16 (3-D positions), {name}'s is {arch.hidden_size}"
        )
    clip = {"num_frames": shape[1], "patch_size_t": patch_t} if video else {}
    return {
        **clip,
        "num_clusters": clusters,
        "in_channels": channels,
        "sample_size": side,
        "patch_size": patch,
        "num_attention_heads": arch.heads,
        "attention_head_dim": arch.head_dim,
        "num_layers": arch.depth,
        "caption_channels": text_dim,
    }


def build_router(
    name: str, *, clusters: int, latent_shape: Sequence[int], text_dim: int | None = None, seed: int | None = None
) -> RouterModel:
    """A freshly initialised router (deterministic when `seed` is given)."""
    config = router_config(name, clusters=clusters, latent_shape=latent_shape, text_dim=text_dim)
    with seeded(seed):
        model: RouterModel = RouterModel.from_config(config)
    return model


def router_parameter_count(
    name: str, *, clusters: int = 8, latent_shape: Sequence[int] = (4, 32, 32), text_dim: int | None = None
) -> int:
    """Exact parameter count of a router, built on the meta device (no memory allocated)."""
    with torch.device("meta"):
        model = RouterModel.from_config(
            router_config(name, clusters=clusters, latent_shape=latent_shape, text_dim=text_dim)
        )
    return sum(p.numel() for p in model.parameters())


def router_logits(
    router: torch.nn.Module,
    x_t: torch.Tensor,
    sigma: torch.Tensor,
    text: torch.Tensor | None = None,
    text_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cluster logits [B, K] for noisy latents at noise levels σ; the caption is used only if the router takes it."""
    uses_text = getattr(_unwrap(router), "caption_projection", None) is not None
    logits: torch.Tensor = router(
        x_t,
        flow.timestep(sigma),
        encoder_hidden_states=text if uses_text else None,
        encoder_attention_mask=text_mask if uses_text else None,
    )
    return logits


def _unwrap(module: torch.nn.Module) -> torch.nn.Module:
    inner = getattr(module, "module", module)  # DistributedDataParallel keeps the model in .module
    assert isinstance(inner, torch.nn.Module)
    return inner
