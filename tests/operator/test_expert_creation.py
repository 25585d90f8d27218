"""DDMExperts are created once: a tick does not create again a DDMExpert it created a moment ago
that the index does not show yet (the DDMExpert watch trails by seconds under load, and each
such create is a request the API server refuses with a conflict), unless the create failed or
the index still does not show it after EXPERT_SHOWN_WITHIN."""

from __future__ import annotations

from atoll.operator.reconcile import remember
from atoll.operator.reconcile.actions import Applied, CreateExpert, Decision
from atoll.operator.reconcile.decide import EXPERT_SHOWN_WITHIN

from .situations import expert, heartbeat, later, observe, pod, run_body, status_body, step, store

FINISHED = store(
    progress={"partition": heartbeat("partition", 1, "done", step=200, total_steps=200)},
    done={"partition": True},
    cluster_sizes=(100, 101),
    claims={"partition": 1},
)
EXITED = (pod("partition", 1, "Succeeded", exit_code=0),)


def partition_done() -> Decision:
    """The tick at which the partition's pod exited 0 and its done marker is in the store."""
    first = step(observe())
    return step(later(observe(run_body(status_body(first.status))), 30, pods=EXITED, store=FINISHED), first.memory)


def next_tick(before: Decision, seconds: float, *, shown: tuple[int, ...] = ()) -> Decision:
    """The tick `seconds` after partition_done(), the index showing the DDMExperts `shown`."""
    look = observe(
        run_body(status_body(before.status)),
        pods=EXITED,
        snapshot=FINISHED,
        experts=tuple(expert(k) for k in shown),
        monotonic=1030.0 + seconds,
    )
    return step(look, before.memory)


def names(decision: Decision) -> list[str]:
    return [create.manifest["metadata"]["name"] for create in decision.of(CreateExpert)]


def test_a_created_expert_the_index_does_not_show_yet_is_not_created_again() -> None:
    done = partition_done()
    assert names(done) == ["r-expert-0", "r-expert-1"]
    assert [create.expert for create in done.of(CreateExpert)] == [0, 1]
    assert names(next_tick(done, 1.0)) == [], "created a second ago: the watch trails, the create is not repeated"
    assert names(next_tick(done, 1.0, shown=(0,))) == []


def test_an_expert_still_not_shown_after_the_grace_is_created_again() -> None:
    done = partition_done()
    waited = next_tick(done, EXPERT_SHOWN_WITHIN - 1.0)
    assert names(waited) == []
    assert names(next_tick(waited, EXPERT_SHOWN_WITHIN + 1.0)) == ["r-expert-0", "r-expert-1"]


def test_an_expert_shown_and_then_deleted_is_created_again_at_once() -> None:
    done = partition_done()
    shown = next_tick(done, 1.0, shown=(0, 1))
    assert names(shown) == []
    assert shown.memory.experts_created == {}, "shown: nothing left to wait for"
    assert names(next_tick(shown, 2.0, shown=(1,))) == ["r-expert-0"]


def test_an_expert_whose_create_failed_is_created_again_at_the_next_tick() -> None:
    done = partition_done()
    applied = Applied(experts_not_created={1})
    memory = remember(done.memory, done, applied)
    assert set(memory.experts_created) == {0}
    assert names(next_tick(Decision(done.actions, done.status, done.events, memory), 1.0)) == ["r-expert-1"]
