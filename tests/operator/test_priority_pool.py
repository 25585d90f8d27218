"""The status writers' pool: the most urgent call first, in arrival order within an urgency."""

from __future__ import annotations

import threading

import pytest

from atoll.api.status import DDMExpertStatus
from atoll.operator.reconcile.actions import PatchExpertStatus
from atoll.operator.reconcile.executor import urgency
from atoll.operator.reconcile.priority_pool import PriorityPool

WAIT = 10.0


def test_queued_calls_run_most_urgent_first_then_in_arrival_order() -> None:
    pool = PriorityPool(1, "test")
    busy, release = threading.Event(), threading.Event()
    ran: list[str] = []

    def block() -> None:
        busy.set()
        assert release.wait(WAIT)

    first = pool.submit(0, block)
    assert busy.wait(WAIT)  # the one thread is taken: what follows queues
    queued = [
        pool.submit(1, lambda: ran.append("pending a")),
        pool.submit(1, lambda: ran.append("pending b")),
        pool.submit(0, lambda: ran.append("running c")),
        pool.submit(1, lambda: ran.append("pending d")),
        pool.submit(0, lambda: ran.append("running e")),
    ]
    release.set()
    first.result(timeout=WAIT)
    for future in queued:
        future.result(timeout=WAIT)
    assert ran == ["running c", "running e", "pending a", "pending b", "pending d"]


def test_a_calls_error_reaches_its_future_and_the_pool_goes_on() -> None:
    pool = PriorityPool(2, "test")

    def fail() -> None:
        raise ValueError("refused")

    with pytest.raises(ValueError, match="refused"):
        pool.submit(0, fail).result(timeout=WAIT)
    assert pool.submit(0, lambda: 42).result(timeout=WAIT) == 42


@pytest.mark.parametrize(
    ("phase", "expected"),
    [("Waiting", 1), ("Pending", 1), ("Running", 0), ("Restarting", 0), ("Succeeded", 0), ("Failed", 0)],
)
def test_statuses_a_person_waits_for_are_urgent(phase: str, expected: int) -> None:
    patch = PatchExpertStatus(expert=0, name="r-expert-0", status=DDMExpertStatus(phase=phase))  # type: ignore[arg-type]
    assert urgency(patch) == expected
