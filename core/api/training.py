"""The training sections of a DDMRun: the experts' and the router's recipes.

Every field a preset publishes a default for is optional here; `TrainingSpec.recipe()` fills
them from the preset's recipe (atoll.api.presets), so a spec never repeats a recipe. Pydantic
models whose JSON schema is part of the CRD schema (see atoll.api.spec). Pure data: never
import torch or Kubernetes clients here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, TypeVar

from pydantic import Field, ValidationInfo, field_validator

from atoll.api.base import SpecModel
from atoll.api.presets import PRESETS, PresetName

_T = TypeVar("_T")


class TimestepSamplingSpec(SpecModel):
    """Distribution of the noise level σ ∈ [0, 1] drawn for each training example."""

    distribution: Literal["logit-normal", "uniform"] = Field(
        default="logit-normal", description="logit-normal (σ = sigmoid(N(mean, std))) or uniform."
    )
    mean: float = Field(default=0.0, ge=-5, le=5, description="Mean of the logit-normal's normal.")
    std: float = Field(default=1.0, gt=0, le=5, description="Standard deviation of the logit-normal's normal.")


class RetentionSpec(SpecModel):
    """Which committed checkpoints are kept in the store."""

    last: int = Field(default=3, ge=1, le=1000, description="Keep the newest N checkpoints.")
    every: int = Field(
        default=0,
        ge=0,
        description="Also keep every checkpoint whose step is a multiple of this (0: none).",
    )


@dataclass(frozen=True, kw_only=True, slots=True)
class Recipe:
    """The training hyper-parameters of one stage with every preset default filled in."""

    preset: str
    steps: int
    global_batch_size: int
    learning_rate: float
    warmup_steps: int
    weight_decay: float
    ema_decay: float
    checkpoint_every: int


class TrainingSpec(SpecModel):
    """Fields shared by expert and router training."""

    preset: PresetName = Field(default="dit-xl/2", description="Transformer preset (Paris 1.0: DiT-XL/2 experts).")
    steps: int = Field(default=400_000, ge=1, le=100_000_000, description="Optimizer steps.")
    global_batch_size: int | None = Field(
        default=None,
        ge=1,
        le=1_000_000,
        description="Examples per optimizer step over all GPUs and accumulation; the preset's recipe when unset.",
    )
    micro_batch_size: int | None = Field(
        default=None,
        ge=1,
        description=(
            "Examples per forward pass on one GPU; the global batch is reached by gradient"
            " accumulation. Chosen by the placement plan when unset."
        ),
    )
    learning_rate: float | None = Field(
        default=None, gt=0, le=1, description="Peak AdamW learning rate; the preset's recipe when unset."
    )
    warmup_steps: int | None = Field(
        default=None, ge=0, description="Linear warm-up steps; the preset's recipe when unset."
    )
    weight_decay: float | None = Field(
        default=None, ge=0, le=1, description="AdamW weight decay; the preset's recipe when unset."
    )
    grad_clip: float = Field(default=1.0, ge=0, description="Clip the gradient norm to this (0: off).")
    checkpoint_every: int | None = Field(
        default=None,
        ge=1,
        description="Commit a checkpoint every N steps; the preset's default when unset.",
    )
    keep_checkpoints: RetentionSpec = Field(
        default_factory=RetentionSpec, description="Retention of committed checkpoints."
    )
    precision: Literal["auto", "bf16", "fp32"] = Field(
        default="auto", description="auto: bf16 autocast on GPUs that support it, fp32 on CPU."
    )
    compile: bool = Field(
        default=False,
        description=(
            "Compile the transformer blocks with torch.compile (regional compilation, inductor):"
            " faster steps on GPUs after a one-off compilation at the start of every attempt."
            " Needs a C compiler where the stage runs; on a CPU the compilation takes minutes."
        ),
    )
    seed: int = Field(default=0, ge=0, description="Seed of initialisation, data order and noise.")
    ema_decay: float | None = Field(
        default=None, ge=0, lt=1, description="Weight EMA decay; the preset's recipe when unset."
    )
    shuffle_buffer: int = Field(
        default=4096,
        ge=1,
        le=10_000_000,
        description=(
            "Examples each training process holds in memory and shuffles together: shards are read"
            " in a fresh random order every epoch and each window of this many examples (every"
            " cluster in proportion, for the router) is shuffled. Memory grows with this, never with"
            " the dataset. It is part of the data order: a checkpoint resumes only with the same value."
        ),
    )

    @field_validator("micro_batch_size")
    @classmethod
    def _micro_batch_fits(cls, value: int | None, info: ValidationInfo) -> int | None:
        preset = info.data.get("preset")
        if value is None or preset not in PRESETS:
            return value
        batch = _or(info.data.get("global_batch_size"), PRESETS[preset].recipe.global_batch_size)
        if value > batch:
            raise ValueError(f"{value} exceeds globalBatchSize ({batch})")
        return value

    def recipe(self) -> Recipe:
        """This stage's hyper-parameters with the preset's recipe filling what the spec leaves unset."""
        published = PRESETS[self.preset].recipe
        return Recipe(
            preset=self.preset,
            steps=self.steps,
            global_batch_size=_or(self.global_batch_size, published.global_batch_size),
            learning_rate=_or(self.learning_rate, published.learning_rate),
            warmup_steps=_or(self.warmup_steps, published.warmup_steps),
            weight_decay=_or(self.weight_decay, published.weight_decay),
            ema_decay=_or(self.ema_decay, published.ema_decay),
            checkpoint_every=_or(self.checkpoint_every, published.checkpoint_every),
        )


def _or(value: _T | None, default: _T) -> _T:
    return default if value is None else value


class ExpertSpec(TrainingSpec):
    """The K expert denoisers, each trained by flow matching on its cluster alone."""

    steps_policy: Literal["equal", "proportional"] = Field(
        default="equal",
        description=(
            "equal: every expert trains `steps`; proportional: steps scale with the"
            " cluster's share so every example is seen equally often (total = steps × K)."
        ),
    )
    caption_dropout: float = Field(
        default=0.1, ge=0, le=1, description="Probability of training on the empty caption (for guidance)."
    )
    timestep_sampling: TimestepSamplingSpec = Field(
        default_factory=TimestepSamplingSpec, description="Distribution of σ during training."
    )
    first_frame_conditioning: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description=(
            "Video only: share of training clips whose clean first frame is given as a condition"
            " (image-to-video, sampled with a first frame); the rest train text-to-video. 0 trains"
            " text-to-video only."
        ),
    )

    def steps_for(self, expert: int, cluster_sizes: list[int]) -> int:
        """Optimizer steps of expert k under `stepsPolicy`.

        equal: every expert trains `steps`. proportional: steps × K × (cluster share), so
        every example is seen equally often and the total is steps × K (at least 1 each).
        """
        if self.steps_policy == "equal":
            return self.steps
        total = sum(cluster_sizes)
        if total <= 0:
            raise ValueError("cluster sizes must not all be zero")
        share = cluster_sizes[expert] / total
        return max(1, round(self.steps * len(cluster_sizes) * share))


class RouterSpec(TrainingSpec):
    """The router: a classifier of the cluster of a noisy sample, p(k | x_t, σ)."""

    preset: PresetName = Field(default="dit-b/2", description="Transformer preset of the router (Paris 1.0: DiT-B/2).")
    steps: int = Field(default=100_000, ge=1, le=100_000_000, description="Optimizer steps.")
    condition_on_text: bool = Field(
        default=False,
        description="Also feed the caption (the exact conditional router); Paris's router sees only (x_t, σ).",
    )
    timestep_sampling: TimestepSamplingSpec = Field(
        default_factory=lambda: TimestepSamplingSpec(distribution="uniform"),
        description="Distribution of σ during router training (uniform covers every sampling step).",
    )
