"""The run's usage on recorded observations (tests/operator/situations.py): GPU-hours from the
pods' container start and finish times, counted once per ended attempt (a restarted operator
reading the status back counts nothing twice, a deleted pod is not forgotten), the GPUs asked of
autoscaler pools, the plan's idle GPU-hours, and the CapacityRequested / CapacityReleased Events,
each posted once.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from atoll.api.status import DDMRunStatus
from atoll.operator.placement.plan import Assignment, Plan, Provision
from atoll.operator.reconcile import Decision, RunMemory
from atoll.operator.reconcile.observation import Observation

from .situations import expert, later, observe, pod, status_body, step, store
from .test_decide import reasons, run_with, running_experts, training_status
from .test_decide_autoscale import A100, POOL_SPEC

POOL_NODE = "a100-new"


def restarted(decision: Decision, world: Observation) -> Decision:
    """The same world seen by an operator that just started: no memory, the status as stored."""
    return step(replace(world, run=run_with(decision.status)), RunMemory())


def events(decision: Decision, reason: str) -> list[str]:
    return [e.message for e in decision.events if e.reason == reason]


def test_gpu_hours_come_from_container_times_and_an_ended_attempt_counts_once_across_restarts() -> None:
    status, experts, _ = running_experts()
    router = pod("router", 1, gpus=0, started_at="2026-03-01T11:00:00Z")
    zero = pod("expert", 1, expert_index=0, started_at="2026-03-01T11:00:00Z")
    one = pod("expert", 1, expert_index=1, gpus=2, started_at="2026-03-01T11:30:00Z")
    world = later(observe(run_with(status), experts=experts, pods=[zero, one, router]), 30)  # 12:00:30
    first = step(world)
    usage = first.status.usage
    assert usage is not None
    # Running pods count up to the last whole minute (12:00): 1 GPU × 1 h + 2 GPUs × 0.5 h.
    assert usage.gpu_hours == pytest.approx(2.0)
    assert (usage.finished_gpu_hours, usage.counted_attempts) == (0.0, {"partition": 1})  # its pod never started
    assert [(h.pod, h.node, h.gpus) for h in usage.holding] == [("r-expert-0-a1", "a100-0", 1),
                                                                ("r-expert-1-a1", "a100-0", 2)]  # fmt: skip
    # Expert 0's attempt ends (11:00 → 11:59): its 59 GPU-minutes are added once.
    done = pod("expert", 1, "Succeeded", expert_index=0, exit_code=0, started_at="2026-03-01T11:00:00Z")
    ended = replace(later(world, 60), run=run_with(first.status), pods=(done, one, router))
    second = step(ended, first.memory)
    usage = second.status.usage
    assert usage is not None
    assert usage.finished_gpu_hours == pytest.approx(59 / 60, abs=1e-6)
    assert usage.counted_attempts == {"partition": 1, "expert-0": 1}
    assert usage.gpu_hours == pytest.approx(59 / 60 + 2 * (31 / 60), rel=1e-3)  # expert 1 up to 12:01
    # Another tick, and an operator that restarts and reads the status back: not counted again.
    assert step(later(ended, 5), second.memory).status.usage == usage
    assert restarted(second, ended).status.usage == usage
    # The finished pod is deleted: its GPU-hours stay.
    gone = step(replace(later(ended, 10), run=run_with(second.status), pods=(one, router)), RunMemory())
    assert gone.status.usage is not None
    assert gone.status.usage.finished_gpu_hours == pytest.approx(59 / 60, abs=1e-6)


def test_a_pod_deleted_while_it_ran_counts_until_the_tick_that_no_longer_sees_it() -> None:
    status, experts, _ = running_experts()
    one = pod("expert", 1, expert_index=1, gpus=2, started_at="2026-03-01T11:30:00Z")
    world = observe(run_with(status), experts=experts, pods=[one])
    seen = step(world)
    assert seen.status.usage is not None
    assert seen.status.usage.finished_gpu_hours == 0.0
    vanished = step(replace(later(world, 60), run=run_with(seen.status), pods=()), RunMemory())  # 12:01
    usage = vanished.status.usage
    assert usage is not None
    assert usage.finished_gpu_hours == pytest.approx(2 * 31 / 60, abs=1e-6)
    assert (usage.counted_attempts, usage.holding) == ({"partition": 1, "expert-1": 1}, [])
    assert restarted(vanished, replace(later(world, 120), pods=())).status.usage == usage.model_copy()


def test_pods_waiting_for_a_pool_ask_for_capacity_once_and_the_plan_says_what_it_leaves_idle() -> None:
    world = observe(
        run_with(training_status(), placement=POOL_SPEC),
        experts=[expert(0), expert(1)],
        pods=[pod("router", 1, gpus=0)],
        busy={"a100-0": 8},  # other pods hold the fleet's A100s: the plan asks the pool for two
        snapshot=store(cluster_sizes=(100, 101)),
    )
    asked = step(world)
    assert events(asked, "CapacityRequested") == [
        f"asked autoscaler pool more-a100 for 2 {A100} GPU(s): 2 pod(s) wait for its new nodes, 2 GPU(s) in all"
    ]
    usage, plan = asked.status.usage, asked.status.plan
    assert usage is not None
    assert plan is not None
    assert [(r.pool, r.gpu_product, r.gpus, r.pods) for r in usage.requested] == [("more-a100", A100, 2, 2)]
    assert usage.requested_gpus == plan.provisioned_gpus == 2
    assert plan.idle_gpu_hours == pytest.approx(2 * 5 / 3600, rel=0.01), "the pool's 5 s delay × 2 GPUs"
    # The pods exist now and wait: nothing is asked again, nor after a restart.
    waiting = [pod("expert", 1, "Pending", expert_index=k, node=None, planned_pool="more-a100") for k in (0, 1)]
    experts = [expert(k, {"phase": "Pending", "attempt": 1, "pod": f"r-expert-{k}-a1"}) for k in (0, 1)]
    seen = replace(later(world, 5), run=run_with(asked.status), pods=(*waiting, pod("router", 1, gpus=0)),
                   experts=tuple(experts))  # fmt: skip
    again = step(seen, asked.memory)
    assert "CapacityRequested" not in reasons(again)
    assert again.status.usage is not None
    assert again.status.usage.requested == usage.requested
    assert "CapacityRequested" not in reasons(restarted(again, seen))


def test_the_runs_last_pod_on_a_node_ending_gives_its_capacity_back_once() -> None:
    status, experts, _ = running_experts(expert0={"node": POOL_NODE}, expert1={"node": POOL_NODE})
    start = "2026-03-01T11:00:00Z"
    running = [
        pod("expert", 1, expert_index=k, node=POOL_NODE, planned_pool="more-a100", started_at=start) for k in (0, 1)
    ]
    world = observe(run_with(status), experts=experts, pods=running)
    first = step(world)
    assert "CapacityReleased" not in reasons(first)
    # One of its two pods ends: the run still holds the node.
    done = [
        pod("expert", 1, "Succeeded", expert_index=k, node=POOL_NODE, exit_code=0, started_at=start) for k in (0, 1)
    ]
    half = replace(later(world, 60), run=run_with(first.status), pods=(done[0], running[1]))
    one_left = step(half, first.memory)
    assert "CapacityReleased" not in reasons(one_left)
    # The last one ends: the node's GPUs go back, once.
    over = replace(later(half, 60), run=run_with(one_left.status), pods=tuple(done))
    released = step(over, one_left.memory)
    assert events(released, "CapacityReleased") == [
        f"gave back 1 GPU(s) of node {POOL_NODE} (pool more-a100): the run's last pod there ended"
    ]
    assert released.status.usage is not None
    assert released.status.usage.holding == []
    assert "CapacityReleased" not in reasons(step(later(over, 5), released.memory))
    assert "CapacityReleased" not in reasons(restarted(released, over))


def test_a_pod_that_ran_between_two_ticks_is_counted_and_gives_its_node_back_once() -> None:
    status, experts, _ = running_experts(expert0={"node": POOL_NODE})
    quick = pod(
        "expert",
        1,
        "Succeeded",
        expert_index=0,
        node=POOL_NODE,
        planned_pool="more-a100",
        exit_code=0,
        started_at="2026-03-01T11:58:30Z",
    )  # fmt: skip  (finished 11:59:00)
    world = observe(run_with(status), experts=experts, pods=[quick])
    seen = step(world)
    assert events(seen, "CapacityReleased") == [
        f"gave back 1 GPU(s) of node {POOL_NODE} (pool more-a100): the run's last pod there ended"
    ]
    assert seen.status.usage is not None
    assert seen.status.usage.finished_gpu_hours == pytest.approx(30 / 3600, abs=1e-6)
    assert "CapacityReleased" not in reasons(restarted(seen, later(world, 5)))


def test_a_pod_still_running_when_the_run_succeeded_is_counted_when_it_ends() -> None:
    """The evaluate stage's done marker comes before its process exits: the run Succeeds while
    the pod holds its GPU, and its whole time is still counted (and its node given back) after."""
    status, experts, _ = running_experts()
    start = "2026-03-01T11:00:00Z"
    evaluating = pod("evaluate", 1, node="a100-0", started_at=start)
    seen = step(observe(run_with(status), experts=experts, pods=[evaluating]))
    assert seen.status.usage is not None
    assert [h.pod for h in seen.status.usage.holding] == ["r-evaluate-a1"]
    succeeded = seen.status.model_copy(update={"phase": "Succeeded"})
    ended = pod("evaluate", 1, "Succeeded", node="a100-0", exit_code=0, started_at=start)  # finished 11:59
    world = later(observe(run_with(succeeded), experts=experts, pods=[ended]), 60)
    after = step(world)
    usage = after.status.usage
    assert usage is not None
    assert (usage.holding, usage.counted_attempts.get("evaluate")) == ([], 1)
    assert usage.gpu_hours == pytest.approx(59 / 60, rel=1e-3)
    assert events(after, "CapacityReleased") == ["gave back 1 GPU(s) of node a100-0: the run's last pod there ended"]
    quiet = step(later(replace(world, run=run_with(after.status)), 5), after.memory)
    assert (quiet.actions, quiet.events) == ((), ()), "a finished run holding nothing does nothing"


def test_a_plans_idle_gpu_hours_are_a_pools_gpus_held_from_the_ask_less_the_experts_work() -> None:
    """Two experts on a pool of 2 new GPUs ready after 300 s: one trains 3600 s, the other
    1800 s; the GPUs are held from the ask to the last finish (3900 s), 2400 GPU-s idle."""
    placeholder = f"more-a100:{A100}"

    def on_pool(k: int, finish: float) -> Assignment:
        return Assignment(expert=k, node=placeholder, gpu_product=A100, gpus=1, micro_batch=8, grad_accum=1,
                          start_seconds=300.0, predicted_seconds=finish, pool="more-a100")  # fmt: skip

    fleet = Assignment(expert=2, node="h100-0", gpu_product="H100", gpus=4, micro_batch=8, grad_accum=1,
                       predicted_seconds=7200.0)  # fmt: skip
    provision = Provision(pool="more-a100", product=A100, placeholder=placeholder, gpus=2, headroom_gpus=8,
                          ready_seconds=300.0, gpu_hours=1.5, cost=None)  # fmt: skip
    plan = Plan(
        assignments=(on_pool(0, 3900.0), on_pool(1, 2100.0), fleet),
        makespan_seconds=7200.0,
        lower_bound_seconds=0.0,
        speeds={},
        provisions=(provision,),
    )
    assert plan.idle_gpu_hours == pytest.approx(2400 / 3600)
    assert replace(plan, provisions=()).idle_gpu_hours == 0.0, "the fleet's GPUs are not the plan's doing"


def test_a_status_without_usage_reads_as_before() -> None:
    """A status written before usage existed validates, and gets usage only once pods hold GPUs."""
    raw = status_body(training_status())
    raw.pop("usage", None)
    assert DDMRunStatus.model_validate(raw).usage is None
