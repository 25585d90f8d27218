"""Named model presets: an architecture registry and a training-recipe registry, as plain data.

The torchtitan way: a model's shape (family, width, depth, heads, patch) is one thing, the
recipe that trains it (learning rate, global batch, warm-up, EMA, checkpoint interval) is
another, and a preset names one of each. The DiT/Paris recipe is written once, the CPU
recipe of `tiny` once. The trainer builds diffusers models from `Preset.architecture`, the
planner estimates memory and speed from it, and the spec fills unset hyper-parameters
from `Preset.recipe` (`TrainingSpec.recipe()`). Pure data: this module must never import
torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

ModelFamily = Literal["dit", "wan"]
"""dit: a 2-D diffusion transformer over image latents [C, H, W] (diffusers' PixArtTransformer2DModel
for experts); wan: a 3-D video transformer over clip latents [C, T, H, W] (diffusers'
WanTransformer3DModel)."""

PresetName = Literal[
    "tiny",
    "tiny-w2",
    "dit-s/2",
    "dit-b/2",
    "dit-l/2",
    "dit-xl/2",
    "video-nano",
    "video-nano-w2",
    "video-tiny",
    "video-tiny-w2",
    "video-s",
    "video-b",
    "wan-1.3b",
]
PRESET_NAMES: tuple[PresetName, ...] = (
    "tiny",
    "tiny-w2",
    "dit-s/2",
    "dit-b/2",
    "dit-l/2",
    "dit-xl/2",
    "video-nano",
    "video-nano-w2",
    "video-tiny",
    "video-tiny-w2",
    "video-s",
    "video-b",
    "wan-1.3b",
)


class PresetError(ValueError):
    """An unknown preset name, or a latent shape a preset cannot patch."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Architecture:
    """The shape of one transformer: what the trainer builds and the planner costs."""

    family: ModelFamily
    hidden_size: int
    """Width of the transformer (DiT's `hidden_size`)."""
    depth: int
    """Number of transformer blocks."""
    heads: int
    """Attention heads; hidden_size // heads is the head dimension."""
    patch: tuple[int, ...]
    """Latent patch that becomes one token: (h, w) for image families, (t, h, w) for video ones."""
    mlp_ratio: float = 4.0
    """Width of each block's feed-forward layer over hidden_size."""
    absolute_positions: bool = False
    """Video families only: add fixed 3-D sin-cos positions to the patch tokens (Wan itself has only
    RoPE, relative positions in attention)."""

    def __post_init__(self) -> None:
        sides = 3 if self.family == "wan" else 2
        if len(self.patch) != sides or min(self.patch) < 1:
            raise PresetError(f"a {self.family} patch has {sides} positive sides, got {self.patch}")
        if self.hidden_size % self.heads:
            raise PresetError(f"hidden_size {self.hidden_size} is not divisible by {self.heads} heads")
        if self.absolute_positions and (self.family != "wan" or self.hidden_size % 16):
            raise PresetError("absolute 3-D positions are for wan models whose width is a multiple of 16")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.heads

    @property
    def video(self) -> bool:
        """Whether this architecture denoises clips [C, T, H, W] (the wan family) rather than images."""
        return self.family == "wan"

    @property
    def ffn_dim(self) -> int:
        """Width of each block's feed-forward layer."""
        return round(self.mlp_ratio * self.hidden_size)

    @property
    def patch_volume(self) -> int:
        """Latent elements per channel in one token."""
        return math.prod(self.patch)

    def tokens(self, latent_shape: Sequence[int]) -> int:
        """Tokens of one latent [C, H, W] (image families) or [C, T, H, W] (video families)."""
        sides = tuple(int(s) for s in latent_shape[1:])
        if len(sides) != len(self.patch):
            raise PresetError(
                f"a {self.family} model takes latents [C, {', '.join('THW'[-len(self.patch) :])}],"
                f" got {list(latent_shape)}"
            )
        return math.prod(max(1, side // p) for side, p in zip(sides, self.patch, strict=True))

    def approx_parameters(self, in_channels: int = 4, text_dim: int = 768) -> int:
        """Parameter count of the text-conditioned transformer, to within a few percent.

        Per block: self-attention (4·h²), cross-attention over the caption after it is
        projected to width h (4·h²) and the feed-forward layer (2·ratio·h²); plus the patch
        embedding, caption projection, timestep embedding and final layer. Good enough
        for memory planning.
        """
        h = self.hidden_size
        per_block = 4 * h * h + 4 * h * h + round(2 * self.mlp_ratio * h * h)
        patch = self.patch_volume * in_channels * h
        caption = text_dim * h + h * h
        timestep = 256 * h + h * h + 6 * h * h
        final = h * self.patch_volume * in_channels
        return self.depth * per_block + patch + caption + timestep + final


@dataclass(frozen=True, kw_only=True, slots=True)
class TrainingRecipe:
    """The published optimisation hyper-parameters a family of presets is trained with."""

    name: str
    learning_rate: float
    """AdamW learning rate."""
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


@dataclass(frozen=True, kw_only=True, slots=True)
class Preset:
    """A named architecture and the recipe it trains with."""

    name: str
    architecture: Architecture
    recipe: TrainingRecipe


def _dit(hidden_size: int, depth: int, heads: int, patch: int = 2) -> Architecture:
    return Architecture(family="dit", hidden_size=hidden_size, depth=depth, heads=heads, patch=(patch, patch))


def _wan(
    hidden_size: int,
    depth: int,
    heads: int,
    ffn_dim: int,
    patch: tuple[int, int, int] = (1, 2, 2),
    *,
    absolute_positions: bool = False,
) -> Architecture:
    return Architecture(
        family="wan",
        hidden_size=hidden_size,
        depth=depth,
        heads=heads,
        patch=patch,
        mlp_ratio=ffn_dim / hidden_size,
        absolute_positions=absolute_positions,
    )


ARCHITECTURES: dict[str, Architecture] = {
    # A CPU-sized debug model: one training step of a batch of 64 at 16 px takes well under a second.
    "tiny": _dit(64, 2, 2),
    # Twice as wide, four times the parameters: the monolith with as many parameters as four
    # tiny experts together (the benchmarks' equal-parameter baseline).
    "tiny-w2": _dit(128, 2, 4),
    # DiT (Peebles & Xie, 2023), Table 1.
    "dit-s/2": _dit(384, 12, 6),
    "dit-b/2": _dit(768, 12, 12),
    "dit-l/2": _dit(1024, 24, 16),
    "dit-xl/2": _dit(1152, 28, 16),
    # Video experts on diffusers' WanTransformer3DModel (3-D RoPE, cross-attention to the caption,
    # any frame count). video-tiny (~1.2 M parameters with the offline caption encoder) trains on
    # 2 CPU cores; wan-1.3b has Wan 2.1 T2V-1.3B's shape (width 1536, 30 blocks, 12 heads, FFN
    # 8960, patch (1, 2, 2)).
    # The video quickstart's expert: half video-tiny's width and a coarser patch, (1, 4, 4) — 64
    # tokens of a 4 × 16 × 16 clip — so that thousands of steps fit the 2-core budget.
    "video-nano": _wan(64, 4, 2, 256, patch=(1, 4, 4), absolute_positions=True),
    # Twice video-nano's width (about four video-nano experts' parameters): the equal-parameter monolith.
    "video-nano-w2": _wan(128, 4, 4, 512, patch=(1, 4, 4), absolute_positions=True),
    "video-tiny": _wan(128, 4, 4, 512),
    "video-tiny-w2": _wan(256, 4, 8, 1024),  # four video-tiny experts' parameters in one model
    "video-s": _wan(384, 12, 6, 1536),
    "video-b": _wan(768, 12, 12, 3072),
    "wan-1.3b": _wan(1536, 30, 12, 8960),
}
"""Every preset's architecture, by preset name."""

RECIPES: dict[str, TrainingRecipe] = {
    # DiT (Peebles & Xie, 2023): AdamW, lr 1e-4, no weight decay, batch 256, EMA 0.9999; Paris 1.0
    # trains DiT-XL/2 experts and a DiT-B/2 router with the same recipe.
    "dit": TrainingRecipe(
        name="dit",
        learning_rate=1e-4,
        global_batch_size=256,
        warmup_steps=0,
        weight_decay=0.0,
        ema_decay=0.9999,
        checkpoint_every=5000,
    ),
    # What trains the tiny preset on a laptop CPU in minutes: a larger step, a short warm-up and
    # an EMA that forgets within a few hundred steps.
    "cpu": TrainingRecipe(
        name="cpu",
        learning_rate=3e-4,
        global_batch_size=64,
        warmup_steps=50,
        weight_decay=0.0,
        ema_decay=0.995,
        checkpoint_every=100,
    ),
    # The CPU recipe for video-tiny: clips cost frames × an image's tokens, so a smaller batch
    # (16 clips of 8 × 16 × 16 take ~1 s per step on one core) and a larger step.
    "cpu-video": TrainingRecipe(
        name="cpu-video",
        learning_rate=1e-3,
        global_batch_size=16,
        warmup_steps=50,
        weight_decay=0.0,
        ema_decay=0.995,
        checkpoint_every=100,
    ),
}
"""Training recipes by name."""

PRESET_RECIPES: dict[str, str] = {
    "tiny": "cpu",
    "tiny-w2": "cpu",
    "dit-s/2": "dit",
    "dit-b/2": "dit",
    "dit-l/2": "dit",
    "dit-xl/2": "dit",
    "video-nano": "cpu-video",
    "video-nano-w2": "cpu-video",
    "video-tiny": "cpu-video",
    "video-tiny-w2": "cpu-video",
    "video-s": "dit",
    "video-b": "dit",
    "wan-1.3b": "dit",
}
"""The recipe each preset trains with."""

if not set(PRESET_NAMES) == set(ARCHITECTURES) == set(PRESET_RECIPES):  # pragma: no cover - a registry typo
    raise PresetError("PRESET_NAMES, ARCHITECTURES and PRESET_RECIPES must name the same presets")

PRESETS: dict[str, Preset] = {
    name: Preset(name=name, architecture=ARCHITECTURES[name], recipe=RECIPES[PRESET_RECIPES[name]])
    for name in PRESET_NAMES
}
"""The one lookup every consumer uses: preset name → architecture and recipe."""


def get_preset(name: str) -> Preset:
    """The named preset, or a PresetError listing the known ones."""
    try:
        return PRESETS[name]
    except KeyError:
        raise PresetError(f"unknown preset {name!r}: use one of {', '.join(PRESETS)}") from None
