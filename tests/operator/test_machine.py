"""The run's state machine: forward-only transitions, Failed from anywhere, stage readiness."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from atoll.api.status import RUN_PHASES
from atoll.operator.conditions import Trouble, changed, run_conditions
from atoll.operator.machine import TRANSITIONS, RunFacts, advance, order, run_progress, stage_ready


def facts(**changes: object) -> RunFacts:
    values: dict[str, object] = {
        "store_ready": False,
        "partition": "Waiting",
        "experts": [],
        "router": "Waiting",
        "assemble": "Waiting",
        "evaluate": "Waiting",
    }
    values.update(changes)
    return RunFacts(**values)  # type: ignore[arg-type]


def test_the_happy_path_one_step_at_a_time() -> None:
    assert advance("Pending", facts()) == []
    assert advance("Pending", facts(store_ready=True)) == ["Partitioning"]
    trained = facts(store_ready=True, partition="Succeeded", experts=["Succeeded", "Running"], router="Running")
    assert advance("Partitioning", trained) == ["Training"]
    experts_done = facts(store_ready=True, partition="Succeeded", experts=["Succeeded"] * 2, router="Running")
    assert advance("Training", experts_done) == ["Routing"]
    routed = facts(store_ready=True, partition="Succeeded", experts=["Succeeded"] * 2, router="Succeeded")
    assert advance("Routing", routed) == ["Assembling"]
    assert advance("Assembling", facts(assemble="Succeeded")) == ["Evaluating"]
    assert advance("Evaluating", facts(evaluate="Succeeded")) == ["Succeeded"]


def test_router_done_first_skips_routing_and_a_finished_store_replays_every_phase() -> None:
    routed = facts(store_ready=True, partition="Succeeded", experts=["Succeeded"] * 3, router="Succeeded")
    assert advance("Training", routed) == ["Assembling"]
    everything = facts(
        store_ready=True,
        partition="Succeeded",
        experts=["Succeeded"],
        router="Succeeded",
        assemble="Succeeded",
        evaluate="Succeeded",
    )
    assert advance("Pending", everything) == [
        "Partitioning", "Training", "Assembling", "Evaluating", "Succeeded",
    ]  # fmt: skip


def test_no_experts_yet_is_not_all_experts_done() -> None:
    assert advance("Training", facts(partition="Succeeded", experts=[], router="Succeeded")) == []


@pytest.mark.parametrize("phase", [p for p in RUN_PHASES if p not in ("Succeeded", "Failed")])
def test_failed_from_every_running_phase_and_final_phases_stay(phase: str) -> None:
    assert advance(phase, facts(failure=("ExpertFailed", "expert 1: out of restarts"))) == ["Failed"]  # type: ignore[arg-type]
    assert advance("Succeeded", facts(failure=("X", "y"))) == []
    assert advance("Failed", facts(store_ready=True)) == []


def test_transitions_only_move_forward() -> None:
    for source, edges in TRANSITIONS.items():
        for _, target in edges:
            assert order(target) > order(source), (source, target)


def test_stage_readiness_is_the_pipeline() -> None:
    assert stage_ready("partition", facts(store_ready=True))
    assert not stage_ready("expert", facts(partition="Running"))
    assert stage_ready("router", facts(partition="Succeeded")), "the router starts with the experts"
    assert not stage_ready("assemble", facts(experts=["Succeeded"], router="Running"))
    assert stage_ready("assemble", facts(experts=["Succeeded"], router="Succeeded"))
    assert stage_ready("evaluate", facts(assemble="Succeeded"))


def test_progress_weights() -> None:
    assert run_progress(partition=0, experts=[], clusters=4, router=0, assemble=0, evaluate=0) == 0
    assert run_progress(partition=1, experts=[1, 1, 1, 1], clusters=4, router=1, assemble=1, evaluate=1) == 1
    half = run_progress(partition=1, experts=[0.5, 0.5], clusters=2, router=0.5, assemble=0, evaluate=0)
    assert 0.45 < half < 0.5


def test_conditions_keep_their_transition_time_until_they_change() -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    first = run_conditions([], phase="Training", reason=None, message="m", trouble=None, now=t0, generation=1)
    by_type = {c.type: c for c in first}
    assert (by_type["Progressing"].status, by_type["Degraded"].status, by_type["Ready"].status) == (
        "True",
        "False",
        "False",
    )
    later = t0 + timedelta(minutes=1)
    degraded = run_conditions(
        first, phase="Training", reason=None, message="m", trouble=Trouble("StoreUnavailable", "down"),
        now=later, generation=1,
    )  # fmt: skip
    by_type = {c.type: c for c in degraded}
    assert by_type["Degraded"].status == "True"
    assert by_type["Degraded"].last_transition_time == later
    assert by_type["Progressing"].last_transition_time == t0
    assert [c.type for c in changed(first, degraded)] == ["Degraded"]
    done = run_conditions(degraded, phase="Succeeded", reason=None, message="ok", trouble=None, now=later, generation=1)
    by_type = {c.type: c for c in done}
    assert (by_type["Ready"].status, by_type["Complete"].status, by_type["Progressing"].status) == (
        "True",
        "True",
        "False",
    )
