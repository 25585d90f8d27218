"""GPUs the operator has just promised to pods that its watch does not show yet.

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
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class GpuHolder:
    """A pod that holds (or, pinned and unbound, will hold) GPUs of a node."""

    node: str
    gpus: int


@dataclass(frozen=True, slots=True)
class _Reservation:
    node: str
    gpus: int
    expires: float


class GpuLedger:
    """Pending GPU reservations of one operator process, shared by every run."""

    def __init__(self, ttl_seconds: float = 300.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._lock = threading.RLock()
        self._ttl = ttl_seconds
        self._clock = clock
        self._pending: dict[str, _Reservation] = {}

    @contextmanager
    def deciding(self) -> Iterator[None]:
        """Held while one run reads the usage, decides and reserves: runs decide one after the other."""
        with self._lock:
            yield

    def usage(self, holders: Mapping[str, GpuHolder]) -> dict[str, int]:
        """GPUs in use per node: every holder the index shows (pod key namespace/name → node,
        GPUs), plus the reservations whose pods it does not show yet."""
        with self._lock:
            now = self._clock()
            for pod in [p for p, r in self._pending.items() if p in holders or r.expires < now]:
                del self._pending[pod]
            busy: dict[str, int] = {}
            for holder in holders.values():
                busy[holder.node] = busy.get(holder.node, 0) + holder.gpus
            for reservation in self._pending.values():
                busy[reservation.node] = busy.get(reservation.node, 0) + reservation.gpus
            return busy

    def reserve(self, pod: str, node: str, gpus: int) -> None:
        """Count `gpus` of `node` as used by `pod` (namespace/name) until the index has it."""
        if gpus > 0:
            with self._lock:
                self._pending[pod] = _Reservation(node=node, gpus=gpus, expires=self._clock() + self._ttl)

    def release(self, pod: str) -> None:
        """The pod will not exist (its creation failed)."""
        with self._lock:
            self._pending.pop(pod, None)
