"""A run that waits for the GPU ledger while its pods start: the statuses of the pods that run
are written before its turn comes (a decision that places nothing, applied while it waits),
and the decision under the lock then places what waited, from the memory after that one.

Recorded at scale: a run had 61 of its 64 experts running and 3 queued for GPUs; every one of
its ticks needed the ledger to place the 3, and while 15 other runs placed one after another
its 61 Running statuses waited 16 s for its turn.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from typing import Any

from atoll.operator.ledger import GpuLedger
from atoll.operator.reconcile import Decision, RunMemory, decide_reserving, remember
from atoll.operator.reconcile.actions import Applied, CreatePod, PatchExpertStatus

from .situations import SETTINGS, decided, expert, later, observe, pod, step, store
from .test_decide import created, run_with, running_experts, training_status

BUSY = {"h100-0": 8, "t4-0": 4, "a100-0": 7}
"""Every GPU held by other pods but one of the A100 node's."""


def one_placed_one_queued() -> tuple[Any, Decision]:
    """Two experts to place and one free GPU: expert 0 gets it, expert 1 queues. Returns the
    world and that first decision."""
    world = observe(
        run_with(training_status()),
        experts=(expert(0), expert(1)),
        pods=(pod("router", 1),),
        busy=BUSY,
        snapshot=store(cluster_sizes=(100, 101)),
    )
    first = step(world)
    assert set(created(first)) == {"expert-0"}, "one free GPU: expert 1 queues"
    return world, first


def expert_zero_running(world: Any, first: Decision) -> Any:
    """Ten seconds on: expert 0's pod runs on the A100 node, expert 1 still waits for a GPU."""
    running = pod("expert", 1, "Running", expert_index=0, node="a100-0", created_at="2026-03-01T12:00:00Z")
    return later(replace(world, run=run_with(first.status)), 10, pods=(pod("router", 1), running))


def test_a_decision_without_the_usage_reports_what_runs_and_starts_nothing() -> None:
    world, first = one_placed_one_queued()
    now = expert_zero_running(world, first)
    early = step(replace(now, placing=False, busy_gpus={}), first.memory)
    assert not early.of(CreatePod)
    assert {p.expert: p.status.phase for p in early.of(PatchExpertStatus)} == {0: "Running"}
    assert 1 not in decided(early)
    assert early.memory.experts[1] == first.memory.experts[1], "the expert that waits is kept as it was"


def test_a_run_waiting_for_the_ledger_writes_its_running_statuses_first() -> None:
    world, first = one_placed_one_queued()
    now = expert_zero_running(world, first)
    ledger = GpuLedger()
    early: list[Decision] = []
    final: list[Decision] = []

    def meanwhile(decision: Decision) -> RunMemory:
        early.append(decision)
        return remember(first.memory, decision, Applied())

    taken, release = threading.Event(), threading.Event()

    def other_run_placing() -> None:
        with ledger.deciding():
            taken.set()
            release.wait(timeout=10)

    other = threading.Thread(target=other_run_placing)
    other.start()
    taken.wait(timeout=10)
    waiting = threading.Thread(
        target=lambda: final.append(
            decide_reserving(ledger, replace(now, busy_gpus=BUSY), dict, first.memory, SETTINGS, meanwhile=meanwhile)
        )
    )
    waiting.start()
    waiting.join(timeout=2)
    assert waiting.is_alive(), "the placing decision waits for the other run"
    assert len(early) == 1, "the running expert's status did not wait for the lock"
    assert {p.expert: p.status.phase for p in early[0].of(PatchExpertStatus)} == {0: "Running"}
    release.set()
    waiting.join(timeout=10)
    other.join(timeout=10)
    (decision,) = final
    assert not decision.of(PatchExpertStatus), "expert 0's Running status is not written twice"
    assert decision.memory.experts[0].phase == "Running"
    assert set(created(decision)) == {"expert-1"}, "the GPUs freed meanwhile: the queued expert starts"


def test_no_early_decision_when_the_ledger_is_free_or_nothing_changed() -> None:
    world, first = one_placed_one_queued()
    calls: list[Decision] = []

    def meanwhile(decision: Decision) -> RunMemory:
        calls.append(decision)
        return decision.memory

    now = expert_zero_running(world, first)
    decide_reserving(GpuLedger(), replace(now, busy_gpus=BUSY), dict, first.memory, SETTINGS, meanwhile=meanwhile)
    assert calls == [], "the ledger was free: one decision, made under it"
    status, experts, pods = running_experts()
    router_lost = observe(run_with(status), experts=experts, pods=tuple(pods[:2]))  # both experts run, as written
    assert set(created(step(router_lost))) == {"router"}, "a decision that places: the router's next attempt"
    assert not step(router_lost).of(PatchExpertStatus), "and no DDMExpert status to write"
    ledger = GpuLedger()
    holder = threading.Thread(target=lambda: decide_reserving(
        ledger, router_lost, dict, RunMemory(), SETTINGS, meanwhile=meanwhile
    ))  # fmt: skip
    with ledger.deciding():
        holder.start()
        holder.join(timeout=2)
    holder.join(timeout=10)
    assert calls == [], "nothing to report: the run waits as before"


def test_a_runs_first_placing_never_decides_twice_while_it_waits(monkeypatch: Any) -> None:
    """Without an expert pod no DDMExpert status can be reported: the tick of a run's first
    placing (every run at once in a start-up burst) waits without a decision of its own."""
    from atoll.operator import reconcile

    decisions: list[int] = []
    real = reconcile.decide

    def counted(*args: Any, **kwargs: Any) -> Any:
        decisions.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(reconcile, "decide", counted)
    fresh = observe(run_with(training_status()), experts=(expert(0), expert(1)), pods=(pod("router", 1),))
    ledger = GpuLedger()
    done: list[Decision] = []
    placing = threading.Thread(target=lambda: done.append(decide_reserving(
        ledger, fresh, dict, RunMemory(), SETTINGS, meanwhile=lambda early: early.memory
    )))  # fmt: skip
    with ledger.deciding():
        placing.start()
        placing.join(timeout=2)
    placing.join(timeout=10)
    assert {slug for slug in created(done[0]) if slug.startswith("expert-")} == {"expert-0", "expert-1"}
    assert len(decisions) == 2, "the first try without the usage, then the one under the lock"
