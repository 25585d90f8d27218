"""The plan's cost objective, on recorded fleets: cost breaks makespan ties, and under
`placement.deadlineHours` the cheapest plan that meets the deadline wins (or, when none does,
the fastest, with the reason). Prices come from pools, node annotations and ComputeIslands."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import pytest

from atoll.api import DDMRunSpec
from atoll.api.errors import SpecError
from atoll.api.load import parse_manifest
from atoll.operator.islands.fleet import IslandFleet, island_nodes, priced, union_nodes
from atoll.operator.placement import PlacementError, Plan, plan_run
from atoll.operator.placement.pools import COST_ANNOTATION, declared_pools
from atoll.operator.views import NodeView
from tests.placement.fleets import NOW, PRODUCTS, node, random_case

H100, L4, T4 = PRODUCTS[0], PRODUCTS[5], PRODUCTS[8]


def run(
    *, clusters: int, steps: int = 2000, deadline: float | None = None, pools: Sequence[dict[str, Any]] = ()
) -> DDMRunSpec:
    placement: dict[str, Any] = {"pools": list(pools)}
    if deadline is not None:
        placement["deadlineHours"] = deadline
    return DDMRunSpec.model_validate(
        {
            "dataset": {"uri": "builtin://shapes", "resolution": 256, "vae": "sd-vae-ft-mse"},
            "weights": {"source": "hub"},
            "partition": {"clusters": clusters},
            "expert": {"preset": "dit-b/2", "steps": steps, "globalBatchSize": 256},
            "placement": placement,
        }
    )


def with_price(body: dict[str, Any], price: str) -> dict[str, Any]:
    body["metadata"]["annotations"][COST_ANNOTATION] = price
    return body


def planned(spec: DDMRunSpec, fleet: Sequence[Any]) -> Plan:
    return plan_run(spec, fleet, now=NOW, pools=declared_pools(spec.placement.pools, fleet))


def priced_hours(result: Plan, prices: dict[str, float]) -> float:
    """The plan's cost counted from its assignments alone."""
    return sum(
        a.gpus * (a.predicted_seconds - a.start_seconds) / 3600 * prices.get(a.node, 0.0) for a in result.assignments
    )


def test_cost_breaks_a_makespan_tie() -> None:
    # One expert, two identical H100 nodes: the same makespan on either; the second is cheaper.
    fleet = [with_price(node("a-h100", H100, 8), "3.0"), with_price(node("b-h100", H100, 8), "2.0")]
    result = plan_run(run(clusters=1), fleet, now=NOW)
    (only,) = result.assignments
    assert only.node == "b-h100"
    assert result.makespan_seconds == pytest.approx(plan_run(run(clusters=1), fleet[:1], now=NOW).makespan_seconds)
    assert result.cost.cost == pytest.approx(priced_hours(result, {"b-h100": 2.0}))
    assert result.cost.gpu_hours == pytest.approx(only.gpus * only.predicted_seconds / 3600)
    document = result.to_json()
    assert (document["cost"], document["gpuHours"]) == (round(result.cost.cost, 2), round(result.cost.gpu_hours, 3))
    assert "deadlineSeconds" not in document
    assert "reasons" not in document
    # A GPU with no price is capacity already paid for: it wins the tie.
    free = plan_run(run(clusters=1), [fleet[0], node("c-h100", H100, 8)], now=NOW)
    assert [a.node for a in free.assignments] == ["c-h100"]
    assert (free.cost.cost, free.to_json()["cost"]) == (None, None)


def test_a_deadline_buys_the_cheapest_plan_that_meets_it() -> None:
    # A fast, dear H100 node and slow L4 nodes (spot-priced: cheaper per sample than the H100).
    fleet = [with_price(node("h100", H100, 8), "3.0"), *(with_price(node(f"l4-{i}", L4, 4), "0.25") for i in range(4))]
    prices = {"h100": 3.0, **{f"l4-{i}": 0.25 for i in range(4)}}
    fastest = plan_run(run(clusters=4), fleet, now=NOW)
    assert 0.25 / fastest.speeds[L4[0]] < 3.0 / fastest.speeds[H100[0]]
    assert fastest.cost.cost == pytest.approx(priced_hours(fastest, prices))
    assert fastest.meets_deadline is None
    hours = fastest.makespan_seconds / 3600
    previous = fastest.cost.cost
    for factor in (1.5, 3, 8, 30):
        cheap = plan_run(run(clusters=4, deadline=hours * factor), fleet, now=NOW)
        assert cheap.makespan_seconds <= hours * factor * 3600
        assert cheap.meets_deadline is True
        assert cheap.reasons == ()
        assert cheap.cost.cost == pytest.approx(priced_hours(cheap, prices))
        assert cheap.cost.cost <= previous + 1e-9  # a later deadline never costs more
        previous = cheap.cost.cost
        document = cheap.to_json()
        assert (document["deadlineSeconds"], document["meetsDeadline"]) == (round(hours * factor * 3600, 1), True)
    assert previous < 0.9 * fastest.cost.cost
    loose = plan_run(run(clusters=4, deadline=hours * 30), fleet, now=NOW)
    assert {a.gpu_product for a in loose.assignments} == {L4[0]}


def test_a_deadline_chooses_the_cheaper_pool_and_no_pool_when_the_fleet_meets_it() -> None:
    delay = {"provisioningSeconds": 300}
    pools = [
        {"name": "h100", "product": H100[0], "maxGpus": 8, "gpusPerNode": 8, "costPerGpuHour": 3.0, **delay},
        {"name": "l4-spot", "product": L4[0], "maxGpus": 16, "gpusPerNode": 4, "costPerGpuHour": 0.25, **delay},
    ]
    fleet = [node("l4", L4, 1)]
    fastest = planned(run(clusters=4, pools=pools), fleet)
    assert {p.pool for p in fastest.provisions} == {"h100"}
    alone = plan_run(run(clusters=4), fleet, now=NOW)
    deadline = (fastest.makespan_seconds + alone.makespan_seconds) / 2 / 3600
    cheap = planned(run(clusters=4, pools=pools, deadline=deadline), fleet)
    assert cheap.makespan_seconds <= deadline * 3600
    assert {p.pool for p in cheap.provisions} == {"l4-spot"}
    assert cheap.cost.cost is not None
    assert fastest.cost.cost is not None
    assert cheap.cost.cost < fastest.cost.cost
    assert cheap.cost.cost == pytest.approx(sum(p.cost or 0 for p in cheap.provisions))
    # The fleet alone (free, already there) meets a deadline past its makespan: nothing is provisioned.
    idle = planned(run(clusters=4, pools=pools, deadline=alone.makespan_seconds * 1.01 / 3600), fleet)
    assert idle.provisions == ()
    assert idle.cost.cost is None


def test_no_plan_meets_the_deadline_so_the_plan_is_the_fastest_and_says_so() -> None:
    fleet = [with_price(node("h100", H100, 8), "3.0"), with_price(node("t4", T4, 4), "0.35")]
    fastest = plan_run(run(clusters=4), fleet, now=NOW)
    late = plan_run(run(clusters=4, deadline=fastest.makespan_seconds / 2 / 3600), fleet, now=NOW)
    assert late.makespan_seconds == pytest.approx(fastest.makespan_seconds)
    assert late.meets_deadline is False
    (reason,) = late.reasons
    assert reason.startswith("no plan meets placement.deadlineHours")
    assert f"the fastest finishes in {fastest.makespan_seconds / 3600:.2f} h" in reason
    assert late.to_json()["meetsDeadline"] is False
    assert late.to_json()["reasons"] == [reason]


def test_island_prices_reach_the_plan() -> None:
    bodies = [node("gpu-1", H100, 8), node("gpu-2", L4, 1)]
    cloud = priced(island_nodes("cloud", bodies), {H100[0]: 4.0})
    lab = priced(island_nodes("lab", bodies), {"NVIDIA H100 80GB HBM3": 1.5})  # NVML's spelling works too
    assert cloud[0].annotations[COST_ANNOTATION] == "4.0"
    assert COST_ANNOTATION not in cloud[1].annotations  # a product the island does not price
    nodes = union_nodes(
        (),
        [
            IslandFleet(name=n, namespace="atoll", store_endpoint=None, nodes=v)
            for n, v in (("cloud", cloud), ("lab", lab))
        ],
    )
    result = plan_run(run(clusters=1), nodes, now=NOW)
    assert [a.node for a in result.assignments] == ["lab/gpu-1"]
    assert result.cost.cost == pytest.approx(priced_hours(result, {"lab/gpu-1": 1.5}))
    # A home node's own price reaches the planner through the operator's view of it too.
    home = NodeView.from_body(with_price(node("gpu-0", H100, 8), "0.5"))
    cheapest = plan_run(run(clusters=1), union_nodes([home], []) + nodes, now=NOW)
    assert [a.node for a in cheapest.assignments] == ["gpu-0"]
    assert cheapest.cost.cost == pytest.approx(priced_hours(cheapest, {"gpu-0": 0.5}))


def test_a_bad_node_price_is_reported_and_counts_as_none() -> None:
    fleet = [with_price(node("h100", H100, 8), "cheap")]
    result = plan_run(run(clusters=1), fleet, now=NOW)
    assert result.cost.cost is None
    assert result.reasons == (f"node h100: metadata.annotations[{COST_ANNOTATION}] 'cheap' is not a number ≥ 0",)


def manifest(placement: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "atoll.dev/v1alpha1",
        "kind": "DDMRun",
        "metadata": {"name": "r"},
        "spec": {"dataset": {"uri": "builtin://digits"}, "placement": placement},
    }


def test_a_deadline_is_part_of_the_placement() -> None:
    assert parse_manifest(manifest({"deadlineHours": 2.5}), "run.yaml").spec.placement.deadline_hours == 2.5
    assert parse_manifest(manifest({}), "run.yaml").spec.placement.deadline_hours is None


@pytest.mark.parametrize(
    ("value", "why"),
    [(0, "greater than 0"), (-1, "greater than 0"), (9000, "less than or equal to 8760"), ("soon", "a valid number")],
)
def test_a_bad_deadline_names_the_field(value: Any, why: str) -> None:
    with pytest.raises(SpecError) as caught:
        parse_manifest(manifest({"deadlineHours": value}), "run.yaml")
    assert "spec.placement.deadlineHours" in str(caught.value)
    assert why in str(caught.value)


@pytest.mark.parametrize("seed", range(40))
def test_on_random_priced_fleets_a_met_deadline_never_costs_more_than_the_fastest_plan(seed: int) -> None:
    case = random_case(seed, max_nodes=8, max_experts=6)
    rng = random.Random(seed)
    for body in case.nodes:
        if rng.random() < 0.8:
            with_price(body, f"{rng.choice((0.2, 0.35, 0.8, 1.5, 3.0))}")
    try:
        fastest = plan_run(case.spec, case.nodes, cluster_sizes=case.sizes, used_gpus=case.used_gpus, now=NOW)
    except PlacementError:
        return
    factor = rng.choice((1.0, 1.3, 2.0, 5.0))
    placement = case.spec.placement.model_copy(update={"deadline_hours": fastest.makespan_seconds * factor / 3600})
    spec = case.spec.model_copy(update={"placement": placement})
    cheap = plan_run(spec, case.nodes, cluster_sizes=case.sizes, used_gpus=case.used_gpus, now=NOW)
    assert cheap.meets_deadline, (seed, cheap.reasons)
    assert (cheap.cost.cost or 0.0) <= (fastest.cost.cost or 0.0) * (1 + 1e-9) + 1e-9, seed
    assert sorted(a.expert for a in cheap.assignments) == sorted(a.expert for a in fastest.assignments)
    again = plan_run(spec, list(reversed(case.nodes)), cluster_sizes=case.sizes, used_gpus=case.used_gpus, now=NOW)
    assert again.to_json() == cheap.to_json()  # deterministic, whatever the order of the nodes
