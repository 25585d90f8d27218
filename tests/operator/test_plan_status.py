"""placement.deadlineHours counts from the run's first plan, not from each re-plan, and the run's
status shows the last plan (makespan, GPU-hours, cost, GPUs asked of pools, the deadline)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from atoll.api import DDMRunSpec
from atoll.api.status import DDMRunStatus, PlanStatus
from atoll.operator.placement.pools import COST_ANNOTATION
from atoll.operator.planning import place_experts
from atoll.operator.reconcile.actions import CreatePod

from .situations import expert, observe, pod, run_body, status_body, step, store
from .test_planning import fleet_state, node

H100, L4 = ("NVIDIA-H100-80GB-HBM3", 81559), ("NVIDIA-L4", 23034)
FLEET = [
    node("h100", *H100, 8, annotations={COST_ANNOTATION: "3.0"}),
    *(node(f"l4-{i}", *L4, 4, annotations={COST_ANNOTATION: "0.25"}) for i in range(4)),
]


def run(deadline_hours: float | None = None) -> DDMRunSpec:
    placement: dict[str, Any] = {} if deadline_hours is None else {"deadlineHours": deadline_hours}
    return DDMRunSpec.model_validate(
        {
            "dataset": {"uri": "builtin://shapes", "resolution": 256, "vae": "sd-vae-ft-mse"},
            "weights": {"source": "hub"},
            "partition": {"clusters": 4},
            "expert": {"preset": "dit-b/2", "steps": 2000, "globalBatchSize": 256},
            "placement": placement,
        }
    )


def test_a_re_plan_keeps_counting_the_deadline_from_the_first_plan() -> None:
    sizes = [10_000] * 4
    fastest = place_experts(fleet_state(run(), FLEET, cluster_sizes=sizes), range(4)).plan
    assert fastest is not None
    hours = fastest.makespan_seconds / 3600
    spec = run(deadline_hours=30 * hours)  # loose: the cheap L4s alone meet it
    first = place_experts(fleet_state(spec, FLEET, cluster_sizes=sizes), range(4)).plan
    assert first is not None
    assert first.deadline_seconds == pytest.approx(30 * hours * 3600)
    assert first.cost.cost is not None
    assert fastest.cost.cost is not None
    assert first.cost.cost < fastest.cost.cost
    # The same plan again after 28.5 of those hours were spent (the experts restarted from the
    # beginning, say): 1.5× the fastest makespan is left, and the plan must buy speed to meet it.
    since = fleet_state(spec, FLEET).now - timedelta(hours=28.5 * hours)
    late = place_experts(fleet_state(spec, FLEET, cluster_sizes=sizes, deadline_from=since), range(4)).plan
    assert late is not None
    assert late.deadline_seconds == pytest.approx(1.5 * hours * 3600)
    assert late.meets_deadline is True
    assert late.makespan_seconds < first.makespan_seconds
    assert late.cost.cost is not None
    assert late.cost.cost > first.cost.cost
    past = fleet_state(spec, FLEET, cluster_sizes=sizes, deadline_from=since - timedelta(hours=40 * hours))
    assert past.deadline_seconds == 0.0  # past the deadline: the fastest plan, with the reason
    gone = place_experts(past, range(4)).plan
    assert gone is not None
    assert gone.makespan_seconds == pytest.approx(fastest.makespan_seconds)
    assert gone.meets_deadline is False


def test_the_run_status_shows_the_plan_and_keeps_the_deadline_from_the_first_plan() -> None:
    training = DDMRunStatus.model_validate(
        {
            "phase": "Training", "storeUri": "s3://atoll/runs/ns/r", "clusterSizes": [100, 101],
            "stages": {"partition": {"phase": "Succeeded", "attempt": 1},
                       "router": {"phase": "Running", "attempt": 1, "pod": "r-router-a1"}},
        }
    )  # fmt: skip
    world = observe(
        run_body(status_body(training), placement={"deadlineHours": 2.0}),
        experts=(expert(0), expert(1)),
        pods=(pod("router", 1),),
        snapshot=store(cluster_sizes=(100, 101)),
    )
    first = step(world)
    assert {a.stage for a in first.of(CreatePod)} >= {"expert-0", "expert-1"}
    plan = first.status.plan
    assert isinstance(plan, PlanStatus)
    assert (plan.planned_at, plan.deadline_from) == (world.now, world.now)
    assert plan.deadline == world.now + timedelta(hours=2)
    assert plan.makespan_seconds > 0
    assert plan.gpu_hours > 0
    assert (plan.cost, plan.unpriced_gpu_hours) == (None, plan.gpu_hours)  # the fleet has no prices
    assert plan.meets_deadline is True
    # An hour later expert 1's pod is gone: the re-plan is recorded, the deadline is not moved.
    status = first.status.model_copy(deep=True)
    later_world = observe(
        run_body(status_body(status), placement={"deadlineHours": 2.0}),
        experts=(expert(0, {"phase": "Running", "attempt": 1, "pod": "r-expert-0-a1", "node": "a100-0"}),
                 expert(1, {"phase": "Running", "attempt": 1, "pod": "r-expert-1-a1", "node": "a100-0"})),
        pods=(pod("router", 1), pod("expert", 1, expert_index=0)),
        snapshot=store(cluster_sizes=(100, 101)),
        now=world.now + timedelta(hours=1),
    )  # fmt: skip
    again = step(later_world, first.memory)
    assert "expert-1" in {a.stage for a in again.of(CreatePod)}
    replanned = again.status.plan
    assert replanned is not None
    assert replanned.planned_at == world.now + timedelta(hours=1)
    assert (replanned.deadline_from, replanned.deadline) == (world.now, world.now + timedelta(hours=2))
    printed = again.status.model_dump(by_alias=True, mode="json")["plan"]
    assert {"plannedAt", "makespanSeconds", "gpuHours", "cost", "provisionedGpus", "deadline"} <= set(printed)
