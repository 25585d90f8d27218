"""Nothing wedges: the situations in which a run used to hang for ever, decided on recorded
observations (tests/operator/situations.py). Each ends Failed with the reason, or shows a
condition that says what the run waits for, or gets the run going again.
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from atoll.operator.ledger import GpuLedger
from atoll.operator.reconcile.actions import CreatePod, DeletePod, PatchExpertStatus, WriteSpec
from atoll.operator.reconcile.executor import Executor, permanent_refusal
from atoll.operator.reconcile.observation import StoreProblem
from atoll.operator.reconcile.store_reader import RunStores
from atoll.stages import ExitCode
from atoll.store import LocalStore

from .situations import (
    FLEET,
    SPEC,
    T0,
    decided,
    expert,
    gpu_node,
    heartbeat,
    later,
    observe,
    pod,
    run_body,
    step,
    store,
)
from .test_decide import condition, created, run_with, running_experts, training_status

# --- a store the operator cannot write ---------------------------------------------------------


def test_a_store_that_refuses_the_runs_setup_for_good_fails_the_run_with_the_reason() -> None:
    first = step(observe(snapshot=store(spec="absent")))
    assert first.of(WriteSpec)
    refused = StoreProblem(
        reason="StoreUnwritable",
        message="cannot write s3://atoll/runs/ns/r: creating bucket: AccessDenied",
        permanent=True,
    )
    memory = replace(first.memory, spec_write_failure=refused)
    failed = step(later(observe(snapshot=store(spec="absent")), 2), memory)
    assert (failed.status.phase, failed.status.reason) == ("Failed", "StoreUnwritable")
    assert "AccessDenied" in (failed.status.message or "")
    assert not failed.of(WriteSpec)
    assert condition(failed.status, "Failed") == ("True", "StoreUnwritable")


def test_an_outage_while_writing_the_setup_is_waited_out_then_fails_after_the_grace() -> None:
    first = step(observe(snapshot=store(spec="absent")))
    down = StoreProblem(
        reason="StoreUnavailable", message="cannot write s3://atoll/runs/ns/r: timeout", permanent=False
    )
    waiting = step(later(observe(snapshot=store(spec="absent")), 2), replace(first.memory, spec_write_failure=down))
    assert waiting.status.phase == "Pending"
    assert waiting.of(WriteSpec), "written again next tick"
    assert condition(waiting.status, "Degraded") == ("True", "StoreUnavailable")
    memory = replace(waiting.memory, spec_write_failure=down)
    gone = step(later(observe(snapshot=store(spec="absent")), 70), memory)
    assert (gone.status.phase, gone.status.reason) == ("Failed", "StoreUnreachable")


def test_writing_the_setup_to_a_local_path_that_cannot_hold_it_is_a_permanent_problem(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    stores = RunStores()
    run = run_body(storage={"uri": str(blocker / "runs")})
    stores.of(run).store = LocalStore(blocker / "runs" / "ns" / "r")
    executor = Executor(kube=None, ledger=GpuLedger(), stores=stores)  # type: ignore[arg-type]
    decision = step(observe(run, snapshot=store(spec="absent", secret=None)))
    applied = executor.apply(run, replace(decision, actions=tuple(decision.of(WriteSpec))))
    problem = applied.spec_write_failure
    assert problem is not None
    assert problem.permanent
    assert problem.reason == "StoreUnwritable"
    assert "a-file" in problem.message


# --- a pod the API server refuses for good ---------------------------------------------------


def _api_error(status: int, reason: str, message: str) -> ApiException:
    error = ApiException(status=status, reason=reason)
    error.body = json.dumps({"kind": "Status", "message": message})
    return error


def test_permanent_refusals_are_told_from_transient_ones() -> None:
    quota = (
        'pods "r-partition-a1" is forbidden: exceeded quota: no-pods, requested: pods=1, used: pods=0, limited: pods=0'
    )
    refused = permanent_refusal(_api_error(403, "Forbidden", quota))
    assert refused is not None
    assert "exceeded quota: no-pods" in refused
    invalid = permanent_refusal(_api_error(422, "Unprocessable Entity", "spec.tolerations[1].key: Invalid value"))
    assert invalid is not None
    assert "spec.tolerations[1].key" in invalid
    for status in (409, 429, 500, 503):
        assert permanent_refusal(_api_error(status, "x", "try again")) is None, status


def test_a_pod_the_api_server_refuses_for_good_fails_the_run_with_its_message() -> None:
    first = step(observe())
    assert created(first)["partition"].manifest["metadata"]["name"] == "r-partition-a1"
    message = "403 Forbidden: pods is forbidden: exceeded quota: no-pods, limited: pods=0"
    memory = replace(first.memory, creation_refusals={"partition": message})
    refused = step(later(observe(run_with(first.status)), 2), memory)
    assert (refused.status.phase, refused.status.reason) == ("Failed", "PartitionFailed")
    assert "exceeded quota: no-pods" in (refused.status.message or "")
    assert not refused.of(CreatePod)


def test_a_pod_creation_that_failed_for_now_is_created_again() -> None:
    first = step(observe())
    memory = replace(first.memory, creation_failures={"partition": "cannot create pod: 500 Internal Server Error"})
    again = step(later(observe(run_with(first.status)), 2), memory)
    assert again.status.phase == "Partitioning"
    assert created(again)["partition"].manifest["metadata"]["name"] == "r-partition-a1"


# --- a pinned pod that no node takes ------------------------------------------------------------


def _pending_expert(created_at: str, message: str = "0/3 nodes are available: 1 Insufficient memory.") -> Any:
    return pod(
        "expert",
        1,
        "Pending",
        expert_index=0,
        node=None,
        planned_node="a100-0",
        created_at=created_at,
        unschedulable=message,
    )


def test_an_unschedulable_pod_shows_schedulable_false_with_the_schedulers_reason() -> None:
    status, experts, pods = running_experts(expert0={"phase": "Pending"})
    waiting = _pending_expert("2026-03-01T11:59:30Z")
    decision = step(observe(run_with(status), experts=experts, pods=[waiting, *pods[1:]]))
    assert condition(decision.status, "Schedulable") == ("False", "Unschedulable")
    found = next(c for c in decision.status.conditions if c.type == "Schedulable")
    assert "Insufficient memory" in found.message
    assert "r-expert-0-a1" in found.message
    assert not decision.of(DeletePod), "within the pending timeout it waits"
    scheduled = step(observe(run_with(decision.status), experts=experts, pods=pods), decision.memory)
    assert condition(scheduled.status, "Schedulable") == ("True", "AsExpected")


def test_a_pinned_pod_pending_past_the_timeout_is_deleted_and_placed_again() -> None:
    status, experts, pods = running_experts(expert0={"phase": "Pending"})
    late = _pending_expert("2026-03-01T11:49:59Z")  # 601 s before T0; the default timeout is 600 s
    decision = step(observe(run_with(status), experts=experts, pods=[late, *pods[1:]]))
    assert [(d.name, d.grace_seconds) for d in decision.of(DeletePod)] == [("r-expert-0-a1", 0)]
    assert created(decision)["expert-0"].manifest["metadata"]["name"] == "r-expert-0-a2"
    patched = decided(decision)
    assert (patched[0].attempt, patched[0].restarts) == (2, 0), "a wrong placement is not the stage's failure"
    assert "pendingTimeoutSeconds" in (patched[0].last_failure or "")
    assert "Insufficient memory" in (patched[0].last_failure or "")
    shorter = step(
        observe(run_with(status, failurePolicy={**SPEC["failurePolicy"], "pendingTimeoutSeconds": 900}),
                experts=experts, pods=[late, *pods[1:]])
    )  # fmt: skip
    assert not shorter.of(DeletePod)


def test_a_pod_its_planned_node_never_took_is_placed_on_another_node_and_says_why() -> None:
    # The scheduler may refuse the node for what the planner's view missed (here: CPU a pod took since).
    # Placed again with the same view of the fleet, the expert would go back to the same node.
    status, experts, pods = running_experts(expert0={"phase": "Pending", "node": "h100-0"})
    message = "0/3 nodes are available: 1 Insufficient cpu, 2 node(s) didn't match Pod's node affinity/selector."
    late = replace(_pending_expert("2026-03-01T11:49:59Z", message), planned_node="h100-0")
    decision = step(observe(run_with(status), experts=experts, pods=[late, *pods[1:]]))
    assert [d.name for d in decision.of(DeletePod)] == ["r-expert-0-a1"]
    again = created(decision)["expert-0"]
    assert again.manifest["metadata"]["name"] == "r-expert-0-a2"
    assert again.node != "h100-0", "the node that never took the pod is avoided"
    warning = next(e for e in decision.events if e.reason == "PendingTimeout")
    assert warning.type == "Warning"
    assert "Insufficient cpu" in warning.message
    assert "pendingTimeoutSeconds" in warning.message
    assert warning.target["metadata"]["name"] == "r-expert-0", "on the DDMExpert"


def test_a_pod_no_other_node_can_take_is_placed_on_its_node_again() -> None:
    status, experts, pods = running_experts(expert0={"phase": "Pending", "node": "h100-0"})
    late = replace(_pending_expert("2026-03-01T11:49:59Z"), planned_node="h100-0")
    cordoned = [n if n.name == "h100-0" else replace(n, unschedulable=True) for n in FLEET]
    decision = step(observe(run_with(status), experts=experts, pods=[late, *pods[1:]], nodes=cordoned))
    assert created(decision)["expert-0"].node == "h100-0", "better the node that may take it later than none"


# --- a node that stops answering -----------------------------------------------------------------


def _not_ready(name: str, seconds: float) -> Any:
    node = next(n for n in FLEET if n.name == name)
    return replace(node, ready=False, not_ready_since=T0 - timedelta(seconds=seconds))


def test_a_node_notready_past_node_lost_seconds_gets_its_experts_restarted_elsewhere() -> None:
    status, experts, pods = running_experts()
    nodes = [n for n in FLEET if n.name != "a100-0"] + [_not_ready("a100-0", 121)]
    decision = step(observe(run_with(status), experts=experts, pods=pods, nodes=nodes))
    deleted = {d.name: d.grace_seconds for d in decision.of(DeletePod)}
    assert deleted == {"r-expert-0-a1": 0, "r-expert-1-a1": 0, "r-router-a1": 0}
    for slug in ("expert-0", "expert-1", "router"):
        assert created(decision)[slug].node != "a100-0"
    patched = decided(decision)
    assert "NotReady for 121 s" in (patched[0].last_failure or "")


def test_a_node_notready_for_less_than_node_lost_seconds_is_waited_for() -> None:
    status, experts, pods = running_experts()
    nodes = [n for n in FLEET if n.name != "a100-0"] + [_not_ready("a100-0", 60)]
    decision = step(observe(run_with(status), experts=experts, pods=pods, nodes=nodes))
    assert not decision.of(DeletePod)
    assert not decision.of(CreatePod)
    quicker = {**SPEC["failurePolicy"], "nodeLostSeconds": 30}
    lost = step(observe(run_with(status, failurePolicy=quicker), experts=experts, pods=pods, nodes=nodes))
    assert len(lost.of(DeletePod)) == 3


def test_a_node_whose_gpu_agent_fell_silent_counts_as_lost() -> None:
    status, experts, pods = running_experts()
    silent = gpu_node(
        "a100-0", "NVIDIA-A100-SXM4-40GB", 40960, 8, annotations={"atoll.dev/gpu-heartbeat": "2026-03-01T11:57:00Z"}
    )
    nodes = [n for n in FLEET if n.name != "a100-0"] + [silent]
    decision = step(observe(run_with(status), experts=experts, pods=pods, nodes=nodes))
    assert {d.name for d in decision.of(DeletePod)} == {"r-expert-0-a1", "r-expert-1-a1", "r-router-a1"}
    for slug in ("expert-0", "expert-1", "router"):
        assert created(decision)[slug].node != "a100-0", "nothing new goes to a lost node"


# --- a store outage longer than the trainer's retry deadline --------------------------------------


def _outage_failure(attempt: int, finished_at: str) -> Any:
    return pod(
        "expert",
        attempt,
        "Failed",
        expert_index=0,
        exit_code=ExitCode.STORE_UNAVAILABLE,
        message="error: s3://atoll unreachable after 120 s of retries",
        finished_at=finished_at,
    )


@pytest.mark.parametrize("attempt", [1, 3, 7])
def test_attempts_ended_by_a_store_outage_use_no_restart_while_it_is_short(attempt: int) -> None:
    status, experts, pods = running_experts(
        expert0={"attempt": attempt, "restarts": 2, "pod": f"r-expert-0-a{attempt}", "storeOutageSince": None}
    )
    ended = _outage_failure(attempt, "2026-03-01T11:59:58Z")
    decision = step(observe(run_with(status), experts=experts, pods=[ended, *pods[1:]]))
    assert decision.status.phase == "Training", "maxRestarts is 2 and restarts is 2: an outage does not count"
    patched = decided(decision)
    assert patched[0].phase == "Restarting"
    assert patched[0].store_outage_since is not None
    assert "not counted" in (patched[0].message or "")
    after = step(
        later(observe(run_with(decision.status), experts=experts, pods=[ended, *pods[1:]]), 600), decision.memory
    )
    restarted = decided(after)
    assert (restarted[0].attempt, restarted[0].restarts) == (attempt + 1, 2)


def test_an_outage_longer_than_store_outage_seconds_counts_again() -> None:
    since = "2026-03-01T11:40:00Z"  # 1200 s before T0; the default allowance is 900 s
    status, experts, pods = running_experts(
        expert0={"attempt": 4, "restarts": 2, "pod": "r-expert-0-a4", "storeOutageSince": since}
    )
    decision = step(
        observe(run_with(status), experts=experts, pods=[_outage_failure(4, "2026-03-01T11:59:50Z"), *pods[1:]])
    )
    assert (decision.status.phase, decision.status.reason) == ("Failed", "StoreUnreachable")
    message = decision.status.message or ""
    assert "maxRestarts is 2" in message
    assert "the store has been unreachable for 1200 s, longer than failurePolicy.storeOutageSeconds (900)" in message
    assert "s3://atoll unreachable" in message, "the stage's own words"


def test_a_run_that_fails_for_another_reason_after_an_outage_names_the_stage() -> None:
    since = "2026-03-01T11:40:00Z"
    status, experts, pods = running_experts(
        expert0={"attempt": 4, "restarts": 2, "pod": "r-expert-0-a4", "storeOutageSince": since}
    )
    crashed = pod("expert", 4, "Failed", expert_index=0, exit_code=1, message="error: CUDA error: an illegal memory")
    decision = step(observe(run_with(status), experts=experts, pods=[crashed, *pods[1:]]))
    assert (decision.status.phase, decision.status.reason) == ("Failed", "ExpertFailed")
    assert "unreachable" not in (decision.status.message or "")


def test_a_running_attempt_that_reached_the_store_ends_the_outage() -> None:
    status, experts, pods = running_experts(expert0={"storeOutageSince": "2026-03-01T11:40:00Z"})
    beat = heartbeat("expert", 1, expert_index=0, step=5, total_steps=100)
    decision = step(observe(run_with(status), experts=experts, pods=pods, snapshot=store(progress={"expert-0": beat})))
    patched = decided(decision)
    assert patched[0].store_outage_since is None


# --- a stage stopped by SIGTERM (an eviction, a preemption) -----------------------------------------


def test_an_attempt_stopped_by_sigterm_resumes_at_once_and_uses_no_restart() -> None:
    status, experts, pods = running_experts(expert0={"restarts": 2})
    stopped = pod(
        "expert",
        1,
        "Failed",
        expert_index=0,
        exit_code=ExitCode.STOPPED,
        message="error: stopped by SIGTERM at step 40",
    )
    decision = step(observe(run_with(status), experts=experts, pods=[stopped, *pods[1:]]))
    assert decision.status.phase == "Training", "maxRestarts is 2 and restarts is 2: a stop is no failure"
    assert created(decision)["expert-0"].manifest["metadata"]["name"] == "r-expert-0-a2"
    patched = decided(decision)
    assert (patched[0].attempt, patched[0].restarts) == (2, 2)


# --- an attempt no node can take yet ------------------------------------------------------------


def test_an_expert_no_node_can_take_yet_keeps_its_attempt_and_counts_no_restart_while_it_waits() -> None:
    full = {"h100-0": 8, "t4-0": 4, "a100-0": 8}
    world = observe(
        run_with(training_status()),
        experts=(expert(0), expert(1)),
        pods=(pod("router", 1),),
        busy=full,
        snapshot=store(cluster_sizes=(100, 101)),
    )
    first = step(world)
    assert not first.of(CreatePod)
    waiting = decided(first)
    assert {(s.phase, s.attempt, s.restarts) for s in waiting.values()} == {("Pending", 1, 0)}
    experts = tuple(replace(expert(k), status=waiting[k]) for k in (0, 1))
    later_on = step(later(replace(world, run=run_with(first.status), experts=experts), 60), first.memory)
    assert not later_on.of(CreatePod)
    assert not later_on.of(PatchExpertStatus), "still attempt 1, no restart: nothing ended"
    freed = step(later(replace(world, run=run_with(first.status), experts=experts, busy_gpus={}), 90), first.memory)
    assert {c.manifest["metadata"]["name"] for c in freed.of(CreatePod)} >= {"r-expert-0-a1", "r-expert-1-a1"}
