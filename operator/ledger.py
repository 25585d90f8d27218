"""GPUs (and the CPU and memory of their pods) the operator has just promised to pods that its
watch does not show yet.

Every run reconciles on its own worker thread from the same indexes. Without a shared
ledger, two runs deciding at once (or one run deciding again before the watch delivered
its new pods) would both see the same GPUs free and pin pods to them. A run decides under
`deciding()` (one run at a time: it reads the index's GPU holders and the usage, plans,
and reserves what it will create before the next run reads); every method takes the same
lock, so a release from another thread never races a read. A reservation ends when its pod
appears among the GPU holders read under that lock (whose count then takes over: every
later reader reads a copy at least as new, so the pod is never lost between the two) or
after a timeout (a pod that was never created).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from atoll.operator.placement.capacity import Requests, pod_requests
from atoll.operator.views import gpus_held_at, pod_gpus


@dataclass(frozen=True, slots=True)
class GpuHolder:
    """A pod that holds (or, pinned and unbound, will hold) GPUs, CPU or memory of a node."""

    node: str
    gpus: int
    requests: Requests = field(default_factory=Requests)
    """The CPU and memory it requests."""


def pod_holder(pod: Mapping[str, Any]) -> GpuHolder | None:
    """What a Pod holds: its node (while unbound: its pinned node, or the placeholder of the pool
    whose new node it waits for), GPUs and CPU/memory requests; None for a pod that has
    finished, is being deleted, has no node or asks nothing."""
    metadata, spec = pod.get("metadata") or {}, pod.get("spec") or {}
    node = gpus_held_at(spec, metadata.get("annotations") or {})
    finished = (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")
    if not node or finished or metadata.get("deletionTimestamp"):
        return None
    gpus, requests = pod_gpus(spec), pod_requests(spec)
    return GpuHolder(node=node, gpus=gpus, requests=requests) if gpus or requests else None


@dataclass(frozen=True, slots=True)
class _Reservation:
    node: str
    gpus: int
    expires: float
    requests: Requests = field(default_factory=Requests)


class GpuLedger:
    """Pending GPU reservations of one operator process, shared by every run."""

    def __init__(self, ttl_seconds: float = 300.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._lock = threading.RLock()
        self._ttl = ttl_seconds
        self._clock = clock
        self._pending: dict[str, _Reservation] = {}

    @contextmanager
    def deciding(self, while_waiting: Callable[[], None] | None = None) -> Iterator[None]:
        """Held while one run reads the usage, decides and reserves: runs decide one after the
        other. `while_waiting` is called (once, without the lock) when another run holds it,
        before waiting for it."""
        if not self._lock.acquire(blocking=False):
            if while_waiting is not None:
                while_waiting()
            self._lock.acquire()
        try:
            yield
        finally:
            self._lock.release()

    def usage(self, holders: Mapping[str, GpuHolder]) -> dict[str, int]:
        """GPUs in use per node: every holder the index shows (pod key namespace/name → node,
        GPUs), plus the reservations whose pods it does not show yet."""
        return self.held(holders)[0]

    def held(self, holders: Mapping[str, GpuHolder]) -> tuple[dict[str, int], dict[str, Requests]]:
        """GPUs and CPU/memory requested per node (nodes with none left out): every holder the
        index shows, plus the reservations whose pods it does not show yet."""
        with self._lock:
            now = self._clock()
            for pod in [p for p, r in self._pending.items() if p in holders or r.expires < now]:
                del self._pending[pod]
            busy: dict[str, int] = {}
            requested: dict[str, Requests] = {}
            items: list[GpuHolder | _Reservation] = [*holders.values(), *self._pending.values()]
            for item in items:
                if item.gpus:
                    busy[item.node] = busy.get(item.node, 0) + item.gpus
                if item.requests:
                    requested[item.node] = requested.get(item.node, Requests()) + item.requests
            return busy, requested

    def reserve(self, pod: str, node: str, gpus: int, requests: Requests | None = None) -> None:
        """Count `gpus` of `node` and the pod's CPU/memory `requests` as used by `pod`
        (namespace/name) until the index has it."""
        requests = requests or Requests()
        if gpus > 0 or requests:
            with self._lock:
                expires = self._clock() + self._ttl
                self._pending[pod] = _Reservation(node=node, gpus=gpus, expires=expires, requests=requests)

    def release(self, pod: str) -> None:
        """The pod will not exist (its creation failed)."""
        with self._lock:
            self._pending.pop(pod, None)
