"""The DDMRun spec: the one description of a run, shared by the CLI, trainer and operator.

Pydantic v2 models whose JSON schema (camelCase, descriptions, bounds, enums) is also the
CRD schema. The sections live in their own modules (atoll.api.data: dataset and partition;
atoll.api.training: experts and router; atoll.api.placement) and are re-exported here.
Unknown fields are errors; fields whose published default depends on the preset are optional
here and filled by `resolve_*` helpers. Pure data: never import torch or Kubernetes clients
here.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import ConfigDict, Field, ValidationInfo, field_validator, model_validator
from pydantic.alias_generators import to_camel

# Models defined in their own modules, re-exported here for everyone who imports them from the spec.
from atoll.api.base import SpecModel as SpecModel  # noqa: PLC0414
from atoll.api.base import field_error
from atoll.api.data import DatasetSpec as DatasetSpec  # noqa: PLC0414
from atoll.api.data import PartitionSpec as PartitionSpec  # noqa: PLC0414
from atoll.api.data import builtin_name as builtin_name  # noqa: PLC0414
from atoll.api.placement import GPURequirements as GPURequirements  # noqa: PLC0414
from atoll.api.placement import PlacementSpec as PlacementSpec  # noqa: PLC0414
from atoll.api.placement import Toleration as Toleration  # noqa: PLC0414
from atoll.api.presets import PRESETS
from atoll.api.template import PodTemplate
from atoll.api.training import ExpertSpec as ExpertSpec  # noqa: PLC0414
from atoll.api.training import Recipe as Recipe  # noqa: PLC0414
from atoll.api.training import RetentionSpec as RetentionSpec  # noqa: PLC0414
from atoll.api.training import RouterSpec as RouterSpec  # noqa: PLC0414
from atoll.api.training import TimestepSamplingSpec as TimestepSamplingSpec  # noqa: PLC0414
from atoll.api.training import TrainingSpec as TrainingSpec  # noqa: PLC0414
from atoll.api.uris import RULES, STORE_URI_PATTERN, checked_uri
from atoll.api.weights import PRETRAINED, WeightsSpec

API_GROUP = "atoll.dev"
API_VERSION = "v1alpha1"
API_GROUP_VERSION = f"{API_GROUP}/{API_VERSION}"

STRATEGY_PATTERN = r"^(top-1|top-2|top-k:[1-9][0-9]{0,2}|threshold:(0(\.[0-9]+)?|1(\.0+)?)|full)$"
K8S_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"


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
        return checked_uri(value, dataset=False) if value else value


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
