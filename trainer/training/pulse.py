"""The background writer of a training stage's running heartbeat (progress.json).

The training thread only records its step and loss (a few attribute writes); this thread
turns them into samples/s, adds NVML telemetry and the newest committed checkpoint, and
writes progress.json every `interval` seconds and whenever a checkpoint commits. So store
latency never slows a step, and a step longer than the interval still gets heartbeats.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from typing import Any

from atoll import layout
from atoll.log import get_logger
from atoll.progress import CheckpointRef
from atoll.store.checkpoint import CheckpointStore
from atoll.trainer.heartbeat import Heartbeat
from atoll.trainer.telemetry import GpuTelemetry

log = get_logger(__name__)


class Pulse:
    """Writes the heartbeat of a running loop from a daemon thread; use as a context manager."""

    def __init__(
        self,
        heartbeat: Heartbeat | None,
        *,
        global_batch: int,
        checkpoints: CheckpointStore | None = None,
        telemetry: GpuTelemetry | None = None,
        interval: float = 10.0,
        log_progress: bool = True,
    ) -> None:
        self.heartbeat = heartbeat
        self.global_batch = global_batch
        self.checkpoints = checkpoints
        self.telemetry = telemetry
        self.interval = interval
        self.log_progress = log_progress
        self._step = 0
        self._loss: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._window: tuple[int, float] | None = None
        self._last_write = time.monotonic()
        self._committed_step: int | None = None
        self.last_checkpoint: CheckpointRef | None = None
        self.samples_per_second: float | None = None

    def record(self, step: int, loss: float) -> None:
        """Called by the training thread after each optimizer step (cheap)."""
        self._step = step
        self._loss = loss

    def start(self, step: int) -> None:
        """Begin measuring at `step` and start the writer thread."""
        self._step = step
        self._window = (step, time.monotonic())
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread; the caller writes the final state itself."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._refresh_checkpoint()
        self._measure()

    def __enter__(self) -> Pulse:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def fields(self) -> dict[str, Any]:
        """The running fields for the heartbeat now."""
        out: dict[str, Any] = {"step": self._step, "loss": self._loss}
        if self.samples_per_second is not None:
            out["samples_per_second"] = round(self.samples_per_second, 3)
        if self.last_checkpoint is not None:
            out["last_checkpoint"] = self.last_checkpoint
        return out

    def _run(self) -> None:
        tick = min(1.0, self.interval)
        while not self._stop.wait(tick):
            try:
                new_checkpoint = self._refresh_checkpoint()
                if new_checkpoint or time.monotonic() - self._last_write >= self.interval:
                    self._beat()
            except Exception as error:  # the heartbeat must never take training down
                log.warning("heartbeat failed", error=str(error))

    def _beat(self) -> None:
        self._measure()
        fields = self.fields()
        if self.telemetry is not None:
            fields["telemetry"] = self.telemetry.read()
        if self.heartbeat is not None:
            self.heartbeat.update(force=True, **fields)
        self._last_write = time.monotonic()
        if self.log_progress:
            log.info(
                "training",
                step=self._step,
                loss=None if self._loss is None else round(self._loss, 5),
                samples_per_s=fields.get("samples_per_second"),
            )

    def _measure(self) -> None:
        if self._window is None:
            return
        step, since = self._window
        now = time.monotonic()
        if self._step > step and now > since:
            self.samples_per_second = (self._step - step) * self.global_batch / (now - since)
            self._window = (self._step, now)

    def _refresh_checkpoint(self) -> bool:
        """Pick up the newest successfully committed checkpoint; True when it changed."""
        if self.checkpoints is None:
            return False
        committed = [c.step for c in list(self.checkpoints.stats.commits) if c.error is None]
        if not committed or max(committed) == self._committed_step:
            return False
        self._committed_step = max(committed)
        store = self.checkpoints.store
        self.last_checkpoint = CheckpointRef(
            step=self._committed_step,
            uri=store.uri_of(layout.checkpoint(self.checkpoints.stage_prefix, self._committed_step)),
            time=datetime.now(UTC),
        )
        return True
