"""DDMExpert status writes, sent in the background: a tick hands its statuses over and ends,
so the run's next tick observes its pods again while the writes are on their way.

Every run's writes share `workers` threads. The queue works like client-go's workqueue,
keyed by DDMExpert:
  * a DDMExpert handed over again before its write went out is written once, with its
    newest status;
  * one DDMExpert is never written by two threads at once, so an older status can never land
    after a newer one (a status handed over while the older one is being written is written
    after it);
  * the most urgent writes go first (`urgency`): a status a person waits for (a pod now
    Running, an expert done or failed) is not sent after a burst of another run's Pending ones;
  * a write that fails is told to the run's next tick (`failures`), which decides that
    expert's status again against what the API server holds, and writes it again.
Its threads are daemons, started with the writer, that live as long as the process.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from atoll.api.status import DDMExpertStatus
from atoll.log import get_logger
from atoll.operator.reconcile.actions import PatchExpertStatus

log = get_logger("atoll.operator.reconcile")

RunKey = tuple[str, str, str]
"""(namespace, name, uid) of a DDMRun."""

Write = Callable[[str, str, DDMExpertStatus], bool]
"""Writes (namespace, DDMExpert name, status); False when the API server did not take it."""


def urgency(status: DDMExpertStatus) -> int:
    """0 for a status a person waits for (its pod running, the expert done, failed or
    restarting), 1 for a Waiting or Pending one (most often a burst of just-created experts):
    sent after the urgent ones."""
    return 1 if status.phase in ("Waiting", "Pending") else 0


@dataclass
class _Entry:
    """One DDMExpert's newest status not written yet."""

    run: RunKey
    expert: int
    name: str
    status: DDMExpertStatus
    urgency: int
    handed_over: float
    ticket: int = -1
    """The queue item that stands for it now (older items of the same DDMExpert are skipped)."""
    writing: bool = False
    dropped: bool = False


@dataclass
class _Queue:
    lock: threading.Lock = field(default_factory=threading.Lock)
    entries: dict[tuple[str, str], _Entry] = field(default_factory=dict)
    """(namespace, DDMExpert name) → its newest status not written yet."""
    failed: dict[RunKey, set[int]] = field(default_factory=dict)
    idle: threading.Condition = field(init=False)

    def __post_init__(self) -> None:
        self.idle = threading.Condition(self.lock)


class StatusWriter:
    """Writes the DDMExpert statuses handed over by `submit`, in the background (see the
    module docstring). `timer` is told, per write, the seconds from its hand-over until the
    API server took it ("status-write")."""

    def __init__(
        self, write: Write, workers: int, name: str, *, timer: Callable[[str, float], None] | None = None
    ) -> None:
        self._write = write
        self._timer = timer
        self._state = _Queue()
        self._items: queue.PriorityQueue[tuple[int, int, tuple[str, str]]] = queue.PriorityQueue()
        self._tickets = itertools.count()
        self._threads = [threading.Thread(target=self._work, name=f"{name}_{k}", daemon=True) for k in range(workers)]
        for thread in self._threads:
            thread.start()

    def submit(self, run: RunKey, patch: PatchExpertStatus) -> None:
        """Hand over a DDMExpert's new status (it replaces one handed over and not written yet)."""
        key = (run[0], patch.name)
        level = urgency(patch.status)
        with self._state.lock:
            entry = self._state.entries.get(key)
            if entry is None:
                entry = _Entry(run, patch.expert, patch.name, patch.status, level, time.perf_counter())
                self._state.entries[key] = entry
                self._enqueue(key, entry)
                return
            if entry.dropped:  # forgotten while its write was in flight: this status follows it
                entry.dropped, entry.run = False, run
            entry.status = patch.status
            if entry.writing:
                entry.urgency = level  # queued again, with this status, once the write in flight ends
            elif level < entry.urgency:
                entry.urgency = level
                self._enqueue(key, entry)  # moves ahead; the older queue item is skipped

    def failures(self, run: RunKey) -> set[int]:
        """The experts whose status write failed since the last call, for this run (taken)."""
        with self._state.lock:
            return self._state.failed.pop(run, set())

    def forget(self, run: RunKey) -> None:
        """Drop the run's writes not sent yet and its failures: the run is gone, or this replica
        no longer leads (the next leader decides every status again)."""
        with self._state.lock:
            for key, entry in list(self._state.entries.items()):
                if entry.run == run:
                    entry.dropped = True
                    if not entry.writing:
                        del self._state.entries[key]
            self._state.failed.pop(run, None)
            self._state.idle.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until every status handed over was written (or failed); False after `timeout` seconds."""
        with self._state.idle:
            return self._state.idle.wait_for(lambda: not self._state.entries, timeout)

    def _enqueue(self, key: tuple[str, str], entry: _Entry) -> None:
        entry.ticket = next(self._tickets)
        self._items.put((entry.urgency, entry.ticket, key))

    def _work(self) -> None:
        while True:
            _, ticket, key = self._items.get()
            with self._state.lock:
                entry = self._state.entries.get(key)
                if entry is None or entry.ticket != ticket or entry.writing or entry.dropped:
                    continue
                entry.writing = True
                status = entry.status
            try:
                ok = self._write(key[0], entry.name, status)
            except Exception:  # a bug, not the API server: told to the next tick like a failed write
                log.exception("DDMExpert status write failed", ddmexpert=entry.name, namespace=key[0])
                ok = False
            written = time.perf_counter()
            with self._state.lock:
                entry.writing = False
                if entry.status is not status and not entry.dropped:
                    self._enqueue(key, entry)  # a newer status came while this one was written
                    continue
                if self._state.entries.get(key) is entry:
                    del self._state.entries[key]
                if not ok and not entry.dropped:
                    self._state.failed.setdefault(entry.run, set()).add(entry.expert)
                self._state.idle.notify_all()
            if self._timer is not None and ok:
                self._timer("status-write", written - entry.handed_over)
