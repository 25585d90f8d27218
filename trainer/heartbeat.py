"""Writes a stage's progress.json heartbeat to the store, throttled, never failing the stage.

Stages call `update(...)` as often as they like; the heartbeat is written at most every
`interval` seconds, and always on state changes and checkpoints. A store outage only
delays the heartbeat (the operator shows the stage as Degraded meanwhile); it never stops
training.
"""

from __future__ import annotations

import os
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

    def update(self, *, force: bool = False, **fields: Any) -> None:
        """Merge fields into the heartbeat; write it if forced, on a state change or when due."""
        state_changed = "state" in fields and fields["state"] != self.progress.state
        self.progress = self.progress.model_copy(update={**fields, "updated_at": datetime.now(UTC)})
        if force or state_changed or time.monotonic() - self._last_write >= self.interval:
            self.write()

    def write(self) -> None:
        """Write now; a store error is logged, not raised."""
        try:
            self.store.put_bytes(self.key, self.progress.to_json())
            self._last_write = time.monotonic()
        except StoreError as error:
            log.warning("progress heartbeat not written", key=self.key, error=str(error))

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
