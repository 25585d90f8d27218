"""SIGTERM as an exception, so that `finally` blocks run: staged checkpoints finish uploading,
child stages are stopped. Used by the training runner and the local runtime. Never installs
anything outside the main thread (signals can only be handled there).
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable, Iterator
from types import FrameType


@contextlib.contextmanager
def sigterm_raises(make_error: Callable[[], BaseException]) -> Iterator[None]:
    """While inside, SIGTERM raises `make_error()` in the main thread; the previous handler comes back after."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise make_error()

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
