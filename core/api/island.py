"""The ComputeIsland API: another Kubernetes cluster that experts may run on, and what is known of it.

A ComputeIsland is cluster-scoped and lives only in the home cluster; it names a kubeconfig
Secret in the operator's namespace, never holds a credential itself, and its status never
carries one. The home cluster is an island too, implicitly, under the reserved name `home`.
Pure data: never import Kubernetes clients here.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import Field, field_validator

from atoll.api.base import SpecModel
from atoll.api.names import (
    DNS_LABEL_PATTERN,
    LABEL_VALUE_MAX,
    LABEL_VALUE_PATTERN,
    dns_label_problem,
    label_value_problem,
)
from atoll.api.placement import HOME_ISLAND
from atoll.api.spec import K8S_NAME_PATTERN
from atoll.api.status import Condition, StatusModel

SECRET_KEY_PATTERN = r"^[-._a-zA-Z0-9]+$"  # noqa: S105 - a pattern for key names, not a secret
"""A key of a Secret's data, as Kubernetes accepts it."""
STORE_ENDPOINT_PATTERN = r"^([A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?$"
"""host[:port] (a DNS name, an IPv4 address or a bracketed IPv6 address), as MINIO_ENDPOINT takes it."""


class KubeconfigSecretRef(SpecModel):
    """Where the island's kubeconfig lives: a Secret in the operator's namespace of the home cluster."""

    name: str = Field(
        pattern=K8S_NAME_PATTERN,
        max_length=253,
        description="Name of the Secret (in the operator's namespace) that holds the kubeconfig.",
    )
    key: str = Field(
        default="kubeconfig",
        pattern=SECRET_KEY_PATTERN,
        max_length=253,
        description="Key of the Secret's data that holds the kubeconfig.",
    )


class ComputeIslandSpec(SpecModel):
    """A remote Kubernetes cluster experts may run on."""

    kubeconfig_secret_ref: KubeconfigSecretRef = Field(
        description=(
            "The Secret with the kubeconfig the operator reaches the island with. Its credentials"
            " need only the remote Role of charts/atoll-island (pods, secrets, events in"
            " spec.namespace; nodes read); the Secret is re-read on every probe, so a rotation"
            " is picked up without a restart."
        )
    )
    namespace: str = Field(
        default="atoll",
        json_schema_extra={"pattern": DNS_LABEL_PATTERN},
        max_length=63,
        description="Namespace on the island where expert pods and their store Secrets are created.",
    )
    store_endpoint: str | None = Field(
        default=None,
        pattern=STORE_ENDPOINT_PATTERN,
        max_length=261,
        description=(
            "host[:port] at which the island's pods reach the run's object store, when it differs"
            " from the endpoint in the run's store Secret (the same store, another address)."
        ),
    )
    cost_per_gpu_hour: dict[str, Annotated[float, Field(ge=0)]] = Field(
        default_factory=dict,
        max_length=64,
        description=(
            "Cost of one GPU-hour by GPU product (nvidia.com/gpu.product), in one currency shared"
            " by every island; products not listed have no known cost."
        ),
    )
    cordoned: bool = Field(
        default=False,
        description="A cordoned island accepts no new experts; experts already there keep running.",
    )

    @field_validator("namespace")
    @classmethod
    def _namespace_is_dns_label(cls, value: str) -> str:
        if problem := dns_label_problem(value):
            raise ValueError(f"invalid namespace {value!r}: {problem}")
        return value

    @field_validator("cost_per_gpu_hour")
    @classmethod
    def _products_are_label_values(cls, value: dict[str, float]) -> dict[str, float]:
        for product in value:
            if not product or (problem := label_value_problem(product)):
                raise ValueError(f"GPU product {product!r}: {problem or 'must not be empty'}")
        return value


IslandConditionType = Literal["Connected", "Ready"]
ISLAND_CONDITION_TYPES: tuple[IslandConditionType, ...] = ("Connected", "Ready")


class IslandCondition(Condition):
    """A standard Kubernetes condition (metav1.Condition) of a ComputeIsland."""

    type: IslandConditionType = Field(  # type: ignore[assignment]
        description=(
            "Connected: the operator reached the island's API server with its credentials;"
            " Ready: connected, not cordoned, and at least one usable GPU node."
        )
    )


class IslandGpus(StatusModel):
    """The GPUs of one product on an island."""

    product: str = Field(
        json_schema_extra={"pattern": LABEL_VALUE_PATTERN},
        max_length=LABEL_VALUE_MAX,
        description="GPU product (nvidia.com/gpu.product).",
    )
    nodes: int = Field(ge=0, description="Usable nodes with this product.")
    gpus: int = Field(ge=0, description="Allocatable GPUs of this product on usable nodes.")
    free: int = Field(ge=0, description="Of those, GPUs no pod requests now.")


class ComputeIslandStatus(StatusModel):
    """What the operator last observed of an island. Never holds a credential."""

    conditions: list[IslandCondition] = Field(default_factory=list, description="Connected and Ready.")
    server_version: str | None = Field(default=None, description="Kubernetes version of the island's API server.")
    disconnected_since: datetime | None = Field(
        default=None,
        description="Since when the island has been unreachable: set by the first failed probe, kept by the retries.",
    )
    failed_attempts: int = Field(default=0, ge=0, description="Failed probes in a row since the last success.")
    next_retry_time: datetime | None = Field(
        default=None, description="When the next probe of a disconnected island is due (exponential backoff)."
    )
    last_probe_time: datetime | None = Field(default=None, description="When the operator last probed the island.")
    inventory: list[IslandGpus] = Field(default_factory=list, description="Usable GPUs by product.")
    products: str | None = Field(
        default=None, description="Products and GPU counts, e.g. NVIDIA-L4×8 (printer column)."
    )
    gpus: int = Field(default=0, ge=0, description="Allocatable GPUs on usable nodes.")
    free_gpus: int = Field(default=0, ge=0, description="GPUs no pod requests now.")
    observed_generation: int | None = Field(default=None, ge=0, description="The generation last reconciled.")


class IslandMeta(SpecModel):
    """The part of object metadata a ComputeIsland needs (cluster-scoped: no namespace)."""

    name: str = Field(
        json_schema_extra={"pattern": DNS_LABEL_PATTERN}, max_length=63, description="Island name (a DNS label)."
    )

    @field_validator("name")
    @classmethod
    def _name_rules(cls, value: str) -> str:
        if problem := dns_label_problem(value):
            raise ValueError(problem)
        if value == HOME_ISLAND:
            raise ValueError(f"{HOME_ISLAND!r} is the implicit island of the home cluster; choose another name")
        return value


class ComputeIslandManifest(SpecModel):
    """A ComputeIsland object as `atoll island add` writes it."""

    api_version: Literal["atoll.dev/v1alpha1"] = Field(description="atoll.dev/v1alpha1")
    kind: Literal["ComputeIsland"] = Field(description="ComputeIsland")
    metadata: IslandMeta = Field(description="Object metadata.")
    spec: ComputeIslandSpec = Field(description="The island.")
