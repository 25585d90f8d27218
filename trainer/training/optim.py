"""The optimiser of every training stage: AdamW with a linear learning-rate warm-up (DiT's recipe).

DiT and Paris train with AdamW (β = 0.9, 0.999), a constant learning rate and no weight
decay; small runs profit from a short linear warm-up from 0. The learning rate is a pure
function of the step, so a resumed run follows the same schedule.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from atoll.api.spec import Recipe


def warmup_factor(step: int, warmup_steps: int) -> float:
    """Multiplier of the peak learning rate at optimizer step `step` (0-based): linear up to 1."""
    if warmup_steps <= 0:
        return 1.0
    return min(1.0, (step + 1) / warmup_steps)


def build_optimizer(
    parameters: Iterable[torch.nn.Parameter], recipe: Recipe, *, device: torch.device
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over the trainable parameters and its warm-up schedule."""
    trainable = [p for p in parameters if p.requires_grad]
    optimizer = torch.optim.AdamW(
        trainable,
        lr=recipe.learning_rate,
        betas=(0.9, 0.999),
        weight_decay=recipe.weight_decay,
        # The fused kernel is the fastest on GPUs. On the CPU torch would pick the per-tensor
        # loop; the multi-tensor (foreach) path is several times faster for many small tensors.
        fused=device.type == "cuda",
        foreach=device.type != "cuda",
    )
    warmup = recipe.warmup_steps
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_factor(step, warmup))
    return optimizer, schedule
