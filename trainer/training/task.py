"""What a training stage plugs into the shared loop: its model, its examples and its loss.

The expert (flow matching on one cluster) and the router (cluster classification of noised
samples) differ only here; optimisation, precision, accumulation, data order and
streaming, EMA, checkpoints and heartbeats are the loop's. A task names where its examples
are (StreamData) and never loads them itself. It must take all its randomness from the
ExampleDraws it is given, never from a global RNG, so that data order and noise stay pure
functions of (seed, step, position).
"""

from __future__ import annotations

from typing import Any, Protocol

import torch

from atoll.progress import StageName
from atoll.trainer.training.data_order import ExampleDraws
from atoll.trainer.training.stream import ExampleBatch, StreamData


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
    def data(self) -> StreamData:
        """The shards the loop streams the training examples from, and how they are shuffled."""
        ...

    @property
    def latent_shape(self) -> tuple[int, ...]:
        """[C, H, W] (or [C, T, H, W]) of the noise drawn per example."""
        ...

    def build_model(self, seed: int) -> torch.nn.Module:
        """A freshly initialised diffusers model (deterministic in `seed`), on the CPU."""
        ...

    def losses(
        self, model: torch.nn.Module, batch: ExampleBatch, draws: ExampleDraws, device: torch.device
    ) -> torch.Tensor:
        """Per-example losses [m] (float32) for the streamed examples `batch` with their random draws.

        Called under the loop's autocast; the loop sums, scales and back-propagates.
        """
        ...

    def describe(self) -> dict[str, Any]:
        """JSON description of the task (preset, shapes, objective settings), kept in checkpoints;
        a resume refuses a checkpoint whose description differs."""
        ...
