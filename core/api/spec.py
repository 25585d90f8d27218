"""The DDMRun spec: the one description of a run, shared by the CLI, trainer and operator.

Pydantic v2 models whose JSON schema (camelCase, descriptions, bounds, enums) is also the
CRD schema. Unknown fields are errors; fields whose published default depends on the
preset are optional here and filled by `resolve_*` helpers. Pure data: never import
torch or Kubernetes clients here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Literal, TypeVar

from pydantic import ConfigDict, Field, ValidationInfo, field_validator, model_validator
from pydantic.alias_generators import to_camel

# Models defined in their own modules, re-exported here for everyone who imports them from the spec.
from atoll.api.base import SpecModel as SpecModel  # noqa: PLC0414
from atoll.api.base import field_error
from atoll.api.placement import GPURequirements as GPURequirements  # noqa: PLC0414
from atoll.api.placement import PlacementSpec as PlacementSpec  # noqa: PLC0414
from atoll.api.placement import Toleration as Toleration  # noqa: PLC0414
from atoll.api.presets import PRESETS, PresetName
from atoll.api.template import PodTemplate
from atoll.api.uris import (
    BUILTIN_IMAGE_DATASETS,
    BUILTIN_VIDEO_DATASETS,
    DATASET_URI_PATTERN,
    RULES,
    STORE_URI_PATTERN,
    uri_problem,
)
from atoll.api.weights import PRETRAINED, WeightsSpec

API_GROUP = "atoll.dev"
API_VERSION = "v1alpha1"
API_GROUP_VERSION = f"{API_GROUP}/{API_VERSION}"

STRATEGY_PATTERN = r"^(top-1|top-2|top-k:[1-9][0-9]{0,2}|threshold:(0(\.[0-9]+)?|1(\.0+)?)|full)$"
_T = TypeVar("_T")
K8S_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"


def _checked_uri(value: str, *, dataset: bool) -> str:
    if problem := uri_problem(value, dataset=dataset):
        raise ValueError(problem)
    return value


class DatasetSpec(SpecModel):
    """Where the training data comes from and how it is represented for the experts."""

    uri: str = Field(
        description=(
            "Dataset location: builtin://digits, builtin://shapes (images),"
            " builtin://moving-digits, builtin://moving-shapes (video clips; bouncing-digits and"
            " bouncing-shapes: half the moving clips bounce off the walls), a folder of images or"
            " videos (.mp4, .gif) with .txt caption sidecars, a folder or s3://bucket/prefix of"
            f" WebDataset-style tar shards (.tar). URI rules: {RULES}."
        ),
        json_schema_extra={"pattern": DATASET_URI_PATTERN, "maxLength": 1024},
        min_length=1,
    )
    resolution: int = Field(
        default=32,
        ge=8,
        le=2048,
        multiple_of=8,
        description="Side in pixels of the square images the model is trained on.",
    )
    max_examples: int | None = Field(
        default=None,
        ge=1,
        description="Use at most this many examples (the first ones in a fixed order); all when unset.",
    )
    vae: Literal["identity", "sd-vae-ft-mse", "wan2.1-vae"] = Field(
        default="identity",
        description=(
            "Autoencoder that maps images or clips to the latents the experts learn: identity"
            " trains in pixel space, sd-vae-ft-mse is Stable Diffusion's image VAE, wan2.1-vae"
            " Wan 2.1's video VAE (frames = 1 + 4n); weights must be present locally."
        ),
    )
    text_encoder: Literal["hashed-bow", "clip-vitl14"] = Field(
        default="hashed-bow",
        description=(
            "Caption encoder whose token embeddings condition the experts by"
            " cross-attention: hashed-bow is an offline hashed bag of words, clip-vitl14 is"
            " CLIP ViT-L/14's text tower (weights must be present locally)."
        ),
    )
    seed: int = Field(default=0, ge=0, description="Seed of procedural built-in datasets.")
    frames: int = Field(
        default=1,
        ge=1,
        le=257,
        validate_default=True,
        description="Frames per example: 1 trains on images, more on video clips of this many frames.",
    )
    fps: float = Field(
        default=8.0,
        gt=0,
        le=120,
        description="Frames per second clips are sampled at (video only: frames > 1).",
    )

    @field_validator("uri")
    @classmethod
    def _uri_rules(cls, value: str) -> str:
        return _checked_uri(value, dataset=True)

    @field_validator("frames")
    @classmethod
    def _frames_fit_builtin(cls, value: int, info: ValidationInfo) -> int:
        name = builtin_name(str(info.data.get("uri", "")))
        if name in BUILTIN_VIDEO_DATASETS and value < 2:
            raise ValueError(f"builtin://{name} is a video dataset: set dataset.frames to 2 or more")
        if name in BUILTIN_IMAGE_DATASETS and value > 1:
            raise ValueError(
                f"builtin://{name} holds images: dataset.frames must be 1 (or use builtin://moving-{name})"
            )
        vae = info.data.get("vae")
        if vae == "sd-vae-ft-mse" and value > 1:
            raise ValueError("the sd-vae-ft-mse VAE encodes images: use vae identity or wan2.1-vae for clips")
        if vae == "wan2.1-vae" and (value < 2 or (value - 1) % 4):
            raise ValueError(f"the wan2.1-vae VAE needs 1 + 4n frames (5, 9, 17, …), got {value}")
        return value

    @property
    def video(self) -> bool:
        """Whether examples are clips (frames > 1) rather than images."""
        return self.frames > 1


def builtin_name(uri: str) -> str | None:
    """The built-in dataset a uri names, None for other URIs."""
    return uri.removeprefix("builtin://") if uri.startswith("builtin://") else None


class PartitionSpec(SpecModel):
    """How the dataset is split into K disjoint clusters, one expert each."""

    clusters: int = Field(default=8, ge=1, le=256, description="Number of clusters K, and so of experts.")
    features: Literal["dinov2-vitl14", "clip-vitl14", "pixels"] = Field(
        default="pixels",
        description=(
            "Image features the clustering runs on: DINOv2 ViT-L/14 (the papers' choice),"
            " CLIP ViT-L/14 (both need spec.weights), or the raw pixels. The default is pixels"
            " because it needs no weights, so a run with every default runs on any cluster."
        ),
    )
    fine_clusters: int = Field(
        default=1024,
        ge=2,
        le=65536,
        description=(
            "Fine k-means clusters fitted on a sample before the K coarse clusters are"
            " formed over their centroids; capped at a quarter of the sample."
        ),
    )
    sample_size: int = Field(
        default=200_000,
        ge=16,
        description="Examples the fine clusters are fitted on.",
    )
    iterations: int = Field(default=25, ge=1, le=1000, description="Lloyd iterations per level.")
    balanced: bool = Field(
        default=True,
        description="Balance cluster sizes (recommended: plain k-means makes catch-all clusters).",
    )
    seed: int = Field(default=0, ge=0, description="Seed of sampling and initialisation.")


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


class SamplingSpec(SpecModel):
    """How the assembled model samples by default."""

    strategy: str = Field(
        default="top-2",
        pattern=STRATEGY_PATTERN,
        description="Expert selection per step: top-1, top-2, top-k:N, threshold:p or full.",
    )
    steps: int = Field(default=50, ge=1, le=1000, description="Euler integration steps.")
    guidance: float = Field(default=3.0, ge=0, le=50, description="Classifier-free guidance scale (1: off).")


class EvaluationSpec(SpecModel):
    """What the evaluate stage measures after assembly."""

    samples: int = Field(default=256, ge=1, le=100_000, description="Generated samples per strategy.")
    strategies: list[Annotated[str, Field(pattern=STRATEGY_PATTERN)]] = Field(
        default_factory=lambda: ["top-1", "top-2", "full"],
        min_length=1,
        max_length=8,
        description="Sampling strategies compared in metrics.json.",
    )
    seed: int = Field(default=0, ge=0, description="Seed of the generated samples.")


class StorageSpec(SpecModel):
    """Where checkpoints, data and the model live (the run's only durable state)."""

    uri: str = Field(
        default="",
        json_schema_extra={"pattern": r"^$|" + STORE_URI_PATTERN, "maxLength": 1024},
        description=(
            "Store root: s3://bucket/prefix (MinIO or any S3), or a local directory. Each run"
            " writes under <uri>/<namespace>/<run name>/ (locally <uri>/<run name>/). Empty: the"
            f" operator's default store, or the local workdir. URI rules: {RULES}."
        ),
    )
    secret_ref: str | None = Field(
        default=None,
        pattern=K8S_NAME_PATTERN,
        max_length=253,
        description="Secret with keys accessKey, secretKey and endpoint for s3:// stores.",
    )
    reclaim_policy: Literal["Retain", "Delete"] = Field(
        default="Retain",
        description=(
            "Retain keeps the run's store data when the DDMRun is deleted; Delete removes it, but"
            " only if this DDMRun (its UID) is the owner recorded in the prefix's owner.json."
        ),
    )
    adopt_retained: bool = Field(
        default=False,
        description=(
            "Continue in a prefix that another DDMRun of the same name left behind (retained,"
            " or without an owner record): allowed only with an identical spec. The prefix keeps"
            " its recorded owner, so this run never deletes it, whatever reclaimPolicy says."
        ),
    )

    @field_validator("uri")
    @classmethod
    def _uri_rules(cls, value: str) -> str:
        return _checked_uri(value, dataset=False) if value else value


class FailurePolicy(SpecModel):
    """What happens when a stage pod fails."""

    max_restarts: int = Field(default=3, ge=0, le=1000, description="Restarts of one stage before the run fails.")
    backoff_seconds: float = Field(
        default=10, ge=0, le=3600, description="First restart delay; doubles on every restart."
    )
    max_backoff_seconds: float = Field(default=300, ge=0, le=86400, description="Upper bound of the restart delay.")
    pending_timeout_seconds: int = Field(
        default=600,
        ge=10,
        le=604_800,
        description=(
            "A stage pod pinned to a node but still Pending after this long is deleted and its stage placed again."
        ),
    )
    store_outage_seconds: int = Field(
        default=900,
        ge=0,
        le=604_800,
        description=(
            "How long the store may be unreachable before attempts that fail because of it count"
            " against maxRestarts (until then they are retried with backoff)."
        ),
    )
    store_retry_seconds: int | None = Field(
        default=None,
        ge=1,
        le=86_400,
        description=(
            "How long a stage retries one failing store call before its attempt ends with exit 5"
            " (the store is unreachable) and is restarted with backoff; unset: the stage's own"
            " default (180 s)."
        ),
    )
    node_lost_seconds: int = Field(
        default=120,
        ge=10,
        le=86_400,
        description=(
            "A node NotReady (or its GPU agent silent) this long counts as lost: its experts restart"
            " elsewhere from their last checkpoint, whatever tolerations the pods have."
        ),
    )
    island_lost_seconds: int = Field(
        default=600,
        ge=10,
        le=86_400,
        description=(
            "A ComputeIsland unreachable this long (since its status.disconnectedSince) counts as"
            " lost: its experts are placed again elsewhere and resume from their last checkpoint in"
            " the store. Nothing on the island is deleted while it is unreachable; once it answers"
            " again, the pods of the attempts it lost are removed there."
        ),
    )

    @field_validator("max_backoff_seconds")
    @classmethod
    def _cap_above_first(cls, value: float, info: ValidationInfo) -> float:
        first = info.data.get("backoff_seconds")
        if first is not None and value < first:
            raise ValueError(f"must be at least failurePolicy.backoffSeconds ({first:g})")
        return value


class DDMRunSpec(SpecModel):
    """A Decentralized Diffusion Model training run."""

    dataset: DatasetSpec = Field(description="The training data.")
    partition: PartitionSpec = Field(default_factory=PartitionSpec, description="Clustering of the data.")
    expert: ExpertSpec = Field(default_factory=ExpertSpec, description="Expert training.")
    router: RouterSpec = Field(default_factory=RouterSpec, description="Router training.")
    sampling: SamplingSpec = Field(default_factory=SamplingSpec, description="Default sampling.")
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec, description="Evaluation after assembly.")
    storage: StorageSpec = Field(default_factory=StorageSpec, description="The object store of the run.")
    placement: PlacementSpec = Field(default_factory=PlacementSpec, description="Pod placement.")
    failure_policy: FailurePolicy = Field(default_factory=FailurePolicy, description="Restart policy.")
    weights: WeightsSpec = Field(
        default_factory=WeightsSpec, description="Where pretrained encoder weights come from (none by default)."
    )
    template: PodTemplate = Field(
        default_factory=PodTemplate,
        description="Labels, annotations, pull secrets, env, volumes … added to every stage pod.",
    )

    @model_validator(mode="after")
    def _pretrained_needs_weights(self) -> DDMRunSpec:
        if self.weights.source != "none":
            return self
        for (section, field), choices in PRETRAINED.items():
            value = getattr(getattr(self, section), _snake(field))
            if value in choices:
                raise field_error(
                    DDMRunSpec,
                    (section, field),
                    f"{value} loads pretrained weights but spec.weights.source is none: set spec.weights"
                    " (hub, store or volume) or choose an offline encoder",
                    value,
                )
        return self

    @field_validator("expert")
    @classmethod
    def _preset_fits_data(cls, value: ExpertSpec, info: ValidationInfo) -> ExpertSpec:
        dataset = info.data.get("dataset")
        if not isinstance(dataset, DatasetSpec):
            return value
        architecture = PRESETS[value.preset].architecture
        if architecture.video and not dataset.video:
            raise ValueError(f"preset {value.preset} is a video preset: set dataset.frames above 1")
        if dataset.video and not architecture.video:
            video = ", ".join(name for name, p in PRESETS.items() if p.architecture.video)
            raise ValueError(f"dataset.frames is {dataset.frames}: clips need a video preset ({video})")
        if value.first_frame_conditioning > 0 and not dataset.video:
            raise ValueError("firstFrameConditioning conditions clips on their first frame: set dataset.frames above 1")
        if value.first_frame_conditioning > 0 and architecture.patch[0] != 1:
            raise ValueError(
                "firstFrameConditioning needs tokens of one latent frame;"
                f" {value.preset}'s span {architecture.patch[0]}"
            )
        return value

    @field_validator("partition")
    @classmethod
    def _clusters_fit_examples(cls, value: PartitionSpec, info: ValidationInfo) -> PartitionSpec:
        dataset = info.data.get("dataset")
        limit = dataset.max_examples if isinstance(dataset, DatasetSpec) else None
        if limit is not None and value.clusters > limit:
            raise ValueError(
                f"partition.clusters ({value.clusters}) exceeds dataset.maxExamples ({limit}):"
                " every expert needs examples"
            )
        return value

    @field_validator("sampling")
    @classmethod
    def _sampling_fits_clusters(cls, value: SamplingSpec, info: ValidationInfo) -> SamplingSpec:
        _check_strategy_fits(value.strategy, info)
        return value

    @field_validator("evaluation")
    @classmethod
    def _evaluation_fits_clusters(cls, value: EvaluationSpec, info: ValidationInfo) -> EvaluationSpec:
        for strategy in value.strategies:
            _check_strategy_fits(strategy, info)
        return value


def _snake(camel: str) -> str:
    return "".join(f"_{char.lower()}" if char.isupper() else char for char in camel)


def strategy_min_experts(strategy: str) -> int:
    """How many experts a strategy string (STRATEGY_PATTERN) needs at least: k of top-k, else 1."""
    if strategy == "top-2":
        return 2
    if strategy.startswith("top-k:"):
        return int(strategy.removeprefix("top-k:"))
    return 1


def _check_strategy_fits(strategy: str, info: ValidationInfo) -> None:
    partition = info.data.get("partition")
    if isinstance(partition, PartitionSpec) and strategy_min_experts(strategy) > partition.clusters:
        raise ValueError(
            f"strategy {strategy} selects {strategy_min_experts(strategy)} experts but"
            f" partition.clusters is {partition.clusters}"
        )


class ObjectMeta(SpecModel):
    """The part of Kubernetes object metadata a run file needs."""

    model_config = ConfigDict(extra="allow", alias_generator=to_camel, populate_by_name=True)

    name: str = Field(pattern=K8S_NAME_PATTERN, max_length=63, description="Run name.")
    namespace: str | None = Field(default=None, description="Namespace (Kubernetes runs only).")


class DDMRunManifest(SpecModel):
    """A DDMRun object as written in a YAML file."""

    api_version: Literal["atoll.dev/v1alpha1"] = Field(description="atoll.dev/v1alpha1")
    kind: Literal["DDMRun"] = Field(description="DDMRun")
    metadata: ObjectMeta = Field(description="Object metadata.")
    spec: DDMRunSpec = Field(description="The run.")

    @field_validator("metadata")
    @classmethod
    def _name_is_dns_label(cls, value: ObjectMeta) -> ObjectMeta:
        if not re.match(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", value.name):
            raise ValueError("metadata.name must be a DNS label (lower case letters, digits, '-')")
        return value
