"""The decision with compute islands in view: experts planned on an island's node get the home
pod made fit for the island, the island's pods count as the run's, and short stages stay home."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from atoll.operator.islands.dispatch import LABEL_ORIGIN_RUN_UID, island_pod_view
from atoll.operator.islands.fleet import IslandFleet, island_nodes
from atoll.operator.reconcile.actions import CreatePod

from .situations import FLEET, UID, decided, expert, later, observe, pod, step, store
from .test_decide import created, partition_done, run_with

LAB_NODES = island_nodes(
    "lab",
    [
        {
            "metadata": {
                "name": "t4-0",
                "labels": {"nvidia.com/gpu.product": "Tesla-T4", "nvidia.com/gpu.memory": "15360"},
            },
            "status": {"allocatable": {"nvidia.com/gpu": "4"}},
        }
    ],
)
LAB = IslandFleet(name="lab", namespace="atoll", store_endpoint=None, nodes=LAB_NODES)


def on_island(**spec: Any) -> Any:
    status = partition_done().status
    return observe(
        run_with(status, **spec),
        experts=(expert(0), expert(1)),
        pods=(pod("router", 1),),
        nodes=(*FLEET, *LAB_NODES),
        snapshot=store(cluster_sizes=(100, 101)),
    )


def test_experts_restricted_to_an_island_get_island_pods() -> None:
    placement = {"gpu": {"maxPerExpert": 1}, "islands": {"restrict": ["lab"]}}
    observation = replace(on_island(placement=placement), islands=(LAB,))
    decision = step(observation)
    experts = {slug: action for slug, action in created(decision).items() if slug.startswith("expert-")}
    assert set(experts) == {"expert-0", "expert-1"}
    for action in experts.values():
        assert isinstance(action, CreatePod)
        assert (action.island, action.node, action.store_secret) == ("lab", "lab/t4-0", "minio")
        assert action.key.startswith("lab:atoll/"), "the GPU ledger tells it from a home pod"
        metadata = action.manifest["metadata"]
        assert metadata["namespace"] == "atoll"
        assert metadata["labels"][LABEL_ORIGIN_RUN_UID] == UID
        terms = action.manifest["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        assert terms["nodeSelectorTerms"][0]["matchFields"][0]["values"] == ["t4-0"]
    patched = decided(decision)
    assert (patched[0].island, patched[0].node) == ("lab", "lab/t4-0")

    # Next tick: the island's pod, as the registry shows it, is the expert's: it runs, nothing new starts.
    body = {**experts["expert-0"].manifest, "spec": {**experts["expert-0"].manifest["spec"], "nodeName": "t4-0"}}
    running = island_pod_view("lab", {**body, "status": {"phase": "Running"}})
    assert running is not None
    again = step(later(observation, 5, pods=(*observation.pods, running)), decision.memory)
    assert "expert-0" not in created(again)
    assert decided(again).get(0, patched[0]).phase == "Running"


def test_an_island_not_known_to_the_decision_gets_nothing() -> None:
    """Nodes of an island the observation has no fleet for (forgotten meanwhile) start no pod there."""
    placement = {"gpu": {"maxPerExpert": 1}, "islands": {"restrict": ["lab"]}}
    decision = step(on_island(placement=placement))
    assert not [slug for slug in created(decision) if slug.startswith("expert-")]


def test_a_run_with_a_local_store_stays_at_home() -> None:
    placement = {"gpu": {"maxPerExpert": 1}, "islands": {"restrict": ["lab"]}}
    observation = replace(on_island(placement=placement), islands=(LAB,))
    local = replace(observation, store=replace(observation.store, run_uri="/data/runs/ns/r", secret=None))
    decision = step(local)
    assert not [a for a in decision.of(CreatePod) if a.island is not None]
