"""The status writer: DDMExpert statuses written in the background, the most urgent first,
the newest status of a DDMExpert once, never two writes of one DDMExpert at once, failures
told to the run's next tick. A fake write (blocked on purpose) stands in for the API server."""

from __future__ import annotations

import threading

import pytest

from atoll.api.status import DDMExpertStatus
from atoll.operator.reconcile.actions import PatchExpertStatus
from atoll.operator.reconcile.status_writer import StatusWriter, urgency

WAIT = 10.0
RUN = ("ns", "r", "uid-r")
OTHER = ("ns", "other", "uid-o")


def patch(k: int, phase: str = "Running", step: int = 0) -> PatchExpertStatus:
    status = DDMExpertStatus(phase=phase, step=step)  # type: ignore[arg-type]
    return PatchExpertStatus(expert=k, name=f"r-expert-{k}", status=status)


class Api:
    """Records every write; the first `hold` writes block until `release` is set."""

    def __init__(self, hold: int = 0, refuse: frozenset[str] = frozenset()) -> None:
        self.written: list[tuple[str, str, int]] = []
        self.busy = threading.Semaphore(0)
        self.release = threading.Event()
        self.hold = hold
        self.refuse = refuse
        self.lock = threading.Lock()
        self.in_flight: dict[str, int] = {}
        self.overlapped = False

    def write(self, namespace: str, name: str, status: DDMExpertStatus) -> bool:
        with self.lock:
            held = self.hold > 0
            self.hold -= 1
            self.in_flight[name] = self.in_flight.get(name, 0) + 1
            self.overlapped |= self.in_flight[name] > 1
        if held:
            self.busy.release()
            assert self.release.wait(WAIT)
        with self.lock:
            self.in_flight[name] -= 1
            self.written.append((name, status.phase, status.step or 0))
        return name not in self.refuse


def test_a_writes_hand_over_returns_at_once_and_the_write_follows() -> None:
    api = Api(hold=1)
    writer = StatusWriter(api.write, 2, "test")
    writer.submit(RUN, patch(0))  # returns while its write is blocked
    assert api.busy.acquire(timeout=WAIT)
    assert api.written == []
    api.release.set()
    assert writer.wait_idle(WAIT)
    assert api.written == [("r-expert-0", "Running", 0)]


def test_queued_writes_go_most_urgent_first_then_in_the_order_handed_over() -> None:
    api = Api(hold=1)
    writer = StatusWriter(api.write, 1, "test")
    writer.submit(RUN, patch(9))
    assert api.busy.acquire(timeout=WAIT)  # the one thread is taken: what follows queues
    writer.submit(RUN, patch(0, "Pending"))
    writer.submit(RUN, patch(1, "Pending"))
    writer.submit(RUN, patch(2, "Running"))
    writer.submit(RUN, patch(3, "Waiting"))
    writer.submit(RUN, patch(4, "Succeeded"))
    api.release.set()
    assert writer.wait_idle(WAIT)
    assert [name for name, _, _ in api.written] == [f"r-expert-{k}" for k in (9, 2, 4, 0, 1, 3)]


def test_a_ddmexpert_handed_over_twice_before_its_write_is_written_once_with_the_newest() -> None:
    api = Api(hold=1)
    writer = StatusWriter(api.write, 1, "test")
    writer.submit(RUN, patch(9))
    assert api.busy.acquire(timeout=WAIT)
    writer.submit(RUN, patch(0, "Pending"))
    writer.submit(RUN, patch(0, "Running"))  # more urgent now: moves ahead of expert 1
    writer.submit(RUN, patch(1, "Pending"))
    api.release.set()
    assert writer.wait_idle(WAIT)
    assert api.written == [("r-expert-9", "Running", 0), ("r-expert-0", "Running", 0), ("r-expert-1", "Pending", 0)]


def test_a_status_handed_over_while_the_older_is_written_follows_it_never_beside_it() -> None:
    api = Api(hold=1)
    writer = StatusWriter(api.write, 4, "test")
    writer.submit(RUN, patch(0, step=1))
    assert api.busy.acquire(timeout=WAIT)  # step 1 is being written, three threads idle
    writer.submit(RUN, patch(0, step=2))
    writer.submit(RUN, patch(0, step=3))
    api.release.set()
    assert writer.wait_idle(WAIT)
    assert api.written == [("r-expert-0", "Running", 1), ("r-expert-0", "Running", 3)]
    assert not api.overlapped


def test_a_failed_write_is_told_once_to_the_runs_next_tick() -> None:
    api = Api(refuse=frozenset({"r-expert-1"}))
    writer = StatusWriter(api.write, 2, "test")
    for k in range(3):
        writer.submit(RUN, patch(k))
    writer.submit(OTHER, PatchExpertStatus(expert=5, name="other-expert-5", status=DDMExpertStatus()))
    assert writer.wait_idle(WAIT)
    assert writer.failures(RUN) == {1}
    assert writer.failures(RUN) == set(), "taken"
    assert writer.failures(OTHER) == set()


def test_a_write_that_raises_is_a_failure_and_the_writer_goes_on() -> None:
    def write(namespace: str, name: str, status: DDMExpertStatus) -> bool:
        raise ValueError("a bug")

    writer = StatusWriter(write, 1, "test")
    writer.submit(RUN, patch(0))
    assert writer.wait_idle(WAIT)
    assert writer.failures(RUN) == {0}
    writer.submit(RUN, patch(1))
    assert writer.wait_idle(WAIT)
    assert writer.failures(RUN) == {1}


def test_a_forgotten_runs_writes_not_sent_yet_are_dropped() -> None:
    api = Api(hold=1)
    writer = StatusWriter(api.write, 1, "test")
    writer.submit(RUN, patch(0))
    assert api.busy.acquire(timeout=WAIT)
    writer.submit(RUN, patch(1))
    writer.submit(OTHER, PatchExpertStatus(expert=2, name="other-expert-2", status=DDMExpertStatus()))
    writer.forget(RUN)  # this replica stopped leading: the next leader decides again
    api.release.set()
    assert writer.wait_idle(WAIT)
    assert [name for name, _, _ in api.written] == ["r-expert-0", "other-expert-2"], "the write in flight ends"


@pytest.mark.parametrize(
    ("phase", "expected"),
    [("Waiting", 1), ("Pending", 1), ("Running", 0), ("Restarting", 0), ("Succeeded", 0), ("Failed", 0)],
)
def test_statuses_a_person_waits_for_are_urgent(phase: str, expected: int) -> None:
    assert urgency(DDMExpertStatus(phase=phase)) == expected  # type: ignore[arg-type]
