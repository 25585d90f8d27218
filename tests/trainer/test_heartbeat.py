"""The progress heartbeat: throttled, written off the training thread, final state synchronous."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from atoll.progress import StageProgress
from atoll.store import LocalStore, StoreUnavailableError
from atoll.trainer.heartbeat import Heartbeat, read_progress


class SlowStore(LocalStore):
    """A local store whose writes take `delay` seconds, or fail while `down` is set."""

    def __init__(self, root: Path, delay: float = 0.0) -> None:
        super().__init__(root)
        self.delay = delay
        self.down = threading.Event()

    def put_bytes(self, key: str, data: bytes) -> None:
        time.sleep(self.delay)
        if self.down.is_set():
            raise StoreUnavailableError("store down")
        super().put_bytes(key, data)


def wait_for(predicate, timeout: float = 5.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False


def test_running_updates_do_not_wait_for_a_slow_store(tmp_path: Path) -> None:
    store = SlowStore(tmp_path, delay=0.5)
    beat = Heartbeat(store, "expert", expert=1, attempt=2, total_steps=10, interval=0.0)
    started = time.monotonic()
    for step in range(1, 6):
        beat.running(step=step, loss=1.0 / step)
    # Five synchronous writes would take at least 2.5 s.
    assert time.monotonic() - started < 2.0, "updates must not block on the store"
    assert wait_for(lambda: (p := read_progress(store, "expert", 1)) is not None and p.step == 5)
    beat.done(step=10)
    progress = read_progress(store, "expert", 1)
    assert progress is not None
    assert (progress.state, progress.step, progress.attempt) == ("done", 10, 2)


def test_throttled_between_intervals(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    beat = Heartbeat(store, "router", total_steps=100, interval=3600)
    beat.running(step=1)
    assert wait_for(lambda: read_progress(store, "router") is not None)
    beat.update(step=2)
    time.sleep(0.2)
    progress = read_progress(store, "router")
    assert progress is not None
    assert progress.step == 1, "a second update inside the interval is not written"
    beat.update(step=3, force=True)
    assert wait_for(lambda: (p := read_progress(store, "router")) is not None and p.step == 3)


def test_store_outage_is_logged_not_raised_and_final_state_lands(tmp_path: Path) -> None:
    store = SlowStore(tmp_path)
    beat = Heartbeat(store, "partition", total_steps=4, interval=0.0)
    store.down.set()
    beat.running(step=1)
    beat.failed("boom")  # must not raise while the store is down
    store.down.clear()
    beat.failed("dataset.uri: builtin://nope does not exist")
    progress = read_progress(store, "partition")
    assert isinstance(progress, StageProgress)
    assert progress.state == "failed"
    assert progress.error == "dataset.uri: builtin://nope does not exist"
