"""The decision on autoscaled clusters, on recorded observations (tests/operator/situations.py):
an expert on a node an autoscaler taints for deletion, or whose termination condition (a spot
preemption notice) is True, checkpoints and moves, and a pod that
waits for a pool's new node for longer than failurePolicy.pendingTimeoutSeconds is given up
and its expert planned again without that pool.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from typing import Any

import pytest

from atoll.operator.command import add_arguments
from atoll.operator.placement.autoscalers import TERMINATION_CONDITIONS, deletion_taint, removal_notice
from atoll.operator.reconcile.actions import DeletePod
from atoll.operator.views import NodeView
from atoll.stages import ExitCode

from .situations import FLEET, SETTINGS, decided, gpu_node, later, observe, pod, step, store
from .test_decide import created, reasons, run_with, running_experts

A100 = "NVIDIA-A100-SXM4-40GB"


def tainted(key: str, effect: str = "NoSchedule") -> tuple[Any, ...]:
    """The fleet with its A100 node (where both experts run) tainted for deletion."""
    taint = {"key": key, "value": "", "effect": effect}
    a100 = gpu_node("a100-0", A100, 40960, 8, taints=(taint,))
    return tuple(a100 if node.name == "a100-0" else node for node in FLEET)


@pytest.mark.parametrize(
    ("taints", "found"),
    [
        (({"key": "ToBeDeletedByClusterAutoscaler", "value": "1733000000", "effect": "NoSchedule"},),
         "ToBeDeletedByClusterAutoscaler=1733000000:NoSchedule"),
        (({"key": "karpenter.sh/disrupted", "effect": "NoSchedule"},), "karpenter.sh/disrupted:NoSchedule"),
        (({"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"},), None),
        (({"key": "karpenter.sh/disrupted", "effect": "PreferNoSchedule"},), None),
        ((), None),
    ],
)  # fmt: skip
def test_a_deletion_taint_is_cluster_autoscalers_or_karpenters(taints: Any, found: str | None) -> None:
    assert deletion_taint(taints) == found


def node_with_condition(kind: str, status: str = "True", reason: str = "SpotEvictionIncoming") -> NodeView:
    """The fleet's A100 node as its watch delivers it, with one more condition."""
    labels = {"nvidia.com/gpu.product": A100, "nvidia.com/gpu.memory": "40960"}
    return NodeView.from_body(
        {
            "metadata": {"name": "a100-0", "labels": labels},
            "spec": {},
            "status": {
                "allocatable": {"nvidia.com/gpu": "8"},
                "conditions": [
                    {"type": "Ready", "status": "True", "reason": "KubeletReady"},
                    {"type": "MemoryPressure", "status": "False", "reason": "KubeletHasSufficientMemory"},
                    {"type": kind, "status": status, "reason": reason},
                ],
            },
        }
    )


@pytest.mark.parametrize(
    ("kind", "status", "found"),
    [
        ("PreemptionScheduled", "True", "condition PreemptionScheduled=True (SpotEvictionIncoming)"),
        ("VMEventScheduled", "True", "condition VMEventScheduled=True (SpotEvictionIncoming)"),
        ("PreemptionScheduled", "False", None),
        ("KernelDeadlock", "True", None),
    ],
)
def test_a_termination_condition_is_a_removal_notice(kind: str, status: str, found: str | None) -> None:
    node = node_with_condition(kind, status)
    assert removal_notice(node.taints, node.notices, TERMINATION_CONDITIONS) == found
    taint = {"key": "karpenter.sh/disrupted", "effect": "NoSchedule"}
    assert removal_notice((taint,), node.notices, TERMINATION_CONDITIONS) == "taint karpenter.sh/disrupted:NoSchedule"
    assert removal_notice((), node.notices, ()) is None, "no condition types configured: none honoured"


def test_experts_on_a_node_with_a_spot_preemption_notice_checkpoint_then_move() -> None:
    """The same path as a deletion taint: the pods stopped gracefully (the trainer checkpoints on
    SIGTERM), nothing new placed on that node; an operator told to honour no condition leaves them."""
    status, experts, pods = running_experts()
    nodes = tuple(node_with_condition("PreemptionScheduled") if n.name == "a100-0" else n for n in FLEET)
    world = observe(run_with(status), experts=experts, pods=pods, nodes=nodes)
    noticed = step(world)
    assert {d.name: d.grace_seconds for d in noticed.of(DeletePod)} == {"r-expert-0-a1": None, "r-expert-1-a1": None}
    assert reasons(noticed).count("Evacuating") == 2
    patched = decided(noticed)
    why = "node a100-0 is being removed (condition PreemptionScheduled=True (SpotEvictionIncoming))"
    assert all(s.evacuation == why for s in patched.values()), patched
    stopped = [pod("expert", 1, "Failed", expert_index=k, exit_code=ExitCode.STOPPED, deleting=True) for k in (0, 1)]
    experts = [replace(e, status=patched[e.expert]) for e in experts]
    moved = step(later(observe(run_with(noticed.status), experts=experts, pods=[*stopped, pods[2]], nodes=nodes), 4))
    starts = {slug: c for slug, c in created(moved).items() if slug.startswith("expert-")}
    assert set(starts) == {"expert-0", "expert-1"}
    assert all(c.node not in (None, "a100-0") for c in starts.values())
    ignored = step(world, settings=replace(SETTINGS, termination_conditions=()))
    assert not ignored.of(DeletePod)
    assert "Evacuating" not in reasons(ignored)


@pytest.mark.parametrize("key", ["ToBeDeletedByClusterAutoscaler", "karpenter.sh/disrupted"])
def test_experts_on_a_node_tainted_for_deletion_checkpoint_then_resume_elsewhere_as_a_move(key: str) -> None:
    status, experts, pods = running_experts()
    nodes = tainted(key)
    # The taint appears: each expert's pod is stopped gracefully (SIGTERM: the trainer commits
    # a checkpoint at its next step), nothing new starts yet and nothing counts as a failure.
    noticed = step(observe(run_with(status), experts=experts, pods=pods, nodes=nodes))
    stopped = {d.name: d.grace_seconds for d in noticed.of(DeletePod)}
    assert stopped == {"r-expert-0-a1": None, "r-expert-1-a1": None}, "graceful, never grace 0"
    assert not [c for c in created(noticed) if c.startswith("expert-")]
    assert reasons(noticed).count("Evacuating") == 2
    patched = decided(noticed)
    assert all(f"node a100-0 is being removed (taint {key}" in (s.evacuation or "") for s in patched.values())
    assert all((s.phase, s.restarts, s.last_failure) == ("Running", 0, None) for s in patched.values())
    # While the pods shut down (checkpointing), the experts wait: no second attempt fences them.
    experts = [replace(e, status=patched[e.expert]) for e in experts]
    deleting = [pod("expert", 1, expert_index=k, deleting=True) for k in (0, 1)]
    waiting = step(later(observe(run_with(noticed.status), experts=experts, pods=[*deleting, pods[2]], nodes=nodes), 2))
    assert not waiting.of(DeletePod)
    assert not [c for c in created(waiting) if c.startswith("expert-")]
    # Expert 0's pod is gone, expert 1's ended with exit 6 (stopped after its checkpoint): both
    # start their next attempt at once, on a node that is not being removed, as a move.
    stopped_pod = pod("expert", 1, "Failed", expert_index=1, exit_code=ExitCode.STOPPED, deleting=True)
    moved = step(later(observe(run_with(waiting.status), experts=experts, pods=[stopped_pod, pods[2]], nodes=nodes), 4))
    starts = {slug: c for slug, c in created(moved).items() if slug.startswith("expert-")}
    assert set(starts) == {"expert-0", "expert-1"}
    assert all(c.node not in (None, "a100-0") for c in starts.values())
    after = decided(moved)
    for k in (0, 1):
        assert (after[k].attempt, after[k].moves, after[k].restarts, after[k].last_failure) == (2, 1, 1, None)
        assert after[k].evacuation is None


def test_an_expert_evicted_by_the_autoscaler_is_a_move_not_a_failure() -> None:
    """Karpenter (or cluster-autoscaler) evicts the pod itself: the operator sees it deleting
    on a tainted node before it ever stopped it, and treats its end as a move."""
    status, experts, pods = running_experts()
    evicted = pod("expert", 1, expert_index=0, deleting=True)
    decision = step(
        observe(run_with(status), experts=experts, pods=[evicted, *pods[1:]], nodes=tainted("karpenter.sh/disrupted"))
    )
    zero = decided(decision)[0]
    assert zero.evacuation is not None
    assert (zero.restarts, zero.last_failure, zero.phase) == (0, None, "Running")
    assert "r-expert-0-a1" not in {d.name for d in decision.of(DeletePod)}, "being deleted already"


POOL_SPEC = {
    "gpu": {"maxPerExpert": 1},
    "speeds": {A100: 1000.0, "NVIDIA-H100-80GB-HBM3": 1.0, "Tesla-T4": 1.0},
    "pools": [{"name": "more-a100", "product": A100, "maxGpus": 8, "provisioningSeconds": 5}],
}


def test_a_pod_waiting_for_a_pools_node_past_the_pending_timeout_is_replanned_without_that_pool() -> None:
    status, experts, pods = running_experts(expert0={"node": None}, expert1={"node": "t4-0", "gpu": "Tesla-T4"})
    waiting = pod("expert", 1, "Pending", expert_index=0, node=None, planned_pool="more-a100",
                  created_at="2026-03-01T11:49:00Z", unschedulable="0/3 nodes are available")  # fmt: skip
    world = observe(
        run_with(status, placement=POOL_SPEC),
        experts=experts,
        pods=[waiting, pod("expert", 1, expert_index=1, node="t4-0"), pods[2]],
        busy={"a100-0": 8, "t4-0": 1, f"more-a100:{A100}": 1},  # other pods hold every A100 of the fleet
        snapshot=store(cluster_sizes=(100, 101)),
    )
    early = step(later(world, -90))  # 9.5 min after its creation: within pendingTimeoutSeconds (600)
    assert not early.of(DeletePod)
    late = step(world)  # 11 min
    assert {d.name: d.grace_seconds for d in late.of(DeletePod)} == {"r-expert-0-a1": 0}
    again = created(late)["expert-0"]
    assert again.manifest["metadata"]["name"] == "r-expert-0-a2"
    assert again.node in ("h100-0", "t4-0"), "planned without the pool, on the fleet's slower GPUs"
    assert "atoll.dev/planned-pool" not in again.manifest["metadata"]["annotations"]
    assert "PendingTimeout" in reasons(late)
    zero = decided(late)[0]
    assert "waiting for a new node of pool more-a100" in (zero.last_failure or "")
    assert zero.restarts == 0, "the placement was wrong, not the expert: no restart counted"


def test_a_node_being_removed_still_counts_against_its_pools_limit() -> None:
    """The expert leaving a pool's node is not planned on a new node of that pool while the old
    one still holds the pool's last GPU (the autoscaler could not make it: it would wait)."""
    taint = {"key": "ToBeDeletedByClusterAutoscaler", "value": "1733000000", "effect": "NoSchedule"}
    labels = {"nvidia.com/gpu.product": A100, "nvidia.com/gpu.memory": "40960", "karpenter.sh/nodepool": "more-a100"}
    grown = NodeView(name="a100-new", labels=labels, gpus=1, taints=(taint,))
    placement = {**POOL_SPEC, "pools": [{**POOL_SPEC["pools"][0], "maxGpus": 1}]}  # type: ignore[index]
    status, experts, pods = running_experts(expert0={"node": "a100-new"}, expert1={"node": "t4-0", "gpu": "Tesla-T4"})
    world = observe(
        run_with(status, placement=placement),
        experts=experts,
        pods=[pod("expert", 1, expert_index=1, node="t4-0"), pods[2]],  # expert 0's pod stopped and gone
        nodes=(*FLEET, grown),
        busy={"a100-0": 8, "t4-0": 1},
        snapshot=store(cluster_sizes=(100, 101)),
    )
    evacuated = replace(
        experts[0], status=experts[0].status.model_copy(update={"evacuation": "node a100-new is being removed"})
    )
    decision = step(replace(world, experts=(evacuated, experts[1])))
    again = created(decision)["expert-0"]
    assert again.node in ("h100-0", "t4-0"), again.node
    assert "atoll.dev/planned-pool" not in again.manifest["metadata"]["annotations"]


def test_the_termination_conditions_flag_defaults_to_the_known_types_and_names_a_bad_one(
    capsys: pytest.CaptureFixture[str],
) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert parser.parse_args([]).termination_conditions == ("PreemptionScheduled", "VMEventScheduled")
    assert parser.parse_args(
        ["--termination-conditions", "GCESpotPreempting, PreemptionScheduled"]
    ).termination_conditions == (
        "GCESpotPreempting",
        "PreemptionScheduled",
    )
    assert parser.parse_args(["--termination-conditions", ""]).termination_conditions == ()
    with pytest.raises(SystemExit):
        parser.parse_args(["--termination-conditions", "Preemption Scheduled"])
    assert "--termination-conditions: 'Preemption Scheduled' is not a node condition type" in capsys.readouterr().err
