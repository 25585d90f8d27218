"""What a training stage plugs into the shared loop: its model, its examples and its loss.

The expert (flow matching on one cluster) and the router (cluster classification of noised
samples) differ only here; optimisation, precision, accumulation, data order, EMA,
checkpoints and heartbeats are the loop's. A task must take all its randomness from the
ExampleDraws it is given, never from a global RNG, so that data order and noise stay pure
functions of (seed, step, position).
"""

from __future__ import annotations

from typing import Any, Protocol

import torch

from atoll.progress import StageName
from atoll.trainer.training.data_order import ExampleDraws


class TrainingTask(Protocol):
    """A stage's model and objective, as the training loop sees them."""

    @property
    def stage(self) -> StageName:
        """expert or router: where progress and checkpoints go."""
        ...

    @property
    def expert(self) -> int | None:
        """The expert index k (expert stage), else None."""
        ...

    @property
    def examples(self) -> int:
        """Number of training examples; the loop orders indices in range(examples)."""
        ...

    @property
    def latent_shape(self) -> tuple[int, ...]:
        """[C, H, W] (or [C, T, H, W] for clips) of the noise drawn per example."""
        ...

    def build_model(self, seed: int) -> torch.nn.Module:
        """A freshly initialised diffusers model (deterministic in `seed`), on the CPU."""
        ...

    def losses(
        self, model: torch.nn.Module, indices: torch.Tensor, draws: ExampleDraws, device: torch.device
    ) -> torch.Tensor:
        """Per-example losses [m] (float32) for examples `indices` with their random draws.

        Called under the loop's autocast; the loop sums, scales and back-propagates.
        """
        ...

    def describe(self) -> dict[str, Any]:
        """JSON description of the task (preset, shapes, objective settings), kept in checkpoints;
        a resume refuses a checkpoint whose description differs."""
        ...
