"""The router: a DiT-style classifier of the cluster k a noisy sample x_t came from.

It estimates p(k | x_t, σ) (and p(k | x_t, σ, caption) when conditioned on text) with the
same building blocks as the experts — patch embedding, adaLN-single timestep conditioning,
transformer blocks — and a pooled linear head over K logits. A plain diffusers model:
precision, parallelism and training live in the trainer, never here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.embeddings import PatchEmbed, PixArtAlphaTextProjection
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.normalization import AdaLayerNormSingle
from torch import nn

from atoll.trainer import flow
from atoll.trainer.models.common import ModelConfigError, image_architecture, seeded


class RouterModel(ModelMixin, ConfigMixin):  # type: ignore[misc]
    """Cluster classifier over noisy latents: logits [B, K] from (x_t, timestep[, caption])."""

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
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        if num_clusters < 1:
            raise ModelConfigError(f"the router needs at least one cluster, got {num_clusters}")
        inner = num_attention_heads * attention_head_dim
        self.pos_embed = PatchEmbed(  # type: ignore[no-untyped-call]
            height=sample_size,
            width=sample_size,
            patch_size=patch_size,
            in_channels=in_channels,
            embed_dim=inner,
            interpolation_scale=1,
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
        """Cluster logits [B, K] for latents [B, C, H, W] at timesteps [B] (1000·σ)."""
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
    """The RouterModel config of preset `name` for K clusters (text_dim set: condition on the caption)."""
    arch, channels, side = image_architecture(name, latent_shape)
    return {
        "num_clusters": clusters,
        "in_channels": channels,
        "sample_size": side,
        "patch_size": arch.patch[0],
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
