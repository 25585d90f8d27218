"""The observed state of DDMRun and DDMExpert objects, and the DDMExpert spec.

The operator writes these; `kubectl get ddm / ddmx` and `atoll status` read them. They are
served as the CRDs' status schemas (camelCase, a description on every field), so every
field is optional on the wire. Pure data: never import Kubernetes clients here.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from atoll.api.spec import K8S_NAME_PATTERN

RunPhase = Literal["Pending", "Partitioning", "Training", "Routing", "Assembling", "Evaluating", "Succeeded", "Failed"]
RUN_PHASES: tuple[RunPhase, ...] = (
    "Pending",
    "Partitioning",
    "Training",
    "Routing",
    "Assembling",
    "Evaluating",
    "Succeeded",
    "Failed",
)

StagePhase = Literal["Waiting", "Pending", "Running", "Restarting", "Succeeded", "Failed"]
"""Waiting: its inputs are not ready; Pending: its pod is created but not running;
Restarting: the last attempt failed and the next one waits out its backoff."""

ConditionType = Literal["Ready", "Progressing", "Degraded", "Complete", "Failed", "Schedulable"]
CONDITION_TYPES: tuple[ConditionType, ...] = ("Ready", "Progressing", "Degraded", "Complete", "Failed", "Schedulable")


class StatusModel(BaseModel):
    """Base of the status models: camelCase on the wire, unknown fields rejected."""

    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True)


class Condition(StatusModel):
    """A standard Kubernetes condition (metav1.Condition)."""

    type: ConditionType = Field(description="Ready, Progressing, Degraded, Complete, Failed or Schedulable.")
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(
        pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$",
        max_length=1024,
        description="A CamelCase word saying why the condition is in its state.",
    )
    message: str = Field(default="", max_length=32768, description="What a person should know, in a sentence.")
    last_transition_time: datetime = Field(description="When the status of this condition last changed.")
    observed_generation: int | None = Field(
        default=None, ge=0, description="The .metadata.generation the condition was computed from."
    )


class CheckpointStatus(StatusModel):
    """The newest committed checkpoint of a training stage."""

    step: int = Field(ge=0, description="Optimizer step of the checkpoint.")
    time: datetime = Field(description="When the checkpoint was committed.")
    uri: str = Field(description="Store URI of the checkpoint's directory.")


class StageStatus(StatusModel):
    """One stage of a run (partition, an expert, router, assemble, evaluate) as observed."""

    phase: StagePhase = Field(
        default="Waiting",
        description=(
            "Waiting (inputs not ready), Pending (pod created, not running), Running,"
            " Restarting (backing off before the next attempt), Succeeded or Failed."
        ),
    )
    attempt: int = Field(default=0, ge=0, description="Attempt number of the newest pod (fencing token, from 1).")
    restarts: int = Field(
        default=0, ge=0, description="Attempts started after the previous one ended unfinished (failed, lost, moved)."
    )
    moves: int = Field(
        default=0,
        ge=0,
        description=(
            "Attempts ended on purpose to move to faster GPUs or off a node being removed (not failures; experts only)."
        ),
    )
    pod: str | None = Field(default=None, description="Name of the newest attempt's pod.")
    node: str | None = Field(default=None, description="Node the newest attempt runs (or ran) on.")
    gpu: str | None = Field(default=None, description="GPU product the stage runs on (nvidia.com/gpu.product).")
    gpus: int | None = Field(default=None, ge=0, description="GPUs the stage uses on its node.")
    step: int | None = Field(default=None, ge=0, description="Optimizer step reached (training stages).")
    total_steps: int | None = Field(default=None, ge=0, description="Optimizer steps to train.")
    loss: float | None = Field(default=None, description="Latest training loss.")
    samples_per_second: float | None = Field(default=None, ge=0, description="Training throughput.")
    last_checkpoint: CheckpointStatus | None = Field(default=None, description="Newest committed checkpoint.")
    heartbeat_time: datetime | None = Field(default=None, description="Time of the stage's newest progress.json.")
    restart_after: datetime | None = Field(
        default=None, description="The next attempt starts no earlier than this (exponential backoff)."
    )
    last_failure: str | None = Field(default=None, description="Why the newest failed attempt failed.")
    last_failure_attempt: int | None = Field(default=None, ge=0, description="The attempt lastFailure belongs to.")
    store_outage_since: datetime | None = Field(
        default=None,
        description="Since when attempts have ended because the store was unreachable (exit 5), none in between.",
    )
    message: str | None = Field(default=None, description="What the stage is doing or waiting for.")
    start_time: datetime | None = Field(default=None, description="When the first attempt's pod was created.")
    completion_time: datetime | None = Field(default=None, description="When the stage succeeded or failed.")


class RunStagesStatus(StatusModel):
    """The stages of a run that have no object of their own (experts are DDMExperts)."""

    partition: StageStatus = Field(default_factory=StageStatus, description="The partition stage.")
    router: StageStatus = Field(default_factory=StageStatus, description="The router training stage.")
    assemble: StageStatus = Field(default_factory=StageStatus, description="The assemble stage.")
    evaluate: StageStatus = Field(default_factory=StageStatus, description="The evaluate stage.")


class PlanStatus(StatusModel):
    """The run's last placement plan of its experts: when the work left finishes, what it holds and costs."""

    planned_at: datetime = Field(
        description="When the operator made this plan (it re-plans whenever an expert starts)."
    )
    makespan_seconds: float = Field(
        ge=0, description="Predicted seconds from plannedAt until the last expert finishes."
    )
    gpu_hours: float = Field(ge=0, description="GPU-hours the experts' remaining work holds in the plan.")
    cost: float | None = Field(
        default=None, ge=0, description="What those GPU-hours cost at the known prices per GPU-hour (none: no price)."
    )
    unpriced_gpu_hours: float = Field(default=0, ge=0, description="Of gpuHours, those on GPUs with no known price.")
    provisioned_gpus: int = Field(default=0, ge=0, description="GPUs the plan asks autoscaler pools to add.")
    idle_gpu_hours: float = Field(
        default=0,
        ge=0,
        description=(
            "Idle GPU-hours the plan causes: per autoscaler pool it provisions, its new GPUs held from the ask"
            " (plannedAt) until the last expert planned there finishes, less the GPU-hours experts train on them"
            " (the provisioning delay, and new GPUs waiting between experts). GPUs of nodes that exist are not"
            " counted: the plan does not cause them."
        ),
    )
    deadline_from: datetime = Field(
        description="When placement.deadlineHours counts from: the run's first plan of its experts (kept by re-plans)."
    )
    deadline: datetime | None = Field(default=None, description="deadlineFrom + placement.deadlineHours (none: none).")
    meets_deadline: bool | None = Field(
        default=None, description="Whether the plan finishes by the deadline (none: no deadline)."
    )


class PoolRequestStatus(StatusModel):
    """GPUs the run's pods wait for from one autoscaler pool (pods with its selectors, no node yet)."""

    pool: str = Field(description="The pool (a Karpenter NodePool or a cluster-autoscaler node group).")
    gpu_product: str = Field(description="GPU product the pods require (nvidia.com/gpu.product).")
    gpus: int = Field(ge=0, description="GPUs those pods request.")
    pods: int = Field(default=0, ge=0, description="Pods waiting for the pool's new nodes.")


class PodUsageStatus(StatusModel):
    """A pod of the run that holds GPUs now: its GPU-hours count from its container's start."""

    pod: str = Field(description="The pod's name.")
    stage: str = Field(description="Its stage's slug (expert-0, router, …).")
    attempt: int = Field(ge=1, description="Its attempt.")
    node: str = Field(description="The node it runs on.")
    pool: str | None = Field(default=None, description="The autoscaler pool it was planned on, if any.")
    gpus: int = Field(ge=1, description="GPUs it holds.")
    started_at: datetime = Field(description="When its container started (the pod's container state).")


class UsageStatus(StatusModel):
    """What the run has used and asked for, from its pods' container start and finish times."""

    gpu_hours: float = Field(
        default=0,
        ge=0,
        description=(
            "GPU-hours the run's pods have held so far: Σ GPUs × (finish − container start) over every ended"
            " attempt of every stage (finishedGpuHours), plus the running ones' up to asOf."
        ),
    )
    as_of: datetime | None = Field(
        default=None,
        description="Running pods count in gpuHours up to this time (the last whole minute; none: none runs).",
    )
    finished_gpu_hours: float = Field(
        default=0, ge=0, description="Of gpuHours, those of attempts that ended (kept after their pods are deleted)."
    )
    counted_attempts: dict[str, int] = Field(
        default_factory=dict,
        description="Per stage slug, the newest attempt whose GPU-hours are in finishedGpuHours (counted once).",
    )
    holding: list[PodUsageStatus] = Field(
        default_factory=list, description="The run's pods holding GPUs now (a node is given back when its last ends)."
    )
    requested: list[PoolRequestStatus] = Field(
        default_factory=list, description="GPUs asked of autoscaler pools now: pods waiting for a pool's new node."
    )
    requested_gpus: int = Field(default=0, ge=0, description="Σ requested GPUs (next to plan.provisionedGpus).")


class DDMRunStatus(StatusModel):
    """The observed state of a DDMRun."""

    phase: RunPhase = Field(
        default="Pending",
        description=(
            "Pending → Partitioning → Training → Routing → Assembling → Evaluating →"
            " Succeeded, or Failed from any phase."
        ),
    )
    reason: str | None = Field(default=None, description="CamelCase reason of the current phase (why it failed).")
    message: str | None = Field(default=None, description="What a person should know about the run now.")
    experts: str | None = Field(default=None, description="Experts trained / experts in the run, e.g. 3/8.")
    experts_ready: int = Field(default=0, ge=0, description="Experts whose training succeeded.")
    experts_total: int = Field(default=0, ge=0, description="Experts in the run (partition.clusters).")
    progress: str | None = Field(default=None, description="Progress of the whole run in percent, e.g. 42%.")
    progress_fraction: float = Field(default=0.0, ge=0, le=1, description="Progress of the whole run in [0, 1].")
    store_uri: str | None = Field(default=None, description="The run's store prefix (spec.json, data, checkpoints).")
    model_uri: str | None = Field(default=None, description="The assembled model, once assembly succeeded.")
    cluster_sizes: list[int] = Field(default_factory=list, description="Examples per cluster, from the partition.")
    stages: RunStagesStatus = Field(default_factory=RunStagesStatus, description="Stages other than the experts.")
    conditions: list[Condition] = Field(
        default_factory=list, description="Ready, Progressing, Degraded, Complete and Failed."
    )
    plan: PlanStatus | None = Field(default=None, description="The last placement plan of the experts.")
    usage: UsageStatus | None = Field(
        default=None, description="GPU-hours used so far and the GPUs asked of autoscaler pools now."
    )
    start_time: datetime | None = Field(default=None, description="When the operator started the run.")
    completion_time: datetime | None = Field(default=None, description="When the run succeeded or failed.")
    observed_generation: int | None = Field(default=None, ge=0, description="The generation last reconciled.")


class MoveStatus(StatusModel):
    """A planned move of a running expert to faster GPUs that became free."""

    node: str = Field(description="Node the expert moves to.")
    gpu_product: str = Field(description="GPU product of that node.")
    gpus: int = Field(ge=1, description="GPUs it will use there.")
    micro_batch: int = Field(ge=1, description="Micro-batch per GPU there.")
    grad_accum: int = Field(ge=1, description="Gradient accumulation there (the global batch is kept).")
    at_step: int = Field(ge=0, description="The move happens once the checkpoint of this step is committed.")
    gain_seconds: float = Field(description="Predicted finish time saved, restart cost included.")


class DDMExpertSpec(StatusModel):
    """One expert of a run: the operator creates it when the partition is done."""

    run: str = Field(pattern=K8S_NAME_PATTERN, max_length=63, description="Name of the DDMRun this expert belongs to.")
    expert: int = Field(ge=0, le=255, description="Index k of the cluster this expert trains on.")
    examples: int = Field(ge=0, description="Examples in the cluster (its share of the dataset).")
    steps: int = Field(ge=1, description="Optimizer steps this expert trains (expert.stepsPolicy applied).")
    preset: str = Field(description="Transformer preset of the expert.")


class DDMExpertStatus(StageStatus):
    """The observed state of one expert, reconciled from its pods and its progress.json."""

    micro_batch: int | None = Field(default=None, ge=1, description="Examples per forward pass per GPU (the plan).")
    grad_accum: int | None = Field(default=None, ge=1, description="Gradient-accumulation steps (the plan).")
    predicted_seconds: float | None = Field(
        default=None, ge=0, description="Training time the placement plan predicts on this GPU."
    )
    move: MoveStatus | None = Field(default=None, description="A planned move to faster GPUs, if any.")
    evacuation: str | None = Field(
        default=None,
        max_length=400,
        description=(
            "Why the current attempt leaves its node (a deletion taint on it, e.g. ToBeDeletedByClusterAutoscaler or"
            " karpenter.sh/disrupted): its pod is stopped (SIGTERM: the trainer commits a checkpoint at its next step)"
            " and the expert resumes from that checkpoint on other capacity."
        ),
    )
    island: str | None = Field(
        default=None,
        max_length=63,
        description="Cluster the newest attempt runs on: home (the operator's own) or a ComputeIsland.",
    )
