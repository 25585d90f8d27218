"""SIGTERM as an exception, so that `finally` blocks run: staged checkpoints finish uploading,
child stages are stopped. Used by the training runner and the local runtime. Never installs
anything outside the main thread (signals can only be handled there).

Graceful stop: inside `sigterm_raises(..., graceful=True)` and while the training loop runs
(`stop_at_step_boundary()`), the first SIGTERM only asks the loop to stop: it commits a
checkpoint at the next step boundary and raises `StageStoppedError` (the stage exits with
ExitCode.STOPPED, which the operator does not count as a failure). Outside the loop, or at a
second SIGTERM, SIGTERM raises at once.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable, Iterator
from types import FrameType

from atoll.errors import AtollError


class StageStoppedError(AtollError):
    """SIGTERM stopped the stage (pod deletion, eviction, the local runtime stopping): not a failure."""


class _Stop:
    """Process-wide state of the graceful stop (signals are process-wide too)."""

    graceful = False
    in_loop = False
    requested = False


_STOP = _Stop()


def stop_requested() -> bool:
    """Whether a SIGTERM asked the training loop to checkpoint and stop."""
    return _STOP.requested


@contextlib.contextmanager
def stop_at_step_boundary() -> Iterator[None]:
    """While inside (the training loop), a first SIGTERM sets `stop_requested()` instead of raising."""
    _STOP.in_loop = True
    try:
        yield
    finally:
        _STOP.in_loop = False


@contextlib.contextmanager
def sigterm_raises(make_error: Callable[[], BaseException], *, graceful: bool = False) -> Iterator[None]:
    """While inside, SIGTERM raises `make_error()` in the main thread (`graceful`: inside the
    training loop, the first one asks for a checkpoint and a stop instead); the previous handler
    comes back after."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        if _STOP.graceful and _STOP.in_loop and not _STOP.requested:
            _STOP.requested = True
            return
        raise make_error()

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    _STOP.graceful, _STOP.requested = graceful, False
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        _STOP.graceful, _STOP.requested = False, False
