"""A task run every few seconds on a thread of its own until stopped.

The island monitor (probes) and the NodePool lister share it. A round that raises is logged
with its error's type and the next round tries again: one failure never stops the loop. It
never runs a round while `when()` is false (a standby replica under leader election).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from atoll.log import get_logger

log = get_logger(__name__)


class PeriodicTask:
    """`step()` every `interval_seconds` (after each round ends) on a daemon thread named `name`."""

    def __init__(
        self,
        name: str,
        step: Callable[[], object],
        interval_seconds: float,
        *,
        failed: str,
        when: Callable[[], bool] = lambda: True,
    ) -> None:
        self.name = name
        self.step = step
        self.interval_seconds = interval_seconds
        self.failed = failed
        """What the warning says when a round raises."""
        self.when = when
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run(self) -> None:
        while not self._stop.is_set():
            if self.when():
                try:
                    self.step()
                except Exception as error:  # one bad round must not stop the loop
                    log.warning(self.failed, task=self.name, error=type(error).__name__)
            self._stop.wait(self.interval_seconds)

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
