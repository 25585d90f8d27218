"""Generating an evaluation set: one sample (image or clip) per real caption, in batches, with expert usage.

Every strategy gets the same captions and the same initial noise (one seed), so
strategies are compared on paired samples. Reads nothing from the store.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from atoll.trainer.pipeline import DDMPipeline


@dataclass
class GeneratedSet:
    """Images generated for one strategy and what it cost."""

    images: torch.Tensor
    """[n, 3, R, R] in [-1, 1]; clips [n, 3, F, R, R]."""
    seconds: float
    selected: list[float] = field(default_factory=list)
    """Per expert: share of (sample, step) pairs on which it ran."""
    weight: list[float] = field(default_factory=list)
    """Per expert: mean combination weight."""

    @property
    def experts_per_step(self) -> float:
        """Mean number of experts run per sample and step."""
        return float(sum(self.selected))


def generate(
    pipeline: DDMPipeline,
    text: torch.Tensor,
    text_mask: torch.Tensor,
    *,
    strategy: str,
    steps: int,
    guidance: float,
    seed: int,
    batch: int = 256,
) -> GeneratedSet:
    """One sample per caption embedding (text [n, L, D], mask [n, L])."""
    generator = torch.Generator().manual_seed(seed)
    parts: list[torch.Tensor] = []
    experts = pipeline.num_experts
    selected = torch.zeros(experts, dtype=torch.float64)
    weight = torch.zeros(experts, dtype=torch.float64)
    start = time.perf_counter()
    for i in range(0, text.shape[0], batch):
        out = pipeline(
            prompt_embeds=text[i : i + batch],
            prompt_attention_mask=text_mask[i : i + batch],
            strategy=strategy,
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=generator,
            output_type="pt",
            return_usage=True,
        )
        images = out.frames if pipeline.is_video else out.images
        assert isinstance(images, torch.Tensor)
        if pipeline.is_video:
            images = images.transpose(1, 2)  # frames [B, F, 3, H, W] → clips [B, 3, F, H, W]
        parts.append(images * 2 - 1)
        rows = images.shape[0]
        for step in out.usage or []:
            selected += torch.tensor(step["selected"], dtype=torch.float64) * rows
            weight += torch.tensor(step["weight"], dtype=torch.float64) * rows
    seconds = time.perf_counter() - start
    total = max(1, text.shape[0] * steps)
    return GeneratedSet(
        images=torch.cat(parts),
        seconds=seconds,
        selected=(selected / total).tolist(),
        weight=(weight / total).tolist(),
    )
