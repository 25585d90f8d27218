"""Placement over the union of the islands' fleets: nodes tagged with their island and named by
it, only islands that accept experts, and a run's placement.islands (restrict, prefer)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from atoll.api.island import ComputeIslandSpec, ComputeIslandStatus
from atoll.api.spec import DDMRunSpec, PlacementSpec
from atoll.operator.islands.fleet import (
    IslandFleet,
    accepts_experts,
    island_nodes,
    island_of,
    qualified,
    split_node,
    union_nodes,
)
from atoll.operator.placement import Assignment
from atoll.operator.planning import FleetState, PlacementJob, distinct_nodes, place_experts, plan_stages
from atoll.operator.views import NodeView

NOW = datetime(2026, 1, 1, 12, tzinfo=UTC)
L4, T4, H100 = ("NVIDIA-L4", 23034), ("Tesla-T4", 15360), ("NVIDIA-H100-80GB-HBM3", 81559)


def node_body(name: str, gpu: tuple[str, int], gpus: int) -> dict[str, Any]:
    product, memory = gpu
    return {
        "metadata": {"name": name, "labels": {"nvidia.com/gpu.product": product, "nvidia.com/gpu.memory": str(memory)}},
        "status": {"allocatable": {"nvidia.com/gpu": str(gpus)}, "conditions": [{"type": "Ready", "status": "True"}]},
    }


def home(name: str, gpu: tuple[str, int], gpus: int) -> NodeView:
    return NodeView.from_body(node_body(name, gpu, gpus))


def on(island: str, name: str, gpu: tuple[str, int], gpus: int) -> NodeView:
    return island_nodes(island, [node_body(name, gpu, gpus)])[0]


def spec(placement: dict[str, Any] | None = None, clusters: int = 3) -> DDMRunSpec:
    return DDMRunSpec.model_validate(
        {
            "dataset": {"uri": "builtin://digits"},
            "partition": {"clusters": clusters},
            "expert": {"preset": "tiny"},
            "placement": {"gpu": {"maxPerExpert": 1}, **(placement or {})},
        }
    )


def fleet_state(run: DDMRunSpec, nodes: list[NodeView], **changes: Any) -> FleetState:
    values: dict[str, Any] = {
        "spec": run,
        "nodes": nodes,
        "running": {},
        "progress": {},
        "cluster_sizes": [10] * run.partition.clusters,
        "busy_gpus": {},
        "now": NOW,
    }
    values.update(changes)
    return FleetState(**values)


def islands_used(run: DDMRunSpec, nodes: list[NodeView], **changes: Any) -> set[str]:
    placed = place_experts(fleet_state(run, nodes, **changes), range(run.partition.clusters))
    assert placed.error is None, placed.error
    assert len(placed.assignments) == run.partition.clusters, placed.waiting
    return {island_of(a.node) for a in placed.assignments.values()}


def test_island_nodes_are_tagged_and_their_names_never_collide() -> None:
    bodies = [node_body("gpu-0", L4, 4)]
    lab, cloud = island_nodes("lab", bodies), island_nodes("cloud", bodies)
    at_home = home("gpu-0", L4, 4)
    assert (lab[0].name, lab[0].island) == ("lab/gpu-0", "lab")
    assert (cloud[0].name, cloud[0].island) == ("cloud/gpu-0", "cloud")
    assert (at_home.name, at_home.island) == ("gpu-0", "home")
    assert split_node("lab/gpu-0") == ("lab", "gpu-0")
    assert split_node("gpu-0") == ("home", "gpu-0")
    assert qualified("home", "gpu-0") == "gpu-0"
    assert qualified("lab", "gpu-0") == "lab/gpu-0"
    fleets = [
        IslandFleet(name="lab", namespace="atoll", store_endpoint=None, nodes=lab),
        IslandFleet(name="cloud", namespace="atoll", store_endpoint=None, nodes=cloud),
    ]
    union = union_nodes([at_home], fleets)
    assert [n.name for n in union] == ["gpu-0", "cloud/gpu-0", "lab/gpu-0"]
    # Three nodes of the same name and kind are three places to plan over, not one.
    assert len(distinct_nodes(union, keep=(), experts=1, max_gpus=1, busy_gpus={})) == 3


@pytest.mark.parametrize(
    ("cordoned", "connected", "ready", "accepts"),
    [
        (False, "True", "True", True),
        (True, "True", "True", False),
        (False, "False", "False", False),
        (False, "True", "False", False),
    ],
)
def test_only_connected_ready_uncordoned_islands_accept_experts(
    cordoned: bool, connected: str, ready: str, accepts: bool
) -> None:
    island_spec = ComputeIslandSpec.model_validate({"kubeconfigSecretRef": {"name": "s"}, "cordoned": cordoned})
    status = ComputeIslandStatus.model_validate(
        {
            "conditions": [
                {"type": "Connected", "status": connected, "reason": "R", "lastTransitionTime": NOW.isoformat()},
                {"type": "Ready", "status": ready, "reason": "R", "lastTransitionTime": NOW.isoformat()},
            ]
        }
    )
    assert accepts_experts(island_spec, status) is accepts
    assert not accepts_experts(island_spec, ComputeIslandStatus()), "never probed: not yet"


def test_restrict_keeps_experts_on_the_named_islands() -> None:
    nodes = [home("h100-0", H100, 8), on("lab", "t4-0", T4, 4), on("cloud", "l4-0", L4, 4)]
    assert islands_used(spec({"islands": {"restrict": ["lab"]}}), nodes) == {"lab"}
    assert islands_used(spec({"islands": {"restrict": ["home"]}}), nodes) == {"home"}
    assert islands_used(spec({"islands": {"restrict": ["lab", "cloud"]}}), nodes) <= {"lab", "cloud"}


def test_restrict_to_islands_without_nodes_says_so() -> None:
    placed = place_experts(fleet_state(spec({"islands": {"restrict": ["far"]}}), [home("h100-0", H100, 8)]), [0])
    assert not placed.assignments
    assert placed.error is not None
    assert "placement.islands.restrict allows (far)" in placed.error


def test_a_running_expert_stays_on_its_island_whatever_restrict_says_now() -> None:
    nodes = [home("l4-0", L4, 4), on("lab", "l4-0", L4, 4)]
    running = {0: Assignment(expert=0, node="l4-0", gpu_product=L4[0], gpus=1, micro_batch=64, grad_accum=1)}
    state = fleet_state(spec({"islands": {"restrict": ["lab"]}}), nodes, running=running, busy_gpus={"l4-0": 1})
    placed = place_experts(state, [1, 2])
    assert {a.node for a in placed.assignments.values()} == {"lab/l4-0"}


def test_prefer_takes_the_preferred_island_when_it_finishes_as_early() -> None:
    nodes = [home("l4-0", L4, 4), on("lab", "l4-0", L4, 4), on("cloud", "l4-0", L4, 4)]
    assert islands_used(spec({"islands": {"prefer": ["lab"]}}), nodes) == {"lab"}
    assert islands_used(spec({"islands": {"prefer": ["cloud", "lab"]}}), nodes) == {"cloud"}
    assert islands_used(spec(), nodes) != {"lab"}, "without a preference the tie goes elsewhere"


def test_prefer_never_slows_the_run_down() -> None:
    """A preferred island too small or too slow to finish as early is used only as the plan says."""
    slow = [home("h100-0", H100, 8), on("lab", "t4-0", T4, 4)]
    assert islands_used(spec({"islands": {"prefer": ["lab"]}}), slow) == {"home"}
    small = [home("l4-0", L4, 4), on("lab", "l4-0", L4, 2)]
    assert "home" in islands_used(spec({"islands": {"prefer": ["lab"]}}), small), "2 GPUs there: one would queue"
    # The first preferred island alone is not enough, the first two together are.
    three = [home("l4-0", L4, 4), on("lab", "l4-0", L4, 2), on("cloud", "l4-0", L4, 2)]
    assert islands_used(spec({"islands": {"prefer": ["lab", "cloud"]}}), three) == {"lab", "cloud"}


def test_two_preferred_islands_with_one_free_gpu_each_take_one_expert_each() -> None:
    """The islands e2e test's fleets: home's T4s are no faster, neither island alone runs both experts at once."""
    nodes = [home("t4-0", T4, 4), home("t4-1", T4, 4), home("h100-0", H100, 8), on("lab", "lab-t4-0", T4, 1)]
    nodes += [on("reef", "reef-t4-0", T4, 1), on("reef", "reef-4090-0", ("NVIDIA-GeForce-RTX-4090", 24564), 4)]
    gpu = {"products": ["Tesla-T4"], "maxPerExpert": 1}  # the e2e operator caps pods at one GPU
    run = spec({"islands": {"prefer": ["lab", "reef"]}, "gpu": gpu}, clusters=2)
    placed = place_experts(fleet_state(run, nodes), [0, 1])
    assert sorted(a.node for a in placed.assignments.values()) == ["lab/lab-t4-0", "reef/reef-t4-0"]


def test_short_stages_stay_at_home() -> None:
    nodes = [home("t4-0", T4, 1), on("lab", "h100-0", H100, 8)]
    plan = plan_stages([PlacementJob(key="router", global_batch=64, micro_batch=None)], nodes, {}, PlacementSpec(), NOW)
    assert plan["router"].node == "t4-0"
    assert plan_stages([PlacementJob("router", 64, None)], nodes[1:], {}, PlacementSpec(), NOW) == {}
