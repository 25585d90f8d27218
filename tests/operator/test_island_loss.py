"""Island loss in the decision, on recorded observations: an island that stops answering is
waited for, then (after failurePolicy.islandLostSeconds) its experts are placed again
elsewhere without anything being deleted there; once it answers again, the pods of the
attempts it lost are removed, and only those."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Any

from atoll.api.status import DDMRunStatus
from atoll.operator.islands.fleet import IslandFleet
from atoll.operator.islands.loss import left_over, lost_islands
from atoll.operator.reconcile.actions import DeletePod
from atoll.operator.views import PodView
from atoll.progress import CheckpointRef, StageProgress
from atoll.stages import ExitCode

from .situations import FLEET, ROOT, SPEC, T0, decided, expert, later, observe, pod, step, store
from .test_decide import created, run_with, running_experts
from .test_decide_islands import LAB

LOST_AFTER = 60
POLICY = {**SPEC["failurePolicy"], "islandLostSeconds": LOST_AFTER}
DOWN = tuple(replace(node, unschedulable=True) for node in LAB.nodes)
"""The island's nodes as the registry keeps them while it does not answer."""


def on_lab(attempt: int, phase: str = "Running", **fields: Any) -> PodView:
    """Expert 0's pod of `attempt` on the island's T4 node, as the registry last saw it."""
    seen = pod("expert", attempt, phase, expert_index=0, node="lab/t4-0", **fields)
    return replace(seen, island="lab", namespace="atoll", origin_namespace="ns")


def lab_down(for_seconds: float) -> IslandFleet:
    return replace(LAB, nodes=DOWN, disconnected_since=T0 - timedelta(seconds=for_seconds))


def expert_zero_on_lab(lab: IslandFleet, pods: tuple[PodView, ...], attempt: int = 1, **status: Any) -> Any:
    """Expert 0 running on the island (expert 1 and the router at home)."""
    where = {"node": "lab/t4-0", "island": "lab", "gpu": "Tesla-T4", "attempt": attempt, **status}
    run_status, experts, home_pods = running_experts(expert0=where)
    observation = observe(
        run_with(run_status, failurePolicy=POLICY),
        experts=experts,
        pods=(*home_pods[1:], *pods),
        nodes=(*FLEET, *lab.nodes),
        snapshot=store(cluster_sizes=(100, 101), claims={"expert-0": attempt}),
    )
    return replace(observation, islands=(lab,))


def test_an_island_unreachable_for_less_than_island_lost_seconds_is_waited_for() -> None:
    decision = step(expert_zero_on_lab(lab_down(LOST_AFTER - 1), (on_lab(1),)))
    assert "expert-0" not in created(decision)
    assert not decision.of(DeletePod)


def test_a_lost_islands_expert_starts_again_elsewhere_and_nothing_is_deleted_there() -> None:
    decision = step(expert_zero_on_lab(lab_down(LOST_AFTER), (on_lab(1),)))
    again = created(decision)["expert-0"]
    assert again.island is None, "home takes it: the island's nodes take no new expert"
    assert again.manifest["metadata"]["name"] == "r-expert-0-a2"
    assert "--attempt" in again.manifest["spec"]["containers"][0]["args"]
    assert not decision.of(DeletePod), "nothing is deleted on an island that does not answer"
    patched = decided(decision)
    assert (patched[0].attempt, patched[0].island) == (2, "home")
    assert "failurePolicy.islandLostSeconds" in (patched[0].last_failure or "")


def test_an_attempt_never_seen_on_an_unreachable_island_is_waited_for_then_lost() -> None:
    """The operator started while the island was down: it never saw the pod."""
    unseen = lab_down(LOST_AFTER - 1)
    unseen = replace(unseen, nodes=())
    waiting = step(expert_zero_on_lab(unseen, ()))
    assert "expert-0" not in created(waiting), "not taken for a pod that disappeared"
    patched = decided(waiting)
    assert "does not answer" in (patched[0].message or "")
    assert patched[0].restarts == 0

    lost = step(later(expert_zero_on_lab(unseen, ()), 1), waiting.memory)
    assert created(lost)["expert-0"].island is None
    restarted = decided(lost)
    assert "islandLostSeconds" in (restarted[0].last_failure or "")


def test_once_the_island_answers_the_pods_of_the_attempts_it_lost_are_removed() -> None:
    back = replace(LAB, disconnected_since=None)
    left = (on_lab(1), on_lab(2, "Failed", exit_code=ExitCode.FENCED), on_lab(3, "Failed", exit_code=1))
    home = replace(pod("expert", 4, expert_index=0, node="t4-0"), gpu_product="Tesla-T4")
    decision = step(expert_zero_on_lab(back, (*left, home), attempt=4, node="t4-0", island="home"))
    deleted = {d.name: d.why for d in decision.of(DeletePod)}
    assert set(deleted) == {"r-expert-0-a1", "r-expert-0-a2"}, "running or fenced: left over; failed: kept for its logs"
    assert all("island lab" in why for why in deleted.values())
    assert "expert-0" not in created(decision), "the current attempt runs on"


def test_left_over_and_lost_islands_are_pure_rules() -> None:
    assert lost_islands([lab_down(59.5)], 60, T0) == {}
    assert list(lost_islands([lab_down(60)], 60, T0)) == ["lab"]
    assert lost_islands([LAB], 60, T0) == {}, "an island that answers is never lost"
    current = {("expert", 0): 2}
    running = on_lab(1)
    assert left_over([running], current, {"lab": T0}) == [], "not while the island does not answer"
    assert left_over([running], current, {}) == [running]
    assert left_over([on_lab(2)], current, {}) == [], "the current attempt is never left over"
    at_home = replace(pod("expert", 1, expert_index=0), island="home")
    assert left_over([at_home], current, {}) == [], "home pods are the run's to keep (owned, collected with it)"


def test_the_registry_knows_an_island_unreachable_since_the_operator_started() -> None:
    from atoll.api.island import ComputeIslandSpec
    from atoll.operator.islands.registry import IslandRegistry

    registry = IslandRegistry(connect=lambda text: text)
    spec = ComputeIslandSpec.model_validate({"kubeconfigSecretRef": {"name": "k"}, "namespace": "atoll"})
    registry.unreached("lab", spec, since=T0)
    fleet = registry.fleet("lab")
    assert fleet is not None
    assert (fleet.disconnected_since, fleet.nodes, fleet.namespace) == (T0, (), "atoll")
    registry.reached("lab", spec, kubeconfig="k", version="1", nodes=[], pods=[], accepts=True)
    reached = registry.fleet("lab")
    assert reached is not None
    assert reached.disconnected_since is None


def test_a_finished_run_removes_what_a_lost_island_kept_once_it_answers() -> None:
    """The run may finish before the island answers again: its left-overs go all the same."""
    finished = DDMRunStatus(phase="Succeeded")
    experts = [expert(k, {"phase": "Succeeded", "attempt": 2, "node": "t4-0", "island": "home"}) for k in (0, 1)]
    seen = observe(run_with(finished), experts=experts, pods=(on_lab(1),), nodes=(*FLEET, *LAB.nodes))
    still_down = step(replace(seen, islands=(lab_down(600),)))
    assert not still_down.of(DeletePod)
    back = step(replace(seen, islands=(LAB,)))
    assert [d.name for d in back.of(DeletePod)] == ["r-expert-0-a1"]


def test_before_the_islands_are_first_probed_an_unseen_attempt_there_is_waited_for() -> None:
    """The operator just started: the registry knows no island yet, so a pod there is not seen."""
    unprobed = replace(expert_zero_on_lab(LAB, ()), islands=(), islands_synced=False)
    waiting = step(unprobed)
    assert "expert-0" not in created(waiting)
    patched = decided(waiting)
    assert "not looked at yet" in (patched[0].message or "")
    gone = step(replace(unprobed, islands_synced=True))  # probed, and no such island any more
    assert created(gone)["expert-0"].island is None
    restarted = decided(gone)
    assert "disappeared" in (restarted[0].last_failure or "")


def test_a_failed_run_stops_its_pods_but_not_on_an_island_that_does_not_answer() -> None:
    failed = DDMRunStatus(phase="Failed")
    experts = [expert(k, {"phase": "Running", "attempt": 1}) for k in (0, 1)]
    seen = observe(run_with(failed), experts=experts, pods=(on_lab(1),), nodes=(*FLEET, *LAB.nodes))
    assert not step(replace(seen, islands=(lab_down(5),))).of(DeletePod)
    assert [d.name for d in step(replace(seen, islands=(LAB,))).of(DeletePod)] == ["r-expert-0-a1"]


def test_an_expert_lost_after_its_final_checkpoint_starts_again_to_finish() -> None:
    # The island went dark after the last step's checkpoint, before the done marker: the
    # planner took the expert for finished (no work left) and it waited, "not in the plan",
    # for good. It needs one more attempt, which resumes from that checkpoint and finishes.
    final = CheckpointRef(step=100, uri=f"{ROOT}/experts/0/checkpoints/step-000000100", time=T0)
    heartbeat = StageProgress(
        stage="expert", expert=0, attempt=1, state="running", step=100, total_steps=100, last_checkpoint=final
    )
    observation = expert_zero_on_lab(lab_down(LOST_AFTER), (on_lab(1),))
    snapshot = replace(observation.store, progress={"expert-0": heartbeat})
    decision = step(replace(observation, store=snapshot))
    again = created(decision)["expert-0"]
    assert again.manifest["metadata"]["name"] == "r-expert-0-a2"
    patched = decided(decision)
    assert (patched[0].attempt, patched[0].island) == (2, "home")
