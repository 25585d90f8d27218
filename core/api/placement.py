"""Where a run's pods may go: islands, GPU constraints, node selector, tolerations, growable pools,
CPU and memory per GPU.

Part of the DDMRun spec (atoll.api.spec re-exports these models). Label keys and values,
taint keys and toleration fields follow Kubernetes' own rules (atoll.api.names), so a run
the API server accepts never makes pods the API server refuses. Pure data: never import
torch or Kubernetes clients here.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, Field, ValidationInfo, field_validator

from atoll.api.base import SpecModel
from atoll.api.names import (
    DNS_LABEL_PATTERN,
    LABEL_VALUE_MAX,
    LABEL_VALUE_PATTERN,
    QUALIFIED_NAME_MAX,
    QUALIFIED_NAME_PATTERN,
    dns_label_problem,
    label_value_problem,
    qualified_name_problem,
)


def _label_value(value: str) -> str:
    if problem := label_value_problem(value):
        raise ValueError(f"invalid label value {value!r}: {problem}")
    return value


LabelValue = Annotated[
    str,
    Field(json_schema_extra={"pattern": LABEL_VALUE_PATTERN, "maxLength": LABEL_VALUE_MAX}),
    AfterValidator(_label_value),
]
"""A Kubernetes label value (pattern in the CRD, a clear reason in pydantic)."""


HOME_ISLAND = "home"
"""The implicit island of the cluster the operator runs in; no ComputeIsland may take the name."""


def _island_name(value: str) -> str:
    if problem := dns_label_problem(value):
        raise ValueError(f"invalid island name {value!r}: {problem}")
    return value


IslandName = Annotated[
    str,
    Field(json_schema_extra={"pattern": DNS_LABEL_PATTERN, "maxLength": 63}),
    AfterValidator(_island_name),
]
"""A ComputeIsland's name as a run names it (a DNS label), or `home` for the operator's own cluster."""


def check_label_keys(value: dict[str, str], what: str) -> dict[str, str]:
    """Raise ValueError naming the first key of `value` that is not a qualified name."""
    for key in value:
        if problem := qualified_name_problem(key):
            raise ValueError(f"{what} key {key!r}: {problem}")
    return value


class GPURequirements(SpecModel):
    """Constraints on the GPUs experts may use."""

    min_memory_gi_b: float = Field(
        default=0,
        ge=0,
        le=4096,
        alias="minMemoryGiB",
        description="Only GPUs with at least this much memory (GiB) are used.",
    )
    products: list[str] = Field(
        default_factory=list,
        max_length=64,
        description="Allowed nvidia.com/gpu.product values; any when empty.",
    )
    max_per_expert: int = Field(default=8, ge=1, le=64, description="Most GPUs (of one node) a single expert may use.")


class Toleration(SpecModel):
    """A Kubernetes toleration added to every pod of the run (Kubernetes' rules apply)."""

    key: str | None = Field(
        default=None,
        json_schema_extra={"pattern": f"^$|{QUALIFIED_NAME_PATTERN}", "maxLength": QUALIFIED_NAME_MAX},
        description="Taint key, a qualified name ([prefix/]name); all keys when empty with operator Exists.",
    )
    operator: Literal["Exists", "Equal"] = Field(
        default="Equal",
        validate_default=True,
        description="Exists (any value; takes no value) or Equal (the key's value must equal value).",
    )
    value: str | None = Field(
        default=None,
        json_schema_extra={"pattern": LABEL_VALUE_PATTERN, "maxLength": LABEL_VALUE_MAX},
        description="Taint value for operator Equal (a label value); must be empty for Exists.",
    )
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect to tolerate; all when empty."
    )
    toleration_seconds: int | None = Field(
        default=None,
        ge=0,
        le=31_536_000,
        description="How long the pod stays bound to a node with a matching NoExecute taint (effect NoExecute only).",
    )

    @field_validator("key")
    @classmethod
    def _key_is_qualified(cls, value: str | None) -> str | None:
        if value and (problem := qualified_name_problem(value)):
            raise ValueError(f"invalid taint key {value!r}: {problem}")
        return value

    @field_validator("operator")
    @classmethod
    def _equal_needs_key(cls, value: str, info: ValidationInfo) -> str:
        if value == "Equal" and "key" in info.data and not info.data["key"]:
            raise ValueError("operator must be Exists when key is empty (Exists with no key tolerates every taint)")
        return value

    @field_validator("value")
    @classmethod
    def _value_fits_operator(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return value
        if info.data.get("operator") == "Exists" and value:
            raise ValueError("must be empty when operator is Exists")
        if problem := label_value_problem(value):
            raise ValueError(f"invalid toleration value {value!r}: {problem}")
        return value

    @field_validator("toleration_seconds")
    @classmethod
    def _seconds_need_no_execute(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is not None and "effect" in info.data and info.data["effect"] != "NoExecute":
            raise ValueError("is only allowed with effect NoExecute")
        return value


class IslandPlacement(SpecModel):
    """Which clusters (ComputeIslands, and `home`) the run's experts may go to."""

    restrict: list[IslandName] = Field(
        default_factory=list,
        max_length=64,
        json_schema_extra={"x-kubernetes-list-type": "set"},
        description=f"Only these islands ({HOME_ISLAND!r} is the operator's own cluster); every island when empty.",
    )
    prefer: list[IslandName] = Field(
        default_factory=list,
        max_length=64,
        json_schema_extra={"x-kubernetes-list-type": "set"},
        description=(
            "Islands to use first, in this order, when the plan's makespan is the same; each must be"
            " in restrict when restrict is set."
        ),
    )

    @field_validator("restrict", "prefer")
    @classmethod
    def _no_repeats(cls, value: list[str]) -> list[str]:
        repeated = sorted({name for name in value if value.count(name) > 1})
        if repeated:
            raise ValueError(f"names an island more than once: {', '.join(repeated)}")
        return value

    @field_validator("prefer")
    @classmethod
    def _preferred_are_allowed(cls, value: list[str], info: ValidationInfo) -> list[str]:
        restrict = info.data.get("restrict") or []
        outside = [name for name in value if restrict and name not in restrict]
        if outside:
            raise ValueError(f"prefers {', '.join(outside)}, which placement.islands.restrict leaves out")
        return value


KARPENTER_NODEPOOL_LABEL = "karpenter.sh/nodepool"
"""The label Karpenter puts on every node of a NodePool (the default selector of a pool)."""


class GrowablePoolSpec(SpecModel):
    """GPUs of one product an autoscaler can add (a Karpenter NodePool, a cluster-autoscaler node group)."""

    name: LabelValue = Field(
        min_length=1,
        description=(
            "The autoscaler's pool: a Karpenter NodePool's name, or a node group's name (then set"
            " nodeLabels to the label its nodes carry)."
        ),
    )
    product: LabelValue = Field(
        min_length=1, description="GPU product of the pool's nodes (nvidia.com/gpu.product, e.g. NVIDIA-L4)."
    )
    max_gpus: int = Field(
        ge=1,
        le=100_000,
        description=(
            "The pool's GPU limit: GPUs its nodes may hold in all, nodes that exist included (a NodePool's"
            " spec.limits). Plans never provision beyond it."
        ),
    )
    gpus_per_node: int | None = Field(
        default=None,
        ge=1,
        le=64,
        description="GPUs of the largest node the pool makes (an expert's GPUs are on one node); unset: any.",
    )
    provisioning_seconds: float = Field(
        default=300,
        ge=0,
        le=86_400,
        description="Seconds from asking for a node of the pool until it runs pods (boot, join, device plugin).",
    )
    cost_per_gpu_hour: float | None = Field(
        default=None,
        ge=0,
        description=(
            "Price of one GPU of the pool for an hour (reported with the plan; minimised under"
            " placement.deadlineHours, and breaking makespan ties)."
        ),
    )
    node_labels: dict[str, LabelValue] = Field(
        default_factory=dict,
        max_length=16,
        description=(
            "Labels every node of the pool carries; pods for capacity the pool has yet to add require them."
            f" Empty: {KARPENTER_NODEPOOL_LABEL}: <name>."
        ),
    )

    @field_validator("node_labels")
    @classmethod
    def _label_keys_are_qualified(cls, value: dict[str, str]) -> dict[str, str]:
        return check_label_keys(value, "nodeLabels")

    def selector(self) -> dict[str, str]:
        """The labels a node of this pool carries (what a pod waiting for one requires)."""
        return dict(self.node_labels) or {KARPENTER_NODEPOOL_LABEL: self.name}


class PlacementSpec(SpecModel):
    """Where the run's pods may go, and what CPU and memory they get."""

    islands: IslandPlacement = Field(
        default_factory=IslandPlacement,
        description="Which clusters experts may run on: this one (home) and the ComputeIslands.",
    )

    gpu: GPURequirements = Field(default_factory=GPURequirements, description="GPU constraints.")
    node_selector: dict[str, LabelValue] = Field(
        default_factory=dict,
        max_length=64,
        description=(
            "Labels a node must carry to run any pod of this run: keys are qualified names"
            " ([prefix/]name), values label values."
        ),
    )
    tolerations: list[Toleration] = Field(
        default_factory=list, description="Extra tolerations (nvidia.com/gpu is always tolerated)."
    )
    pools: list[GrowablePoolSpec] = Field(
        default_factory=list,
        max_length=64,
        description=(
            "Pools an autoscaler can grow: the planner weighs provisioning their GPUs (after their delay)"
            " against waiting for the fleet's; one entry per (name, product)."
        ),
    )
    deadline_hours: float | None = Field(
        default=None,
        gt=0,
        le=8760,
        description=(
            "Hours the experts' training may take, counted from the plan that places them: the planner"
            " then minimises cost (GPU-hours × costPerGpuHour of pools, islands and nodes) among plans"
            " that finish within it, and falls back to the fastest plan, saying so, when none does."
            " Unset: the fastest plan, cost breaking ties."
        ),
    )
    speeds: dict[str, Annotated[float, Field(gt=0)]] = Field(
        default_factory=dict,
        description="Measured samples/s of the expert preset per GPU product, overriding built-in figures.",
    )
    cpu_per_gpu: float | None = Field(
        default=None,
        gt=0,
        le=256,
        description=(
            "CPU cores requested per GPU of a stage pod (a pod without GPUs counts as one);"
            " derived from the preset when unset."
        ),
    )
    memory_per_gpu_gi_b: float | None = Field(
        default=None,
        gt=0,
        le=4096,
        alias="memoryPerGpuGiB",
        description=(
            "Memory (GiB) requested per GPU of a stage pod (a pod without GPUs counts as one);"
            " derived from the preset when unset."
        ),
    )

    @field_validator("node_selector")
    @classmethod
    def _selector_keys_are_qualified(cls, value: dict[str, str]) -> dict[str, str]:
        return check_label_keys(value, "nodeSelector")

    @field_validator("pools")
    @classmethod
    def _pools_are_distinct(cls, value: list[GrowablePoolSpec]) -> list[GrowablePoolSpec]:
        seen: set[tuple[str, str]] = set()
        for index, pool in enumerate(value):
            if (pool.name, pool.product) in seen:
                raise ValueError(f"pools[{index}]: pool {pool.name!r} of {pool.product} is declared twice")
            seen.add((pool.name, pool.product))
        return value
