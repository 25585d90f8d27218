"""The GPU fleet as the planner sees it: Kubernetes Node objects → usable GPU nodes + why not.

Reads GPU Feature Discovery labels, allocatable `nvidia.com/gpu`, the NVML agent's
annotations, cordons, readiness, taints and the run's placement constraints; given the size
of the run's expert pods, also the CPU and memory other pods leave free
(atoll.operator.placement.capacity), which caps the GPUs a node offers. Pure: takes
Node dicts (as `kubectl get nodes -o yaml` or kopf deliver them) or kubernetes-client
models, never calls the API server.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from atoll.api.spec import PlacementSpec, Toleration
from atoll.operator.placement import labels
from atoll.operator.placement.capacity import PodSize, Requests, gpu_room
from atoll.operator.placement.gpus import canonical_product, lookup
from atoll.operator.placement.manifests import field_at as _get

ExclusionKind = Literal[
    "no-gpu",
    "cordoned",
    "not-ready",
    "unhealthy",
    "stale",
    "constraint",
    "memory",
    "full",
    "cpu",
    "host-memory",
    "bad-node",
]
ALWAYS_TOLERATED = (Toleration(key=labels.GPU_RESOURCE, operator="Exists"),)
"""Atoll's pods always tolerate the GPU taint (see the pod builder)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class GpuNode:
    """A node the run may use now."""

    name: str
    product: str
    """GFD product (nvidia.com/gpu.product), e.g. NVIDIA-H100-80GB-HBM3."""
    memory_mib: int
    """Memory of each GPU."""
    gpus: int
    """Allocatable nvidia.com/gpu."""
    free_gpus: int
    """Allocatable minus the GPUs other pods already use, capped by the expert pods the node's
    free CPU and memory hold (when the fleet was read with a pod size)."""
    compute_major: int | None


@dataclass(frozen=True, kw_only=True, slots=True)
class Exclusion:
    """A node the run may not use now, and why."""

    node: str
    kind: ExclusionKind
    reason: str


@dataclass(frozen=True, kw_only=True, slots=True)
class Fleet:
    """Usable GPU nodes (sorted by name) and the excluded ones with their reasons."""

    nodes: tuple[GpuNode, ...]
    excluded: tuple[Exclusion, ...]
    all_nodes: tuple[str, ...]
    """Every node name seen, usable or not."""

    def exclusion(self, node: str) -> Exclusion | None:
        return next((e for e in self.excluded if e.node == node), None)


def as_dict(node: Any) -> Mapping[str, Any]:
    """A Node as a camelCase mapping, from a dict, a kubernetes-client V1Node or a node view.

    A view is any object with `name`, `labels`, `annotations`, `gpus` (allocatable),
    `unschedulable`, `ready` and `taints`, and optionally `cpu` and `memory` (allocatable
    quantities): the operator's NodeView.
    """
    if isinstance(node, Mapping):
        return node
    if all(hasattr(node, a) for a in ("name", "labels", "annotations", "gpus", "unschedulable", "ready")):
        allocatable = {labels.GPU_RESOURCE: str(node.gpus)}
        for resource in ("cpu", "memory"):
            if getattr(node, resource, None) is not None:
                allocatable[resource] = str(getattr(node, resource))
        return {
            "metadata": {"name": node.name, "labels": dict(node.labels), "annotations": dict(node.annotations)},
            "spec": {
                "unschedulable": bool(node.unschedulable),
                "taints": [dict(t) for t in getattr(node, "taints", ())],
            },
            "status": {
                "allocatable": allocatable,
                "conditions": [{"type": "Ready", "status": "True" if node.ready else "False"}],
            },
        }
    if hasattr(node, "openapi_types"):
        from kubernetes.client import ApiClient

        converted: Mapping[str, Any] = ApiClient().sanitize_for_serialization(node)  # type: ignore[no-untyped-call]
        return converted
    raise TypeError(f"expected a Node mapping or kubernetes V1Node, got {type(node).__name__}")


def node_products(nodes: Iterable[Any]) -> dict[str, str]:
    """Node name → GPU product (GFD label, else the agent's annotation) of every GPU node, usable or not."""
    products: dict[str, str] = {}
    for raw in nodes:
        node = as_dict(raw)
        name = _get(node, "metadata", "name")
        product = _get(node, "metadata", "labels", labels.GPU_PRODUCT) or _get(
            node, "metadata", "annotations", labels.AGENT_PRODUCT
        )
        if name and product:
            products[str(name)] = canonical_product(str(product))
    return products


def read_fleet(
    nodes: Iterable[Any],
    *,
    placement: PlacementSpec | None = None,
    used_gpus: Mapping[str, int] | None = None,
    now: datetime | None = None,
    stale_after_seconds: float = 180.0,
    needs_bf16: bool = False,
    pod_size: PodSize | None = None,
    used_requests: Mapping[str, Requests] | None = None,
) -> Fleet:
    """Sort nodes into usable GPU nodes and exclusions (the first reason found, in the order
    no GPU, cordoned, NotReady, unhealthy, stale, unreadable, constraint, full, CPU, host memory).

    With `pod_size` (what an expert pod on g GPUs requests), a node offers only the GPUs whose
    pods its free CPU and memory hold: allocatable minus `used_requests` (node → CPU and
    memory requested by the non-terminal pods bound to it, those counted in `used_gpus`).
    """
    rules = _Rules(
        placement=placement or PlacementSpec(),
        used_gpus=used_gpus or {},
        now=now or datetime.now(UTC),
        stale_after_seconds=stale_after_seconds,
        needs_bf16=needs_bf16,
        pod_size=pod_size,
        used_requests=used_requests or {},
    )
    usable: list[GpuNode] = []
    excluded: list[Exclusion] = []
    names: list[str] = []
    for raw in nodes:
        node = as_dict(raw)
        name = str(_get(node, "metadata", "name") or "")
        if not name:
            raise ValueError("a node has no metadata.name")
        names.append(name)
        verdict = rules.read(node, name)
        if isinstance(verdict, GpuNode):
            usable.append(verdict)
        else:
            excluded.append(verdict)
    return Fleet(
        nodes=tuple(sorted(usable, key=lambda n: n.name)),
        excluded=tuple(sorted(excluded, key=lambda e: e.node)),
        all_nodes=tuple(sorted(names)),
    )


@dataclass(frozen=True, kw_only=True, slots=True)
class _Rules:
    """What makes a node usable for one run at one moment."""

    placement: PlacementSpec
    used_gpus: Mapping[str, int]
    now: datetime
    stale_after_seconds: float
    needs_bf16: bool
    pod_size: PodSize | None
    used_requests: Mapping[str, Requests]

    def read(self, node: Mapping[str, Any], name: str) -> GpuNode | Exclusion:
        try:
            gpus = _gpu_count(node)
            if gpus <= 0:
                return Exclusion(node=name, kind="no-gpu", reason="no allocatable nvidia.com/gpu")
            problem = self._availability(node)
            if problem is not None:
                return Exclusion(node=name, kind=problem[0], reason=problem[1])
            found = self._gpu(node)
        except ValueError as error:
            return Exclusion(node=name, kind="bad-node", reason=str(error))
        product, memory_mib, compute_major = found
        reason = self._constraint(node, product, memory_mib, compute_major)
        if reason is not None:
            return Exclusion(node=name, kind="constraint", reason=reason)
        room = self._room(node, name, gpus)
        if isinstance(room, Exclusion):
            return room
        return GpuNode(
            name=name, product=product, memory_mib=memory_mib, gpus=gpus, free_gpus=room, compute_major=compute_major
        )

    def _room(self, node: Mapping[str, Any], name: str, gpus: int) -> int | Exclusion:
        """The GPUs other pods leave free, capped by the expert pods the node's free CPU and
        memory hold (with a pod size), or why not even one."""
        free = gpus - max(0, self.used_gpus.get(name, 0))
        if free <= 0:
            return Exclusion(node=name, kind="full", reason=f"all {gpus} GPUs in use by other pods")
        if self.pod_size is None:
            return free
        try:
            room = gpu_room(node, self.used_requests.get(name, Requests()), self.pod_size, free)
        except ValueError as error:
            return Exclusion(node=name, kind="bad-node", reason=str(error))
        if room.gpus <= 0:
            return Exclusion(node=name, kind="cpu" if room.limit == "cpu" else "host-memory", reason=room.reason)
        return room.gpus

    def _availability(self, node: Mapping[str, Any]) -> tuple[ExclusionKind, str] | None:
        """Cordoned, NotReady, unhealthy or stale, by the node's spec, status and agent annotations."""
        annotations: Mapping[str, str] = _get(node, "metadata", "annotations") or {}
        if _get(node, "spec", "unschedulable"):
            return "cordoned", "cordoned (spec.unschedulable)"
        ready = _ready_condition(node)
        if ready is not None and ready.get("status") != "True":
            return "not-ready", f"NotReady ({ready.get('reason') or ready.get('status') or 'Unknown'})"
        health = annotations.get(labels.HEALTH)
        if health is not None and health.strip() != labels.HEALTH_OK:
            return "unhealthy", f"GPU unhealthy: {health.strip()}"
        return self._staleness(annotations)

    def _staleness(self, annotations: Mapping[str, str]) -> tuple[ExclusionKind, str] | None:
        heartbeat = annotations.get(labels.HEARTBEAT)
        if heartbeat is None:
            return None  # no agent on this node: GFD labels alone decide
        try:
            age = (self.now - _parse_time(heartbeat)).total_seconds()
        except ValueError:
            return "stale", f"unreadable {labels.HEARTBEAT} annotation {heartbeat!r}"
        if age > self.stale_after_seconds:
            return "stale", f"agent heartbeat {age:.0f}s old (limit {self.stale_after_seconds:.0f}s)"
        return None

    def _gpu(self, node: Mapping[str, Any]) -> tuple[str, int, int | None]:
        """(product, memory MiB, compute major) from GFD labels, else the agent's annotations."""
        node_labels: Mapping[str, str] = _get(node, "metadata", "labels") or {}
        annotations: Mapping[str, str] = _get(node, "metadata", "annotations") or {}
        product = node_labels.get(labels.GPU_PRODUCT) or annotations.get(labels.AGENT_PRODUCT)
        if not product:
            raise ValueError(f"no {labels.GPU_PRODUCT} label (GPU Feature Discovery) or agent annotation")
        product = canonical_product(product)
        memory_mib = _memory_mib(node_labels, annotations, product)
        compute_major = _optional_int(node_labels.get(labels.GPU_COMPUTE_MAJOR), labels.GPU_COMPUTE_MAJOR)
        return product, memory_mib, compute_major

    def _constraint(self, node: Mapping[str, Any], product: str, memory_mib: int, major: int | None) -> str | None:
        """The first of the run's placement constraints the node violates."""
        node_labels: Mapping[str, str] = _get(node, "metadata", "labels") or {}
        gpu = self.placement.gpu
        allowed = {canonical_product(p).lower() for p in gpu.products}
        if allowed and product.lower() not in allowed:
            return f"{product} not in placement.gpu.products"
        missing = [f"{k}={v}" for k, v in sorted(self.placement.node_selector.items()) if node_labels.get(k) != v]
        if missing:
            return f"label {missing[0]} missing (placement.nodeSelector)"
        taint = _untolerated_taint(node, [*ALWAYS_TOLERATED, *self.placement.tolerations])
        if taint is not None:
            return f"taint {taint} not tolerated (placement.tolerations)"
        if memory_mib / 1024 < gpu.min_memory_gi_b:
            return f"{memory_mib / 1024:.1f} GiB GPUs < placement.gpu.minMemoryGiB {gpu.min_memory_gi_b:g}"
        if self.needs_bf16 and major is not None and major < 8:
            return f"{product} has no bf16 (compute capability {major}) and precision is bf16"
        return None


def _gpu_count(node: Mapping[str, Any]) -> int:
    for where in ("allocatable", "capacity"):
        value = _get(node, "status", where, labels.GPU_RESOURCE)
        if value is not None:
            try:
                return int(str(value))
            except ValueError:
                raise ValueError(f"status.{where}[{labels.GPU_RESOURCE}] is not an integer: {value!r}") from None
    return 0


def _ready_condition(node: Mapping[str, Any]) -> Mapping[str, Any] | None:
    for condition in _get(node, "status", "conditions") or []:
        if isinstance(condition, Mapping) and condition.get("type") == "Ready":
            return condition
    return None  # no conditions reported (a NodeList written by hand): assume ready


def _memory_mib(node_labels: Mapping[str, str], annotations: Mapping[str, str], product: str) -> int:
    for source, value in (
        (labels.GPU_MEMORY_MIB, node_labels.get(labels.GPU_MEMORY_MIB)),
        (labels.AGENT_MEMORY_MIB, annotations.get(labels.AGENT_MEMORY_MIB)),
    ):
        if value is not None:
            memory = _optional_int(value, source)
            if memory is not None and memory > 0:
                return memory
            raise ValueError(f"{source} must be a positive number of MiB, got {value!r}")
    entry = lookup(product)
    if entry is None:
        raise ValueError(f"unknown GPU memory: no {labels.GPU_MEMORY_MIB} label and {product} is not catalogued")
    return entry.memory_mib


def _optional_int(value: str | None, what: str) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{what} is not an integer: {value!r}") from None


def _parse_time(text: str) -> datetime:
    moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def untolerated_pool_taint(taints: Iterable[Mapping[str, Any]], placement: PlacementSpec) -> str | None:
    """The first taint of a pool's nodes the run does not tolerate (the rule nodes follow), or None."""
    return _untolerated_taint({"spec": {"taints": list(taints)}}, [*ALWAYS_TOLERATED, *placement.tolerations])


def _tolerates(toleration: Toleration, taint: Mapping[str, Any]) -> bool:
    if toleration.effect is not None and toleration.effect != taint.get("effect"):
        return False
    if toleration.operator == "Exists":
        return toleration.key is None or toleration.key == taint.get("key")
    return toleration.key == taint.get("key") and (toleration.value or "") == (taint.get("value") or "")


def _untolerated_taint(node: Mapping[str, Any], tolerations: list[Toleration]) -> str | None:
    for taint in _get(node, "spec", "taints") or []:
        if not isinstance(taint, Mapping) or taint.get("effect") not in ("NoSchedule", "NoExecute"):
            continue
        if not any(_tolerates(t, taint) for t in tolerations):
            value = f"={taint['value']}" if taint.get("value") else ""
            return f"{taint.get('key')}{value}:{taint.get('effect')}"
    return None
