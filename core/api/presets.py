"""Named model presets and their published training recipes, as plain data.

The trainer builds diffusers models from these numbers, the planner estimates memory and
speed from them, and the API fills preset-dependent defaults from them. Pure data: this
module must never import torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

PresetName = Literal["tiny", "dit-s/2", "dit-b/2", "dit-l/2", "dit-xl/2"]
PRESET_NAMES: tuple[PresetName, ...] = ("tiny", "dit-s/2", "dit-b/2", "dit-l/2", "dit-xl/2")


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

    def approx_parameters(self, in_channels: int = 4, text_dim: int = 768) -> int:
        """Parameter count of the text-conditioned transformer, to within a few percent.

        Per block: self-attention (4·h²), cross-attention over the caption after it is
        projected to width h (4·h²) and an MLP of ratio 4 (8·h²); plus the patch
        embedding, caption projection, timestep embedding and final layer. Good enough
        for memory planning.
        """
        h = self.hidden_size
        per_block = 4 * h * h + 4 * h * h + 8 * h * h
        patch = self.patch_size * self.patch_size * in_channels * h
        caption = text_dim * h + h * h
        timestep = 256 * h + h * h + 6 * h * h
        final = h * self.patch_size * self.patch_size * in_channels
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
}
