"""Named model presets and their published training recipes, as plain data.

The trainer builds diffusers models from these numbers, the planner estimates memory and
speed from them, and the API fills preset-dependent defaults from them. Pure data: this
module must never import torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

PresetName = Literal[
    "tiny", "dit-s/2", "dit-b/2", "dit-l/2", "dit-xl/2", "video-tiny", "video-s", "video-b", "wan-1.3b"
]
PRESET_NAMES: tuple[PresetName, ...] = (
    "tiny",
    "dit-s/2",
    "dit-b/2",
    "dit-l/2",
    "dit-xl/2",
    "video-tiny",
    "video-s",
    "video-b",
    "wan-1.3b",
)
Family = Literal["dit", "wan"]


@dataclass(frozen=True, kw_only=True, slots=True)
class Preset:
    """Architecture and training recipe of one transformer preset."""

    name: str
    hidden_size: int
    """Width of the transformer (DiT's `hidden_size`)."""
    depth: int
    """Number of transformer blocks."""
    heads: int
    """Attention heads; hidden_size // heads is the head dimension."""
    patch_size: int
    """Side of the square latent patch that becomes one token."""
    learning_rate: float
    """AdamW learning rate of the published recipe."""
    global_batch_size: int
    """Examples per optimizer step, summed over all GPUs and accumulation steps."""
    warmup_steps: int
    """Linear learning-rate warm-up from 0."""
    weight_decay: float
    """AdamW decoupled weight decay."""
    ema_decay: float
    """Decay of the exponential moving average of the weights used for sampling."""
    checkpoint_every: int
    """Default checkpoint interval in optimizer steps."""
    family: Family = "dit"
    """dit: image experts (PixArt/DiT blocks over [C, H, W]); wan: video experts
    (diffusers' WanTransformer3DModel over clips [C, T, H, W], 3-D RoPE)."""
    patch_frames: int = 1
    """Latent frames per token (the t of a (t, h, w) patch; 1 for images)."""
    ffn_dim: int = 0
    """Feed-forward width (wan); 0 means DiT's ratio 4 (4 · hidden_size)."""

    @property
    def video(self) -> bool:
        """Whether this preset denoises clips (frames > 1) rather than images."""
        return self.family == "wan"

    @property
    def patch(self) -> tuple[int, int, int]:
        """The (t, h, w) patch that becomes one token."""
        return self.patch_frames, self.patch_size, self.patch_size

    @property
    def feed_forward(self) -> int:
        """The MLP's hidden width."""
        return self.ffn_dim or 4 * self.hidden_size

    def tokens(self, latent_shape: tuple[int, ...]) -> int:
        """Tokens of one latent [C, H, W] or [C, T, H, W]: frames × height × width / patch volume."""
        frames = latent_shape[1] if len(latent_shape) == 4 else 1
        height, width = latent_shape[-2:]
        return (
            max(1, frames // self.patch_frames) * max(1, height // self.patch_size) * max(1, width // self.patch_size)
        )

    def approx_parameters(self, in_channels: int = 4, text_dim: int = 768) -> int:
        """Parameter count of the text-conditioned transformer, to within a few percent.

        Per block: self-attention (4·h²), cross-attention over the caption after it is
        projected to width h (4·h²) and an MLP (2·h·ffn, 8·h² at DiT's ratio 4); plus the
        patch embedding, caption projection, timestep embedding and final layer. Good
        enough for memory planning.
        """
        h = self.hidden_size
        per_block = 4 * h * h + 4 * h * h + 2 * h * self.feed_forward
        patch_volume = self.patch_frames * self.patch_size * self.patch_size
        patch = patch_volume * in_channels * h
        caption = text_dim * h + h * h
        timestep = 256 * h + h * h + 6 * h * h
        final = h * patch_volume * in_channels
        return self.depth * per_block + patch + caption + timestep + final


# DiT (Peebles & Xie, 2023): AdamW, lr 1e-4, no weight decay, batch 256, EMA 0.9999;
# Paris 1.0 trains DiT-XL/2 experts and a DiT-B/2 router with the same recipe.
PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        name="tiny",
        hidden_size=64,
        depth=2,
        heads=2,
        patch_size=2,
        learning_rate=3e-4,
        global_batch_size=64,
        warmup_steps=50,
        weight_decay=0.0,
        ema_decay=0.995,
        checkpoint_every=100,
    ),
    "dit-s/2": Preset(
        name="dit-s/2",
        hidden_size=384,
        depth=12,
        heads=6,
        patch_size=2,
        learning_rate=1e-4,
        global_batch_size=256,
        warmup_steps=0,
        weight_decay=0.0,
        ema_decay=0.9999,
        checkpoint_every=5000,
    ),
    "dit-b/2": Preset(
        name="dit-b/2",
        hidden_size=768,
        depth=12,
        heads=12,
        patch_size=2,
        learning_rate=1e-4,
        global_batch_size=256,
        warmup_steps=0,
        weight_decay=0.0,
        ema_decay=0.9999,
        checkpoint_every=5000,
    ),
    "dit-l/2": Preset(
        name="dit-l/2",
        hidden_size=1024,
        depth=24,
        heads=16,
        patch_size=2,
        learning_rate=1e-4,
        global_batch_size=256,
        warmup_steps=0,
        weight_decay=0.0,
        ema_decay=0.9999,
        checkpoint_every=5000,
    ),
    "dit-xl/2": Preset(
        name="dit-xl/2",
        hidden_size=1152,
        depth=28,
        heads=16,
        patch_size=2,
        learning_rate=1e-4,
        global_batch_size=256,
        warmup_steps=0,
        weight_decay=0.0,
        ema_decay=0.9999,
        checkpoint_every=5000,
    ),
    # Video experts on diffusers' WanTransformer3DModel (3-D RoPE, cross-attention to the
    # caption, any frame count). video-tiny (~1.2 M parameters with the hashed caption
    # encoder) trains on 2 CPU cores; wan-1.3b has Wan 2.1 T2V-1.3B's shape (width 1536,
    # 30 blocks, 12 heads, FFN 8960, patch (1, 2, 2)) and trains on GPUs. The larger ones
    # take the DiT/Paris recipe.
    "video-tiny": Preset(
        name="video-tiny",
        family="wan",
        hidden_size=128,
        depth=4,
        heads=4,
        patch_size=2,
        patch_frames=1,
        ffn_dim=512,
        learning_rate=1e-3,
        global_batch_size=16,
        warmup_steps=50,
        weight_decay=0.0,
        ema_decay=0.995,
        checkpoint_every=100,
    ),
    "video-s": Preset(
        name="video-s",
        family="wan",
        hidden_size=384,
        depth=12,
        heads=6,
        patch_size=2,
        patch_frames=1,
        ffn_dim=1536,
        learning_rate=1e-4,
        global_batch_size=256,
        warmup_steps=0,
        weight_decay=0.0,
        ema_decay=0.9999,
        checkpoint_every=5000,
    ),
    "video-b": Preset(
        name="video-b",
        family="wan",
        hidden_size=768,
        depth=12,
        heads=12,
        patch_size=2,
        patch_frames=1,
        ffn_dim=3072,
        learning_rate=1e-4,
        global_batch_size=256,
        warmup_steps=0,
        weight_decay=0.0,
        ema_decay=0.9999,
        checkpoint_every=5000,
    ),
    "wan-1.3b": Preset(
        name="wan-1.3b",
        family="wan",
        hidden_size=1536,
        depth=30,
        heads=12,
        patch_size=2,
        patch_frames=1,
        ffn_dim=8960,
        learning_rate=1e-4,
        global_batch_size=256,
        warmup_steps=0,
        weight_decay=0.0,
        ema_decay=0.9999,
        checkpoint_every=5000,
    ),
}
