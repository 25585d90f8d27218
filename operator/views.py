"""What the operator sees of the cluster: small immutable views of nodes, stage pods and DDMExperts.

Parsed from raw API bodies (kopf indexes hold these views, not whole objects, which keeps
a 1000-node fleet cheap), plus the keys of atoll's own labels and annotations on the pods
and DDMExperts it creates (GPU labels live in atoll.operator.placement.labels). Pure: no
API calls, no clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from atoll.api.placement import HOME_ISLAND
from atoll.api.spec import API_GROUP, API_GROUP_VERSION
from atoll.api.status import DDMExpertStatus
from atoll.operator.placement import labels
from atoll.operator.placement.capacity import Requests, pod_requests
from atoll.operator.placement.pools import placeholder

LABEL_RUN = f"{API_GROUP}/run"
LABEL_STAGE = f"{API_GROUP}/stage"
LABEL_EXPERT = f"{API_GROUP}/expert"
LABEL_ATTEMPT = f"{API_GROUP}/attempt"
ANNOTATION_GPU_PRODUCT = f"{API_GROUP}/gpu-product"
ANNOTATION_PLANNED_NODE = f"{API_GROUP}/planned-node"
"""On a pod pinned to one node by a makespan plan."""
ANNOTATION_PLANNED_POOL = f"{API_GROUP}/planned-pool"
"""On a pod that waits for a new node of an autoscaler pool (the pool's name)."""
ANNOTATION_PREDICTED_SECONDS = f"{API_GROUP}/predicted-seconds"


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


def _owner_uid(metadata: Mapping[str, Any]) -> str | None:
    """The uid of the object's controller (the first owner when none is marked controller)."""
    owners = metadata.get("ownerReferences") or []
    controller = next((o for o in owners if o.get("controller")), owners[0] if owners else None)
    return None if controller is None else controller.get("uid")


def pod_gpus(spec: Mapping[str, Any]) -> int:
    """GPUs a pod asks for: the sum of its containers' nvidia.com/gpu limits."""
    total = 0
    for container in spec.get("containers") or []:
        total += _int(((container.get("resources") or {}).get("limits") or {}).get(labels.GPU_RESOURCE))
    return total


def gpus_held_at(spec: Mapping[str, Any], annotations: Mapping[str, str]) -> str | None:
    """Where a pod holds its GPUs: its node; unbound, its pinned node or the placeholder of the
    pool whose new node it waits for (None: nowhere yet)."""
    pool, product = annotations.get(ANNOTATION_PLANNED_POOL), annotations.get(ANNOTATION_GPU_PRODUCT)
    waits = placeholder(pool, product) if pool and product else None
    return spec.get("nodeName") or annotations.get(ANNOTATION_PLANNED_NODE) or waits


@dataclass(frozen=True, slots=True)
class NodeView:
    """A node as placement needs it (atoll.operator.placement.fleet decides whether it is usable)."""

    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    """Only atoll's (the NVML agent's) annotations."""
    gpus: int = 0
    """Allocatable nvidia.com/gpu."""
    unschedulable: bool = False
    ready: bool = True
    not_ready_since: datetime | None = None
    """When the Ready condition last left True (None: Ready, or never reported)."""
    taints: tuple[Mapping[str, Any], ...] = ()
    notices: tuple[tuple[str, str], ...] = ()
    """Its conditions other than Ready whose status is True, as (type, reason): where a
    termination notice (a spot preemption, a scheduled event) shows up."""
    cpu: str | None = None
    """Allocatable cpu, the quantity as the node reports it (None: not reported)."""
    memory: str | None = None
    """Allocatable memory, the quantity as the node reports it (None: not reported)."""
    island: str = HOME_ISLAND
    """The cluster the node belongs to (`name` is then qualified by it: atoll.operator.islands.fleet)."""

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> NodeView:
        metadata, spec, status = body.get("metadata", {}), body.get("spec", {}), body.get("status", {})
        conditions = {c.get("type"): c for c in status.get("conditions") or []}
        ready = conditions.get("Ready") or {}
        is_ready = ready.get("status", "True") == "True"
        allocatable = status.get("allocatable") or {}
        return cls(
            name=metadata["name"],
            labels=dict(metadata.get("labels") or {}),
            annotations={k: v for k, v in (metadata.get("annotations") or {}).items() if k.startswith(API_GROUP)},
            gpus=_int(allocatable.get(labels.GPU_RESOURCE)),
            unschedulable=bool(spec.get("unschedulable")),
            ready=is_ready,
            not_ready_since=None if is_ready else parse_time(ready.get("lastTransitionTime")),
            taints=tuple(dict(t) for t in spec.get("taints") or []),
            notices=tuple(
                (str(kind), str(c.get("reason") or ""))
                for kind, c in conditions.items()
                if kind != "Ready" and c.get("status") == "True"
            ),
            cpu=None if allocatable.get("cpu") is None else str(allocatable["cpu"]),
            memory=None if allocatable.get("memory") is None else str(allocatable["memory"]),
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
    planned_pool: str | None = None
    """The autoscaler pool whose new node the pod waits for (no node is named)."""
    exit_code: int | None = None
    reason: str | None = None
    """Why the pod ended or waits (Error, Evicted, CreateContainerConfigError, Unschedulable…)."""
    message: str | None = None
    unschedulable: str | None = None
    """The scheduler's reason while it cannot place the pod (PodScheduled=False), else None."""
    created_at: datetime | None = None
    started_at: datetime | None = None
    """When its container started (its state's startedAt: running, or terminated)."""
    finished_at: datetime | None = None
    deleting: bool = False
    owner_uid: str | None = None
    """uid of the object that owns the pod (its DDMExpert, or the DDMRun)."""
    requests: Requests = field(default_factory=Requests)
    """The CPU and memory it requests."""
    island: str = HOME_ISLAND
    """The cluster the pod runs in (its nodes are then qualified by it: atoll.operator.islands.fleet)."""
    origin_namespace: str | None = None
    """For a pod on an island: the home namespace of its run."""

    @property
    def finished(self) -> bool:
        return self.phase in ("Succeeded", "Failed")

    @property
    def waits_at(self) -> str | None:
        """Where an unbound pod will hold its GPUs: its pinned node, or its pool's placeholder."""
        if self.planned_node is not None:
            return self.planned_node
        if self.planned_pool is not None and self.gpu_product is not None:
            return placeholder(self.planned_pool, self.gpu_product)
        return None

    @property
    def active(self) -> bool:
        """Still holds (or will hold) its GPUs."""
        return not self.finished and not self.deleting

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> PodView | None:
        """The view of an atoll stage pod; None for a pod without atoll's labels."""
        metadata, spec, status = body.get("metadata", {}), body.get("spec", {}), body.get("status", {})
        pod_labels = metadata.get("labels") or {}
        if LABEL_RUN not in pod_labels or LABEL_STAGE not in pod_labels or LABEL_ATTEMPT not in pod_labels:
            return None
        expert = pod_labels.get(LABEL_EXPERT)
        exit_code, reason, message, finished_at = None, status.get("reason"), status.get("message"), None
        started_at = None
        for container in status.get("containerStatuses") or []:
            state = container.get("state") or {}
            if "terminated" in state:
                terminated = state["terminated"]
                exit_code = _int(terminated.get("exitCode"), -1)
                reason = terminated.get("reason") or reason
                message = terminated.get("message") or message
                finished_at = parse_time(terminated.get("finishedAt"))
                started_at = parse_time(terminated.get("startedAt"))
            elif "running" in state:
                started_at = parse_time((state["running"] or {}).get("startedAt"))
            elif "waiting" in state and state["waiting"].get("reason") not in (None, "ContainerCreating"):
                reason = state["waiting"].get("reason")
                message = state["waiting"].get("message") or message
            break
        unschedulable = None
        for condition in status.get("conditions") or []:
            if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
                reason = condition.get("reason") or reason
                message = condition.get("message") or message
                unschedulable = condition.get("message") or condition.get("reason") or "Unschedulable"
        annotations = metadata.get("annotations") or {}
        return cls(
            name=metadata["name"],
            namespace=metadata.get("namespace", ""),
            run=pod_labels[LABEL_RUN],
            stage=pod_labels[LABEL_STAGE],
            expert=None if expert is None else _int(expert),
            attempt=_int(pod_labels[LABEL_ATTEMPT]),
            phase=status.get("phase") or "Pending",
            node=spec.get("nodeName"),
            gpus=pod_gpus(spec),
            gpu_product=annotations.get(ANNOTATION_GPU_PRODUCT),
            planned_node=annotations.get(ANNOTATION_PLANNED_NODE),
            planned_pool=annotations.get(ANNOTATION_PLANNED_POOL),
            exit_code=exit_code,
            reason=reason,
            message=message,
            unschedulable=unschedulable,
            created_at=parse_time(metadata.get("creationTimestamp")),
            started_at=started_at,
            finished_at=finished_at,
            deleting=metadata.get("deletionTimestamp") is not None,
            owner_uid=_owner_uid(metadata),
            requests=pod_requests(spec),
        )


@dataclass(frozen=True, slots=True)
class ExpertView:
    """One DDMExpert object: what the reconciler and `atoll status` read of it."""

    name: str
    namespace: str
    uid: str
    run: str
    expert: int
    examples: int
    steps: int
    status: DDMExpertStatus = field(default_factory=DDMExpertStatus)
    """Its status as stored (an unreadable one reads as a fresh status)."""
    owner_uid: str | None = None
    """uid of the DDMRun that owns it."""

    def reference(self) -> dict[str, Any]:
        """Enough of the object for an owner reference or an Event."""
        return {
            "apiVersion": API_GROUP_VERSION,
            "kind": "DDMExpert",
            "metadata": {"name": self.name, "namespace": self.namespace, "uid": self.uid},
        }

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> ExpertView | None:
        metadata, spec = body.get("metadata", {}), body.get("spec") or {}
        if "run" not in spec or "expert" not in spec:
            return None
        try:
            status = DDMExpertStatus.model_validate(body.get("status") or {})
        except ValidationError:
            status = DDMExpertStatus()
        return cls(
            name=metadata["name"],
            namespace=metadata.get("namespace", ""),
            uid=metadata.get("uid", ""),
            run=str(spec["run"]),
            expert=_int(spec["expert"]),
            examples=_int(spec.get("examples")),
            steps=_int(spec.get("steps")),
            status=status,
            owner_uid=_owner_uid(metadata),
        )
