"""Growable capacity in the planner, on recorded fleets: when a plan provisions GPUs from an
autoscaler pool, how many (never beyond the pool's limit), and when waiting for the fleet wins."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from atoll.api import DDMRunSpec
from atoll.operator.placement import Plan, plan_run
from atoll.operator.placement.pools import declared_pools
from atoll.operator.placement.provision import MIN_PROVISION_GAIN
from atoll.operator.placement.schedule import Job, Option, Problem, Schedule, vacate
from tests.placement.fleets import NOW, PRODUCTS, node

H100, L4 = PRODUCTS[0], PRODUCTS[5]


def run(*, clusters: int, steps: int = 10_000, pools: Sequence[dict[str, Any]] = (), **expert: Any) -> DDMRunSpec:
    return DDMRunSpec.model_validate(
        {
            "dataset": {"uri": "builtin://shapes", "resolution": 256, "vae": "sd-vae-ft-mse"},
            "weights": {"source": "hub"},
            "partition": {"clusters": clusters},
            "expert": {"preset": "dit-b/2", "steps": steps, "globalBatchSize": 256, **expert},
            "placement": {"pools": list(pools)},
        }
    )


def pool(name: str, product: tuple[str, int, int], **fields: Any) -> dict[str, Any]:
    return {"name": name, "product": product[0], **fields}


def planned(spec: DDMRunSpec, fleet: list[dict[str, Any]], **kwargs: Any) -> Plan:
    return plan_run(spec, fleet, now=NOW, pools=declared_pools(spec.placement.pools, fleet), **kwargs)


def peak_gpus(result: Plan, where: str) -> int:
    """Most GPUs the plan's experts hold at `where` at once, counted from the assignments alone."""
    items = [a for a in result.assignments if a.node == where]
    moments = {a.start_seconds for a in items}
    return max((sum(a.gpus for a in items if a.start_seconds <= t < a.predicted_seconds) for t in moments), default=0)


def test_a_fleet_too_small_gets_new_gpus_up_to_the_pool_limit_and_never_beyond() -> None:
    fleet = [node("l4", L4, 1)]
    spec = run(clusters=4, pools=[pool("h100", H100, maxGpus=3, gpusPerNode=1, provisioningSeconds=300)])
    alone = plan_run(spec, fleet, now=NOW)
    grown = planned(spec, fleet)

    (asked,) = grown.provisions
    assert (asked.pool, asked.product, asked.placeholder) == ("h100", H100[0], f"h100:{H100[0]}")
    assert asked.gpus == peak_gpus(grown, asked.placeholder) == 3  # the limit, all of it
    on_pool = [a for a in grown.assignments if a.pool == "h100"]
    assert on_pool
    for item in on_pool:
        assert item.node == asked.placeholder
        assert item.pool_labels == {"karpenter.sh/nodepool": "h100"}
        assert item.gpu_product == H100[0]
        assert item.gpus == 1  # gpusPerNode
        assert item.start_seconds >= 300  # the provisioning delay counts
        assert (item.micro_batch or 0) * (item.grad_accum or 0) * item.gpus == 256
    assert grown.makespan_seconds < alone.makespan_seconds / 1.5
    assert grown.to_json()["provisions"][0]["gpus"] == 3
    assert "provisions" not in alone.to_json()

    # The pool's own nodes count against its limit: a node of it holding 2 GPUs leaves 1 to add.
    existing = node("h100-a", H100, 2, extra_labels={"karpenter.sh/nodepool": "h100"})
    limited = planned(spec, [*fleet, existing])
    (asked,) = limited.provisions
    assert asked.gpus == peak_gpus(limited, asked.placeholder) == 1
    assert {a.node for a in limited.assignments} >= {"h100-a"}


def test_a_pool_at_its_limit_is_left_out_with_the_reason() -> None:
    spec = run(clusters=2, pools=[pool("h100", H100, maxGpus=2)])
    cordoned = node("h100-a", H100, 2, state="cordoned", extra_labels={"karpenter.sh/nodepool": "h100"})
    fleet = [node("l4", L4, 1), cordoned]
    result = planned(spec, fleet)
    assert result.provisions == ()
    (full,) = [e for e in result.excluded if e.node == f"h100:{H100[0]}"]
    assert full.kind == "full"
    assert "pool h100: at its GPU limit (2 GPUs, 2 held by its nodes)" in full.reason


def test_a_fleet_with_enough_free_gpus_provisions_nothing() -> None:
    # Enough: every expert can have all the GPUs it may use (placement.gpu.maxPerExpert, 8) now.
    fleet = [node(f"h100-{i}", H100, 8) for i in range(4)]
    spec = run(clusters=4, pools=[pool("h100", H100, maxGpus=16, provisioningSeconds=60)])
    result = planned(spec, fleet)
    assert result.provisions == ()
    assert all(a.pool is None and a.gpus == 8 for a in result.assignments)
    assert result.to_json() == plan_run(spec, fleet, now=NOW).to_json()
    # Fewer free GPUs than the experts could use: the pool's are worth their delay.
    assert planned(spec, fleet[:1]).provisions


def test_only_the_experts_that_need_new_capacity_get_it() -> None:
    # Expert 0 has ~100x the work of the others: it alone decides the makespan.
    spec = run(
        clusters=3,
        stepsPolicy="proportional",
        pools=[pool("h100", H100, maxGpus=8, gpusPerNode=8, provisioningSeconds=300)],
    )
    fleet = [node("l4-a", L4, 1), node("l4-b", L4, 1)]
    result = planned(spec, fleet, cluster_sizes=[980, 10, 10])
    assert [a.expert for a in result.assignments if a.pool is not None] == [0]
    assert {a.node for a in result.assignments if a.expert != 0} == {"l4-a", "l4-b"}


def test_a_long_provisioning_delay_makes_waiting_for_busy_gpus_win() -> None:
    fleet = [node("l4", L4, 1)]
    queued = plan_run(run(clusters=2, steps=1000), fleet, now=NOW)
    one = max(a.predicted_seconds - a.start_seconds for a in queued.assignments)
    assert sorted(a.start_seconds for a in queued.assignments)[1] == pytest.approx(one)  # the second waits
    assert 3 * one < 86_400

    def with_delay(seconds: float) -> Plan:
        spec = run(
            clusters=2, steps=1000, pools=[pool("l4", L4, maxGpus=4, gpusPerNode=1, provisioningSeconds=seconds)]
        )
        return planned(spec, fleet)

    short = with_delay(60)
    (asked,) = short.provisions
    assert asked.gpus == 1  # both experts could go there; the one that starts now stays on the fleet
    assert [a.node for a in short.assignments if a.start_seconds == 0] == ["l4"]
    assert short.makespan_seconds == pytest.approx(60 + one, rel=1e-6)
    long = with_delay(3 * one)
    assert long.provisions == ()
    assert long.makespan_seconds == pytest.approx(queued.makespan_seconds)
    # Just past the break-even (delay = one expert's time) waiting wins; the gain must be real.
    assert with_delay(one * (1 - MIN_PROVISION_GAIN)).provisions == ()


def test_cost_is_reported_per_pool() -> None:
    fleet = [node("l4", L4, 1)]
    spec = run(clusters=2, steps=1000, pools=[pool("l4", L4, maxGpus=4, provisioningSeconds=60, costPerGpuHour=0.8)])
    (asked,) = planned(spec, fleet).provisions
    assert asked.cost == pytest.approx(asked.gpu_hours * 0.8)
    assert asked.gpu_hours > 0


def test_vacate_moves_jobs_off_costly_nodes_only_where_the_makespan_allows() -> None:
    # Node 0: one GPU that exists; node 1: four GPUs still to be provisioned (ready at 10 s).
    long = Job(options=(Option(node=0, gpus=1, seconds=100), Option(node=1, gpus=1, seconds=100, release=10)))
    short = Job(options=(Option(node=0, gpus=1, seconds=30), Option(node=1, gpus=1, seconds=30, release=10)))
    problem = Problem(capacity=(1, 4), rate=(1.0, 1.0), jobs=(long, short))
    both_new = Schedule(choice=(1, 1), start=(10, 10), finish=(110, 40), makespan=110, proven_optimal=False)
    kept = vacate(problem, both_new, [1])
    assert kept.choice == (1, 0)  # the short job fits on the fleet within 110 s; the long one does not
    assert kept.makespan == pytest.approx(110)
    assert kept.finish == pytest.approx((110, 30))
    assert vacate(problem, kept, [1]) == kept
