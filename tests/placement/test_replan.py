"""Re-planning a run in flight (failures, lost or unhealthy nodes) and migrating to faster free GPUs."""

from __future__ import annotations

from typing import Any

import pytest

from atoll.api import DDMRunSpec
from atoll.operator.placement import Assignment, migrations, plan_run, replan
from atoll.progress import CheckpointRef, StageProgress
from tests.placement.fleets import NOW, PRODUCTS, node

H100, A100_40, L4, T4 = PRODUCTS[0], PRODUCTS[3], PRODUCTS[5], PRODUCTS[8]
BATCH = 256
STEPS = 10_000


def run(clusters: int = 4) -> DDMRunSpec:
    return DDMRunSpec.model_validate(
        {
            "dataset": {"uri": "builtin://shapes", "resolution": 256, "vae": "sd-vae-ft-mse"},
            "weights": {"source": "hub"},
            "partition": {"clusters": clusters},
            "expert": {"preset": "dit-b/2", "steps": STEPS, "globalBatchSize": BATCH, "checkpointEvery": 500},
        }
    )


def progress(expert: int, step: int, checkpoint: int | None, state: str = "running") -> StageProgress:
    ref = None
    if checkpoint is not None:
        ref = CheckpointRef(step=checkpoint, uri=f"s3://b/experts/{expert}/checkpoints/step-{checkpoint}", time=NOW)
    return StageProgress(stage="expert", expert=expert, state=state, step=step, total_steps=STEPS, last_checkpoint=ref)


FLEET = [node("a100-0", A100_40, 8), node("h100-0", H100, 8), node("l4-0", L4, 4)]


def started(plan_assignments: tuple[Assignment, ...]) -> dict[int, Assignment]:
    return {a.expert: a for a in plan_assignments if a.start_seconds == 0}


def test_running_experts_stay_pinned_with_the_work_they_have_left() -> None:
    spec = run()
    first = plan_run(spec, FLEET, now=NOW)
    running = started(first.assignments)
    reports = {k: progress(k, step=4000, checkpoint=3500) for k in running}
    again = replan(spec, FLEET, progress=reports, running=running, now=NOW)
    for k, where in running.items():
        now_ = again.assignment(k)
        assert now_ is not None
        assert (now_.node, now_.gpus, now_.micro_batch, now_.start_seconds) == (
            where.node,
            where.gpus,
            where.micro_batch,
            0,
        )
        assert now_.samples == (STEPS - 4000) * BATCH  # continues from its current step
    queued = [a for a in again.assignments if a.expert not in running]
    assert all(a.samples == STEPS * BATCH for a in queued)


def test_a_deleted_node_places_its_expert_again_from_the_last_checkpoint() -> None:
    spec = run(clusters=2)
    running: dict[int, Any] = {
        0: Assignment(
            expert=0,
            node="h100-0",
            gpu_product=H100[0],
            gpus=8,
            micro_batch=32,
            grad_accum=1,
            samples=0,
            start_seconds=0,
            predicted_seconds=0,
            samples_per_second=0,
        ),
        1: Assignment(
            expert=1,
            node="a100-0",
            gpu_product=A100_40[0],
            gpus=8,
            micro_batch=32,
            grad_accum=1,
            samples=0,
            start_seconds=0,
            predicted_seconds=0,
            samples_per_second=0,
        ),
    }
    reports = {0: progress(0, step=4200, checkpoint=4000), 1: progress(1, step=4200, checkpoint=4000)}
    without_h100 = [n for n in FLEET if n["metadata"]["name"] != "h100-0"]
    again = replan(spec, without_h100, progress=reports, running=running, now=NOW)
    moved, stayed = again.assignment(0), again.assignment(1)
    assert moved is not None
    assert stayed is not None
    assert moved.node != "h100-0"
    assert moved.samples == (STEPS - 4000) * BATCH  # the 200 steps since the checkpoint are lost
    assert (stayed.node, stayed.start_seconds, stayed.samples) == ("a100-0", 0.0, (STEPS - 4200) * BATCH)


@pytest.mark.parametrize(
    ("state", "stays"), [("unhealthy", False), ("notready", False), ("cordoned", True), ("stale", True)]
)
def test_running_expert_moves_only_when_its_node_stops_pods(state: str, stays: bool) -> None:
    spec = run(clusters=1)
    fleet = [node("h100-0", H100, 8, state), node("a100-0", A100_40, 8)]
    running = {0: _at("h100-0", 8)}
    again = replan(spec, fleet, progress={0: progress(0, 3000, 2500)}, running=running, now=NOW)
    (assignment,) = again.assignments
    assert (assignment.node == "h100-0") is stays
    assert assignment.samples == (STEPS - (3000 if stays else 2500)) * BATCH


def test_finished_experts_are_left_out_and_a_finished_run_has_an_empty_plan() -> None:
    spec = run(clusters=2)
    reports = {0: progress(0, STEPS, STEPS, state="done"), 1: progress(1, 100, None, state="failed")}
    again = replan(spec, FLEET, progress=reports, running={}, now=NOW)
    assert [a.expert for a in again.assignments] == [1]
    assert again.assignments[0].samples == STEPS * BATCH  # no checkpoint: from the start
    done = {k: progress(k, STEPS, STEPS, state="done") for k in (0, 1)}
    assert replan(spec, FLEET, progress=done, running={}, now=NOW).assignments == ()


def test_an_expert_on_a_slow_gpu_migrates_to_a_fast_one_that_became_free() -> None:
    spec = run(clusters=1)
    fleet = [node("t4-0", T4, 4), node("h100-0", H100, 8)]
    reports = {0: progress(0, step=1200, checkpoint=1000)}
    moves = migrations(spec, fleet, progress=reports, running={0: _at("t4-0", 4)}, now=NOW)
    (move,) = moves
    assert (move.expert, move.from_node, move.to.node) == (0, "t4-0", "h100-0")
    assert move.at_step == 1500  # the next checkpoint boundary (checkpointEvery 500)
    assert move.to.samples == (STEPS - 1500) * BATCH
    assert move.to.micro_batch * move.to.grad_accum * move.to.gpus == BATCH
    assert move.gain_seconds > 0
    assert move.to.start_seconds > 120  # until the boundary, plus the restart cost


def test_no_migration_when_the_fast_gpus_are_taken_or_the_gain_is_small() -> None:
    spec = run(clusters=1)
    fleet = [node("t4-0", T4, 4), node("h100-0", H100, 8)]
    busy = migrations(
        spec,
        fleet,
        progress={0: progress(0, 1200, 1000)},
        running={0: _at("t4-0", 4)},
        used_gpus={"h100-0": 8},
        now=NOW,
    )
    assert busy == []
    nearly_done = migrations(
        spec,
        [node("a100-0", A100_40, 8), node("h100-0", H100, 8)],
        progress={0: progress(0, 9_990, 9_500)},
        running={0: _at("a100-0", 8)},
        now=NOW,
    )
    assert nearly_done == []  # the last checkpoint boundary is the end of training


def test_two_experts_never_migrate_onto_the_same_free_gpus() -> None:
    spec = run(clusters=2)
    fleet = [node("t4-0", T4, 4), node("t4-1", T4, 4), node("h100-0", H100, 8)]
    reports = {0: progress(0, 1200, 1000), 1: progress(1, 1300, 1000)}
    moves = migrations(spec, fleet, progress=reports, running={0: _at("t4-0", 4), 1: _at("t4-1", 4)}, now=NOW)
    assert moves
    assert sum(m.to.gpus for m in moves if m.to.node == "h100-0") <= 8


def test_under_a_deadline_an_expert_does_not_move_to_dearer_gpus() -> None:
    # Spot L4s are cheaper per sample than on-demand H100s: the H100s are idle on purpose.
    fleet = [node("l4-0", L4, 4), node("h100-0", H100, 8)]
    fleet[0]["metadata"]["annotations"]["atoll.dev/cost-per-gpu-hour"] = "0.25"
    fleet[1]["metadata"]["annotations"]["atoll.dev/cost-per-gpu-hour"] = "3.0"
    reports = {0: progress(0, step=1200, checkpoint=1000)}
    spec = run(clusters=1)
    (fastest,) = migrations(spec, fleet, progress=reports, running={0: _at("l4-0", 4)}, now=NOW)
    assert fastest.to.node == "h100-0"  # no deadline: time alone decides, as before
    deadline = spec.model_copy(update={"placement": spec.placement.model_copy(update={"deadline_hours": 48.0})})
    assert migrations(deadline, fleet, progress=reports, running={0: _at("l4-0", 4)}, now=NOW) == []
    # Priced the other way round, the move is cheaper as well as faster: it is taken.
    fleet[0]["metadata"]["annotations"]["atoll.dev/cost-per-gpu-hour"] = "3.0"
    (cheaper,) = migrations(deadline, fleet, progress=reports, running={0: _at("l4-0", 4)}, now=NOW)
    assert cheaper.to.node == "h100-0"


def test_an_expert_grows_in_place_when_more_gpus_of_its_node_become_free() -> None:
    spec = run(clusters=1)
    fleet = [node("h100-0", H100, 8)]
    reports = {0: progress(0, step=1200, checkpoint=1000)}
    # Placed on the 2 GPUs that were free; the other 6, held by another run then, are free now.
    (grow,) = migrations(spec, fleet, progress=reports, running={0: _at("h100-0", 2)}, now=NOW)
    assert (grow.from_node, grow.to.node, grow.at_step) == ("h100-0", "h100-0", 1500)
    assert grow.to.gpus == 8
    assert grow.to.micro_batch * grow.to.grad_accum * grow.to.gpus == BATCH  # the same global batch
    assert grow.to.samples == (STEPS - 1500) * BATCH  # resumes from the boundary's checkpoint
    assert grow.gain_seconds > 0
    # The other 6 still held: nothing to grow into, and a 1-GPU pod of another run leaves 5.
    held = migrations(spec, fleet, progress=reports, running={0: _at("h100-0", 2)}, used_gpus={"h100-0": 6}, now=NOW)
    assert held == []
    (partly,) = migrations(
        spec, fleet, progress=reports, running={0: _at("h100-0", 2)}, used_gpus={"h100-0": 1}, now=NOW
    )
    assert (partly.to.node, partly.to.gpus) == ("h100-0", 4)  # 7 GPUs cannot split a batch of 256


def test_an_expert_never_grows_into_gpus_another_expert_of_the_run_is_planned_on() -> None:
    # Expert 1 waits for 6 GPUs of h100-0 (queued behind nothing: they are free), so expert 0
    # on the other 2 must not take them.
    spec = run(clusters=2)
    fleet = [node("h100-0", H100, 8)]
    reports = {0: progress(0, step=1200, checkpoint=1000), 1: progress(1, step=1200, checkpoint=1000)}
    running = {0: _at("h100-0", 2), 1: _at("h100-0", 6)}
    assert migrations(spec, fleet, progress=reports, running=running, now=NOW) == []


def test_an_expert_leaving_a_node_restarts_on_fewer_gpus_rather_than_wait_for_as_many() -> None:
    # Expert 0 trained on 8 GPUs of h100-0, which is being removed (gone from the fleet it may
    # use), and has 1000 steps left; h100-1 has 2 free GPUs now and its other 6 are held by
    # expert 1 for 9900 steps: on 2 GPUs now expert 0 ends before expert 1, waiting for 8 after.
    spec = run(clusters=2)
    fleet = [node("h100-1", H100, 8)]
    reports = {0: progress(0, step=9200, checkpoint=9000), 1: progress(1, step=100, checkpoint=None)}
    again = replan(spec, fleet, progress=reports, running={1: _at("h100-1", 6)}, now=NOW)
    moved = again.assignment(0)
    assert moved is not None
    assert (moved.node, moved.gpus, moved.start_seconds) == ("h100-1", 2, 0.0)
    assert moved.micro_batch is not None
    assert moved.grad_accum is not None
    assert moved.micro_batch * moved.grad_accum * moved.gpus == BATCH
    assert moved.samples == (STEPS - 9000) * BATCH
    assert moved.predicted_seconds < again.makespan_seconds  # expert 1 is the critical path


def _at(node_name: str, gpus: int) -> Assignment:
    return Assignment(
        expert=0,
        node=node_name,
        gpu_product="",
        gpus=gpus,
        micro_batch=BATCH // gpus,
        grad_accum=1,
        samples=0,
        start_seconds=0,
        predicted_seconds=0,
        samples_per_second=0,
    )


def test_an_expert_lost_after_its_final_checkpoint_but_not_done_is_placed_again() -> None:
    # Its island went dark between the last step's checkpoint and the done marker: the
    # attempt that resumes from that checkpoint only finishes, but it needs a place.
    spec = run(clusters=2)
    reports = {0: progress(0, step=STEPS, checkpoint=STEPS), 1: progress(1, step=STEPS, checkpoint=STEPS, state="done")}
    again = replan(spec, FLEET, progress=reports, running={}, now=NOW)
    placed = again.assignment(0)
    assert placed is not None
    assert placed.start_seconds == 0
    assert placed.samples == BATCH  # one step's worth: resume and finish
    assert again.assignment(1) is None
