"""GPUs the operator has just promised to pods that its watch does not show yet.

Every run plans on its own timer thread from the same indexes. Without a shared ledger,
two runs planning at once (or one run planning again before the watch delivered its new
pods) would both see the same GPUs free and pin pods to them. Planning and reserving
happen under one lock; a reservation ends when the pod appears in the index (whose
count then takes over) or after a timeout (a pod that was never created).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class _Reservation:
    node: str
    gpus: int
    expires: float


class GpuLedger:
    """Pending GPU reservations of one operator process, shared by every run."""

    def __init__(self, ttl_seconds: float = 120.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.lock = threading.Lock()
        """Held while a run plans and reserves, so that runs plan one after the other."""
        self._ttl = ttl_seconds
        self._clock = clock
        self._pending: dict[str, _Reservation] = {}

    def busy(self, indexed: Mapping[str, int], indexed_pods: Collection[str]) -> dict[str, int]:
        """GPUs in use per node: what the index shows plus reservations it does not show yet."""
        now = self._clock()
        for pod in [p for p, r in self._pending.items() if p in indexed_pods or r.expires < now]:
            del self._pending[pod]
        busy = dict(indexed)
        for reservation in self._pending.values():
            busy[reservation.node] = busy.get(reservation.node, 0) + reservation.gpus
        return busy

    def reserve(self, pod: str, node: str, gpus: int) -> None:
        """Count `gpus` of `node` as used by `pod` (namespace/name) until the index has it."""
        if gpus > 0:
            self._pending[pod] = _Reservation(node=node, gpus=gpus, expires=self._clock() + self._ttl)

    def release(self, pod: str) -> None:
        """The pod will not exist (its creation failed)."""
        self._pending.pop(pod, None)
