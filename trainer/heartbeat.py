"""Writes a stage's progress.json heartbeat to the store, throttled, never failing the stage.

Stages call `update(...)` as often as they like; the heartbeat is written at most every
`interval` seconds, and always on state changes and checkpoints. Running heartbeats are
written by a background thread (the newest one wins), so a store outage delays the
heartbeat but never holds training up; the final `done` / `failed` heartbeat is written
synchronously so it is in the store before the process exits.
"""

from __future__ import annotations

import os
import threading
import time
from datetime import UTC, datetime
from typing import Any

from atoll import layout
from atoll.log import get_logger
from atoll.progress import StageName, StageProgress
from atoll.store import Store, StoreError

log = get_logger(__name__)


class Heartbeat:
    """The progress.json of one stage invocation."""

    def __init__(
        self,
        store: Store,
        stage: StageName,
        *,
        expert: int | None = None,
        attempt: int = 1,
        total_steps: int = 0,
        interval: float = 10.0,
    ) -> None:
        self.store = store
        self.key = layout.progress(layout.stage_prefix(stage, expert))
        self.interval = interval
        self.progress = StageProgress(
            stage=stage,
            expert=expert,
            attempt=attempt,
            total_steps=total_steps,
            node=os.environ.get("NODE_NAME") or os.uname().nodename,
        )
        self._last_write = 0.0
        # A running heartbeat gives up quickly during a store outage: the next one follows.
        self._background_store = store.with_retry_deadline(5.0)
        self._lock = threading.Lock()
        self._pending: bytes | None = None
        self._wake = threading.Condition(self._lock)
        self._writing = False
        self._writer: threading.Thread | None = None

    def update(self, *, force: bool = False, **fields: Any) -> None:
        """Merge fields into the heartbeat; write it if forced, on a state change or when due."""
        state_changed = "state" in fields and fields["state"] != self.progress.state
        self.progress = self.progress.model_copy(update={**fields, "updated_at": datetime.now(UTC)})
        if self.progress.state in ("done", "failed"):
            self.write()
        elif force or state_changed or time.monotonic() - self._last_write >= self.interval:
            self._write_in_background()

    def write(self) -> None:
        """Write now, after any background write in flight; a store error is logged, not raised."""
        with self._wake:
            self._pending = None
            while self._writing:
                self._wake.wait()
        self._put(self.store, self.progress.to_json())

    def _put(self, store: Store, data: bytes) -> None:
        try:
            store.put_bytes(self.key, data)
            self._last_write = time.monotonic()
        except StoreError as error:
            log.warning("progress heartbeat not written", key=self.key, error=str(error))

    def _write_in_background(self) -> None:
        self._last_write = time.monotonic()
        with self._wake:
            self._pending = self.progress.to_json()
            if self._writer is None:
                self._writer = threading.Thread(target=self._run_writer, name="heartbeat", daemon=True)
                self._writer.start()
            self._wake.notify_all()

    def _run_writer(self) -> None:
        while True:
            with self._wake:
                while self._pending is None:
                    self._wake.wait()
                data, self._pending, self._writing = self._pending, None, True
            try:
                self._put(self._background_store, data)
            finally:
                with self._wake:
                    self._writing = False
                    self._wake.notify_all()

    def running(self, **fields: Any) -> None:
        self.update(state="running", **fields)

    def done(self, **fields: Any) -> None:
        self.update(state="done", force=True, **fields)

    def failed(self, error: str) -> None:
        self.update(state="failed", error=error, force=True)


def read_progress(store: Store, stage: StageName, expert: int | None = None) -> StageProgress | None:
    """The stage's last heartbeat, or None when it has not written one (or it is unreadable)."""
    try:
        return StageProgress.from_json(store.get_bytes(layout.progress(layout.stage_prefix(stage, expert))))
    except (StoreError, ValueError):
        return None
