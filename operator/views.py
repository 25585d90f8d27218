"""What the operator sees of the cluster: small immutable views of nodes and stage pods.

Parsed from raw API bodies (kopf indexes hold these views, not whole objects, which
keeps a 1000-node fleet cheap). Pure: no API calls, no clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

GROUP = "atoll.dev"
LABEL_RUN = f"{GROUP}/run"
LABEL_STAGE = f"{GROUP}/stage"
LABEL_EXPERT = f"{GROUP}/expert"
LABEL_ATTEMPT = f"{GROUP}/attempt"
ANNOTATION_GPU_PRODUCT = f"{GROUP}/gpu-product"
ANNOTATION_PLANNED_NODE = f"{GROUP}/planned-node"
"""On a pod pinned to one node by a makespan plan."""
ANNOTATION_GPU_HEALTH = f"{GROUP}/gpu-health"

GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
GPU_MEMORY_LABEL = "nvidia.com/gpu.memory"
"""GPU Feature Discovery: memory of one GPU in MiB."""
HOSTNAME_LABEL = "kubernetes.io/hostname"


def parse_time(value: Any) -> datetime | None:
    """An RFC 3339 timestamp of the API (`2026-01-02T03:04:05Z`), or None."""
    if not value:
        return None
    if isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def _int(value: Any, default: int = 0) -> int:
    try:
        return int(str(value))
    except (TypeError, ValueError):
        return default


@dataclass(frozen=True, slots=True)
class NodeView:
    """A node as placement needs it."""

    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    gpus: int = 0
    """Allocatable nvidia.com/gpu."""
    unschedulable: bool = False
    ready: bool = True
    taints: tuple[Mapping[str, Any], ...] = ()

    @property
    def gpu_product(self) -> str | None:
        return self.labels.get(GPU_PRODUCT_LABEL)

    @property
    def gpu_memory_mib(self) -> int:
        return _int(self.labels.get(GPU_MEMORY_LABEL))

    @property
    def healthy(self) -> bool:
        """Not reported unhealthy by the NVML agent (no annotation: healthy)."""
        return self.annotations.get(ANNOTATION_GPU_HEALTH, "ok") == "ok"

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> NodeView:
        metadata, spec, status = body.get("metadata", {}), body.get("spec", {}), body.get("status", {})
        conditions = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
        return cls(
            name=metadata["name"],
            labels=dict(metadata.get("labels") or {}),
            annotations={k: v for k, v in (metadata.get("annotations") or {}).items() if k.startswith(GROUP)},
            gpus=_int((status.get("allocatable") or {}).get(GPU_RESOURCE)),
            unschedulable=bool(spec.get("unschedulable")),
            ready=conditions.get("Ready", "True") == "True",
            taints=tuple(dict(t) for t in spec.get("taints") or []),
        )


@dataclass(frozen=True, slots=True)
class PodView:
    """One stage pod of a run, as the reconciler needs it."""

    name: str
    namespace: str
    run: str
    stage: str
    expert: int | None
    attempt: int
    phase: str = "Pending"
    """Pending, Running, Succeeded, Failed or Unknown (the pod's status.phase)."""
    node: str | None = None
    gpus: int = 0
    gpu_product: str | None = None
    planned_node: str | None = None
    """The node a pinned pod waits for (set before it is bound)."""
    exit_code: int | None = None
    reason: str | None = None
    """Why the pod ended or waits (Error, Evicted, CreateContainerConfigError, Unschedulable…)."""
    message: str | None = None
    created_at: datetime | None = None
    finished_at: datetime | None = None
    deleting: bool = False

    @property
    def finished(self) -> bool:
        return self.phase in ("Succeeded", "Failed")

    @property
    def active(self) -> bool:
        """Still holds (or will hold) its GPUs."""
        return not self.finished and not self.deleting

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> PodView | None:
        """The view of an atoll stage pod; None for a pod without atoll's labels."""
        metadata, spec, status = body.get("metadata", {}), body.get("spec", {}), body.get("status", {})
        labels = metadata.get("labels") or {}
        if LABEL_RUN not in labels or LABEL_STAGE not in labels or LABEL_ATTEMPT not in labels:
            return None
        expert = labels.get(LABEL_EXPERT)
        exit_code, reason, message, finished_at = None, status.get("reason"), status.get("message"), None
        for container in status.get("containerStatuses") or []:
            state = container.get("state") or {}
            if "terminated" in state:
                terminated = state["terminated"]
                exit_code = _int(terminated.get("exitCode"), -1)
                reason = terminated.get("reason") or reason
                message = terminated.get("message") or message
                finished_at = parse_time(terminated.get("finishedAt"))
            elif "waiting" in state and state["waiting"].get("reason") not in (None, "ContainerCreating"):
                reason = state["waiting"].get("reason")
                message = state["waiting"].get("message") or message
            break
        for condition in status.get("conditions") or []:
            if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
                reason = condition.get("reason") or reason
                message = condition.get("message") or message
        gpus = 0
        for container in spec.get("containers") or []:
            limits = (container.get("resources") or {}).get("limits") or {}
            gpus += _int(limits.get(GPU_RESOURCE))
        return cls(
            name=metadata["name"],
            namespace=metadata.get("namespace", ""),
            run=labels[LABEL_RUN],
            stage=labels[LABEL_STAGE],
            expert=None if expert is None else _int(expert),
            attempt=_int(labels[LABEL_ATTEMPT]),
            phase=status.get("phase") or "Pending",
            node=spec.get("nodeName"),
            gpus=gpus,
            gpu_product=(metadata.get("annotations") or {}).get(ANNOTATION_GPU_PRODUCT),
            planned_node=(metadata.get("annotations") or {}).get(ANNOTATION_PLANNED_NODE),
            exit_code=exit_code,
            reason=reason,
            message=message,
            created_at=parse_time(metadata.get("creationTimestamp")),
            finished_at=finished_at,
            deleting=metadata.get("deletionTimestamp") is not None,
        )


@dataclass(frozen=True, slots=True)
class ExpertView:
    """One DDMExpert object of a run."""

    name: str
    namespace: str
    uid: str
    run: str
    expert: int
    examples: int
    steps: int
    status: Mapping[str, Any] = field(default_factory=dict)

    def reference(self) -> dict[str, Any]:
        """Enough of the object for an owner reference or an Event."""
        return {
            "apiVersion": f"{GROUP}/v1alpha1",
            "kind": "DDMExpert",
            "metadata": {"name": self.name, "namespace": self.namespace, "uid": self.uid},
        }

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> ExpertView | None:
        metadata, spec = body.get("metadata", {}), body.get("spec") or {}
        if "run" not in spec or "expert" not in spec:
            return None
        return cls(
            name=metadata["name"],
            namespace=metadata.get("namespace", ""),
            uid=metadata.get("uid", ""),
            run=str(spec["run"]),
            expert=_int(spec["expert"]),
            examples=_int(spec.get("examples")),
            steps=_int(spec.get("steps")),
            status=dict(body.get("status") or {}),
        )
