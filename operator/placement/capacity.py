"""Host CPU and memory on GPU nodes: what a node has left for a run's expert pods, and how many
GPUs' worth of expert pods that leaves room for.

A node's room is its allocatable `cpu` and `memory` minus the requests of the non-terminal
pods bound to it, which is what kube-scheduler compares (NodeResourcesFit). Pods' requests are
read the scheduler's way (containers summed, a larger init container wins, the pod overhead
added, a missing request taken from its limit); quantities are parsed by the Kubernetes
client's `parse_quantity`, never by hand. What an expert pod on g GPUs requests comes from
the pod builder's own sizing (`atoll.operator.pod_resources`), so the planner and the pod never
disagree. Pure: never calls the API server.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from kubernetes.utils import parse_quantity

from atoll.api.spec import DDMRunSpec
from atoll.operator.placement import labels
from atoll.operator.pod_resources import pod_resources
from atoll.stages import StageJob

GIB = 1024**3


@dataclass(frozen=True, slots=True)
class Requests:
    """CPU and memory as kube-scheduler counts them: whole millicores and bytes (rounded up)."""

    cpu_millis: int = 0
    memory_bytes: int = 0

    def __add__(self, other: Requests) -> Requests:
        return Requests(self.cpu_millis + other.cpu_millis, self.memory_bytes + other.memory_bytes)

    def __sub__(self, other: Requests) -> Requests:
        """What is left, never below zero."""
        return Requests(max(0, self.cpu_millis - other.cpu_millis), max(0, self.memory_bytes - other.memory_bytes))

    def __bool__(self) -> bool:
        return bool(self.cpu_millis or self.memory_bytes)

    def times(self, count: int) -> Requests:
        return Requests(self.cpu_millis * count, self.memory_bytes * count)


PodSize = Callable[[int], Requests]
"""What one pod on g GPUs requests."""


def expert_pod_size(spec: DDMRunSpec) -> PodSize:
    """What the run's expert pod on g GPUs requests: the pod builder's container resources, parsed."""
    job = StageJob("expert", 0)  # every expert's pod is sized alike

    @functools.cache
    def size(gpus: int) -> Requests:
        container = {"resources": pod_resources(spec, job, gpus).container(labels.GPU_RESOURCE, gpus)}
        return pod_requests({"containers": [container]})

    return size


def pod_requests(pod_spec: Mapping[str, Any]) -> Requests:
    """The CPU and memory a pod spec requests, as the scheduler adds them up (unreadable
    quantities, which the API server never admits, count as 0)."""
    containers = [_container(c) for c in pod_spec.get("containers") or []]
    total = Requests(sum(c.cpu_millis for c in containers), sum(c.memory_bytes for c in containers))
    for init in pod_spec.get("initContainers") or []:
        first = _container(init)
        total = Requests(max(total.cpu_millis, first.cpu_millis), max(total.memory_bytes, first.memory_bytes))
    overhead = pod_spec.get("overhead") or {}
    return total + Requests(_millis(overhead.get("cpu")), _bytes(overhead.get("memory")))


def node_allocatable(node: Mapping[str, Any]) -> tuple[int | None, int | None]:
    """(millicores, bytes) of a Node's allocatable cpu and memory (falling back to capacity);
    None for one the node does not report (a hand-written NodeList): it limits nothing.
    Raises ValueError naming the field when a quantity is unreadable."""
    status = node.get("status") or {}
    found: list[int | None] = []
    for resource in ("cpu", "memory"):
        value = next(
            (
                (where, amounts[resource])
                for where in ("allocatable", "capacity")
                if isinstance(amounts := status.get(where), Mapping) and amounts.get(resource) is not None
            ),
            None,
        )
        if value is None:
            found.append(None)
            continue
        try:
            amount = _parse(value[1])
        except ValueError:
            raise ValueError(f"status.{value[0]}.{resource} is not a quantity: {value[1]!r}") from None
        found.append(math.ceil(amount * 1000) if resource == "cpu" else math.ceil(amount))
    return found[0], found[1]


@dataclass(frozen=True, slots=True)
class Room:
    """GPUs of a node that expert pods may use given its free CPU and memory, and why not more."""

    gpus: int
    limit: str | None = None
    """None when CPU and memory limit nothing; else "cpu" or "memory", the one that binds."""
    reason: str = ""


def gpu_room(node: Mapping[str, Any], used: Requests, size: PodSize, gpus: int) -> Room:
    """How many of a node's `gpus` free GPUs expert pods of `size` can use alongside `used`.

    n GPUs is allowed when n pods of one GPU fit: a pod's requests grow with its GPUs and are
    rounded up per pod, so one GPU per pod is the most any set of pods of n GPUs in all can
    request, and every mix of pods the planner puts on the node fits together.
    """
    cpu, memory = node_allocatable(node)
    one = size(1)
    room = gpus
    limit: str | None = None
    reason = ""
    for kind, allocatable, held, per_gpu, show in (
        ("cpu", cpu, used.cpu_millis, one.cpu_millis, _cores),
        ("memory", memory, used.memory_bytes, one.memory_bytes, _gib),
    ):
        if allocatable is None or per_gpu <= 0:
            continue
        free = max(0, allocatable - held)
        fits = free // per_gpu
        if fits < room:
            room, limit = fits, kind
            reason = (
                f"{'CPU' if kind == 'cpu' else 'host memory'} for {fits} GPU(s) of expert pods: {show(free)} free"
                f" (allocatable {show(allocatable)}, other pods request {show(held)}), an expert pod requests"
                f" {show(per_gpu)} per GPU"
            )
    return Room(gpus=room, limit=limit, reason=reason)


def _container(container: Mapping[str, Any]) -> Requests:
    resources = container.get("resources") or {}
    requests = resources.get("requests") or {}
    limits = resources.get("limits") or {}
    cpu = requests.get("cpu", limits.get("cpu"))
    memory = requests.get("memory", limits.get("memory"))
    return Requests(_millis(cpu), _bytes(memory))


def _parse(value: Any) -> Decimal:
    return _parse_text(str(value))


@functools.lru_cache(maxsize=4096)
def _parse_text(text: str) -> Decimal:
    """A quantity (cached: a fleet repeats a few allocatable values on every node, every tick)."""
    try:
        quantity: Decimal = parse_quantity(text)  # type: ignore[no-untyped-call]
    except (ValueError, TypeError, ArithmeticError):
        raise ValueError(f"not a quantity: {text!r}") from None
    return quantity


def _millis(value: Any) -> int:
    if value is None:
        return 0
    try:
        return max(0, math.ceil(_parse(value) * 1000))
    except ValueError:
        return 0


def _bytes(value: Any) -> int:
    if value is None:
        return 0
    try:
        return max(0, math.ceil(_parse(value)))
    except ValueError:
        return 0


def _cores(millis: int) -> str:
    return f"{millis / 1000:g} cores"


def _gib(size: int) -> str:
    return f"{size / GIB:.1f} GiB"
