"""A thread pool that runs the most urgent call first: the DDMExpert status writes of every
run share one, so a status a person waits for (a pod now Running, an expert done or failed)
is not sent after a burst of another run's just-created experts' Pending statuses.

`concurrent.futures.ThreadPoolExecutor` runs calls in the order they came (a FIFO queue);
this one keeps a priority queue, first by urgency (lower first), then by arrival. Its
threads are daemons, started with the pool, that live as long as the process.
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")


class PriorityPool:
    """`workers` threads running submitted calls, most urgent (lowest `urgency`) first and, at
    equal urgency, in the order they were submitted."""

    def __init__(self, workers: int, name: str) -> None:
        self._queue: queue.PriorityQueue[tuple[int, int, Callable[[], Any], Future[Any]]] = queue.PriorityQueue()
        self._arrivals = itertools.count()
        self._threads = [threading.Thread(target=self._work, name=f"{name}_{k}", daemon=True) for k in range(workers)]
        for thread in self._threads:
            thread.start()

    def submit(self, urgency: int, call: Callable[[], T]) -> Future[T]:
        """Queue `call`; its future."""
        future: Future[T] = Future()
        self._queue.put((urgency, next(self._arrivals), call, future))
        return future

    def _work(self) -> None:
        while True:
            _, _, call, future = self._queue.get()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(call())
            except BaseException as error:  # handed to whoever waits on the future
                future.set_exception(error)
