"""The decision function on recorded situations (tests/operator/situations.py): no cluster,
no store, no clock — one observation and the memory in, the actions, status and Events out.
(Over 400 lines on purpose: one short test per recorded situation, read side by side.)
"""

from __future__ import annotations

import threading
from dataclasses import replace
from typing import Any

from atoll.api.status import DDMExpertStatus, DDMRunStatus, MoveStatus
from atoll.operator.ledger import GpuHolder, GpuLedger
from atoll.operator.reconcile import Decision, RunMemory, decide_reserving, remember
from atoll.operator.reconcile.actions import (
    Applied,
    CreateExpert,
    CreatePod,
    DeletePod,
    PatchExpertStatus,
    WriteSpec,
)
from atoll.operator.reconcile.report import PENDING_WRITTEN_AFTER
from atoll.stages import ExitCode

from .situations import (
    FLEET,
    SETTINGS,
    UID,
    checkpoint_ref,
    decided,
    expert,
    gpu_node,
    heartbeat,
    later,
    observe,
    pod,
    run_body,
    status_body,
    step,
    store,
    store_down,
)


def kinds(decision: Decision) -> list[str]:
    return [type(action).__name__ for action in decision.actions]


def created(decision: Decision) -> dict[str, CreatePod]:
    return {action.stage: action for action in decision.of(CreatePod)}


def args(action: CreatePod) -> list[str]:
    container: dict[str, Any] = action.manifest["spec"]["containers"][0]
    return list(container["args"])


def reasons(decision: Decision) -> list[str]:
    return [event.reason for event in decision.events]


def condition(status: DDMRunStatus, kind: str) -> tuple[str, str]:
    found = next(c for c in status.conditions if c.type == kind)
    return found.status, found.reason


def run_with(status: DDMRunStatus, **spec: Any) -> Any:
    return run_body(status_body(status), **spec)


# --- a run from its first look to Training -------------------------------------------------


def test_fresh_run_writes_its_spec_first_and_starts_nothing() -> None:
    decision = step(observe(snapshot=store(spec="absent")))
    assert kinds(decision) == ["WriteSpec", "PatchRunStatus"]
    assert decision.of(WriteSpec)[0].spec.partition.clusters == 2
    assert decision.status.phase == "Pending"
    assert decision.status.store_uri is None


def test_spec_stored_starts_partition_attempt_one() -> None:
    decision = step(observe())
    assert decision.status.phase == "Partitioning"
    assert decision.status.store_uri.endswith("/ns/r")  # type: ignore[union-attr]
    (partition,) = decision.of(CreatePod)
    assert partition.stage == "partition"
    assert partition.manifest["metadata"]["name"] == "r-partition-a1"
    assert args(partition)[:6] == ["partition", "--run", "s3://atoll/runs/ns/r/spec.json", "--store",
                                   "s3://atoll/runs/ns/r", "--attempt"]  # fmt: skip
    assert partition.started is not None
    assert partition.started.reason == "AttemptStarted"
    assert "Partitioning" in reasons(decision)
    # A store that already holds a claim (a re-applied run) continues above it.
    again = step(observe(snapshot=store(claims={"partition": 3})))
    assert created(again)["partition"].manifest["metadata"]["name"] == "r-partition-a4"


def test_partition_running_is_left_alone() -> None:
    first = step(observe())
    running = step(
        later(
            observe(run_with(first.status)),
            5,
            pods=(pod("partition", 1),),
            store=store(progress={"partition": heartbeat("partition", 1, step=40, total_steps=200)}),
        ),
        first.memory,
    )
    assert not running.of(CreatePod)
    assert running.status.stages.partition.phase == "Running"
    assert running.status.stages.partition.step == 40


def partition_done() -> Decision:
    """The tick at which the partition's pod exited 0 and its done marker is in the store."""
    first = step(observe())
    finished = store(
        progress={"partition": heartbeat("partition", 1, "done", step=200, total_steps=200)},
        done={"partition": True},
        cluster_sizes=(100, 101),
        claims={"partition": 1},
    )
    exited = (pod("partition", 1, "Succeeded", exit_code=0),)
    return step(later(observe(run_with(first.status)), 30, pods=exited, store=finished), first.memory)


def training_status() -> DDMRunStatus:
    """The run's status right after the partition finished (from the decision itself)."""
    return partition_done().status


def test_partition_done_creates_the_experts_and_starts_the_router() -> None:
    done = partition_done()
    assert done.status.stages.partition.phase == "Succeeded"
    assert done.status.cluster_sizes == [100, 101]
    assert done.status.phase == "Training"
    experts = done.of(CreateExpert)
    assert [e.manifest["metadata"]["name"] for e in experts] == ["r-expert-0", "r-expert-1"]
    assert all(e.manifest["metadata"]["ownerReferences"][0]["uid"] == UID for e in experts)
    assert set(created(done)) == {"router"}, "experts start once their DDMExperts exist"


def test_experts_start_pinned_where_the_plan_puts_them_and_never_on_busy_gpus() -> None:
    status = training_status()
    decision = step(
        observe(
            run_with(status),
            experts=(expert(0), expert(1)),
            pods=(pod("router", 1),),
            busy={"h100-0": 8},  # other pods hold every H100
            snapshot=store(cluster_sizes=(100, 101), claims={"expert-1": 2}),
        )
    )
    experts = {slug: action for slug, action in created(decision).items() if slug.startswith("expert-")}
    assert set(experts) == {"expert-0", "expert-1"}
    for slug, action in experts.items():
        assert action.node in ("a100-0", "t4-0")
        assert action.gpus == 1
        assert action.manifest["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
            "nodeSelectorTerms"
        ][0]["matchFields"][0]["values"] == [action.node]
        assert action.manifest["metadata"]["ownerReferences"][0]["uid"].startswith(UID + "-x")
        assert "--micro-batch" in args(action)
        assert action.started is not None
        assert action.started.target["kind"] == "DDMExpert"
        del slug
    assert "--attempt" in args(experts["expert-1"])
    assert args(experts["expert-1"])[args(experts["expert-1"]).index("--attempt") + 1] == "3", "above the claim"
    patched = decided(decision)
    assert patched[0].phase == "Pending"
    assert patched[0].attempt == 1


# --- faults ------------------------------------------------------------------------------------


def running_experts(**changes: Any) -> tuple[DDMRunStatus, list[Any], list[Any]]:
    """Both experts and the router running: (run status, DDMExperts, pods)."""
    status = training_status()
    statuses = {
        k: {
            "phase": "Running",
            "attempt": 1,
            "pod": f"r-expert-{k}-a1",
            "node": node,
            "gpu": "NVIDIA-A100-SXM4-40GB",
            "gpus": 1,
            "microBatch": 16,
            "gradAccum": 1,
            **changes.get(f"expert{k}", {}),
        }
        for k, node in ((0, "a100-0"), (1, "a100-0"))
    }
    experts = [expert(k, statuses[k]) for k in (0, 1)]
    pods = [pod("expert", 1, expert_index=0), pod("expert", 1, expert_index=1), pod("router", 1)]
    return status, experts, pods


def test_pod_lost_is_a_failed_attempt_and_restarts() -> None:
    status, experts, pods = running_experts()
    decision = step(observe(run_with(status), experts=experts, pods=pods[1:], snapshot=store(cluster_sizes=(100, 101))))
    zero = created(decision)["expert-0"]
    assert zero.manifest["metadata"]["name"] == "r-expert-0-a2"
    patched = decided(decision)
    assert (patched[0].attempt, patched[0].restarts) == (2, 1)
    assert "disappeared" in (patched[0].last_failure or "")
    assert 1 not in patched, "expert 1 did not change: no write"


def test_node_lost_deletes_the_stranded_pod_and_restarts_elsewhere_at_once() -> None:
    status, experts, pods = running_experts()
    nodes = [n for n in FLEET if n.name != "a100-0"]
    decision = step(observe(run_with(status), experts=experts, pods=pods, nodes=nodes))
    deleted = {d.name: d.grace_seconds for d in decision.of(DeletePod)}
    assert deleted == {"r-expert-0-a1": 0, "r-expert-1-a1": 0, "r-router-a1": 0}
    for slug in ("expert-0", "expert-1", "router"):
        assert created(decision)[slug].node != "a100-0"
    patched = decided(decision)
    assert "a100-0" in (patched[0].last_failure or "")


def test_fenced_attempt_restarts_above_the_claim_and_uses_no_restart() -> None:
    status = step(observe()).status
    fenced = pod("partition", 1, "Failed", exit_code=ExitCode.FENCED, message="error: attempt 1 is fenced")
    decision = step(
        observe(
            run_with(status, failurePolicy={"maxRestarts": 0}),
            pods=(fenced,),
            snapshot=store(claims={"partition": 2}),
        )
    )
    partition = decision.status.stages.partition
    assert decision.status.phase == "Partitioning"
    assert created(decision)["partition"].manifest["metadata"]["name"] == "r-partition-a3"
    assert (partition.restarts, partition.last_failure) == (0, None)


def test_bad_input_fails_the_run_at_once() -> None:
    status = step(observe()).status
    bad = pod(
        "partition", 1, "Failed", exit_code=ExitCode.BAD_INPUT, message="error: dataset.uri '/nope' does not exist"
    )
    decision = step(observe(run_with(status), pods=(bad,)))
    assert decision.status.phase == "Failed"
    assert decision.status.reason == "PartitionFailed"
    assert "bad input" in (decision.status.message or "")
    assert "/nope" in (decision.status.message or "")
    assert not decision.of(CreatePod)
    assert condition(decision.status, "Failed") == ("True", "PartitionFailed")
    assert "PartitionFailed" in reasons(decision)


def test_failed_after_max_restarts_fails_the_run_and_stops_its_pods() -> None:
    status, experts, pods = running_experts(
        expert0={"attempt": 3, "restarts": 2, "pod": "r-expert-0-a3", "lastFailure": "x", "lastFailureAttempt": 2}
    )
    broken = pod("expert", 3, "Failed", expert_index=0, exit_code=1, message="error: NaN loss")
    decision = step(observe(run_with(status), experts=experts, pods=[broken, *pods[1:]]))
    assert decision.status.phase == "Failed"
    assert decision.status.reason == "ExpertFailed"
    assert "maxRestarts is 2" in (decision.status.message or "")
    assert {d.name for d in decision.of(DeletePod)} == {"r-expert-1-a1", "r-router-a1"}
    assert not decision.of(CreatePod)
    # A failed run stays failed: later ticks only make sure its pods are gone.
    again = step(later(observe(run_with(decision.status), experts=experts, pods=pods[1:]), 5), decision.memory)
    assert kinds(again) == ["DeletePod", "DeletePod"]


def test_store_unavailable_degrades_then_fails_a_run_that_never_reached_it() -> None:
    first = step(observe(snapshot=store_down()))
    assert first.status.phase == "Pending"
    assert condition(first.status, "Degraded") == ("True", "StoreUnavailable")
    assert not first.of(CreatePod)
    still = step(later(observe(snapshot=store_down()), 30), first.memory)
    assert still.status.phase == "Pending"
    gone = step(later(observe(snapshot=store_down()), 61), first.memory)
    assert (gone.status.phase, gone.status.reason) == ("Failed", "StoreUnreachable")


def test_store_outage_during_training_degrades_and_recovers_without_failing() -> None:
    status, experts, pods = running_experts()
    outage = "s3://atoll/runs unreachable since 2026-03-01T12:00:00+00:00: connection refused"
    down = step(later(observe(run_with(status), experts=experts, pods=pods, snapshot=store(outage=outage)), 3600))
    assert down.status.phase == "Training"
    assert condition(down.status, "Degraded") == ("True", "StoreUnavailable")
    assert "StoreUnavailable" in reasons(down)
    back = step(observe(run_with(down.status), experts=experts, pods=pods), down.memory)
    assert condition(back.status, "Degraded") == ("False", "AsExpected")
    assert "Recovered" in reasons(back)


# --- moves -------------------------------------------------------------------------------------


FAST = {"NVIDIA-H100-80GB-HBM3": 1000.0, "NVIDIA-A100-SXM4-40GB": 1.0, "Tesla-T4": 1.0}


def test_move_planned_when_faster_gpus_are_free() -> None:
    status, experts, pods = running_experts()
    beats = {f"expert-{k}": heartbeat("expert", 1, expert_index=k, step=3, total_steps=100) for k in (0, 1)}
    world = observe(
        run_with(status, placement={"gpu": {"maxPerExpert": 1}, "speeds": FAST}),
        experts=experts,
        pods=pods,
        busy={"a100-0": 3},
        snapshot=store(progress=beats, cluster_sizes=(100, 101)),
    )
    started = step(world)
    assert "MovePlanned" not in reasons(started), "the first check comes one interval after the experts run"
    assert started.memory.last_move_check == 1000.0
    soon = step(later(world, 30), started.memory)
    assert "MovePlanned" not in reasons(soon)
    decision = step(later(world, 60), started.memory)
    moves = {p.expert: p.status.move for p in decision.of(PatchExpertStatus)}
    assert set(moves) == {0, 1}
    assert all(m is not None and m.node == "h100-0" and m.at_step == 10 for m in moves.values())
    assert reasons(decision).count("MovePlanned") == 2
    assert decision.memory.last_move_check == 1060.0


def test_move_executed_at_its_checkpoint_then_restarted_on_the_planned_gpus() -> None:
    move = MoveStatus(node="h100-0", gpu_product="NVIDIA-H100-80GB-HBM3", gpus=1, micro_batch=16, grad_accum=1,
                      at_step=10, gain_seconds=900.0)  # fmt: skip
    status, experts, pods = running_experts(expert0={"move": move.model_dump(by_alias=True, mode="json")})
    stopping = step(
        observe(run_with(status), experts=experts, pods=pods, snapshot=store(checkpoints={"expert-0": _cp(10)}))
    )
    assert [d.name for d in stopping.of(DeletePod)] == ["r-expert-0-a1"]
    assert "Moving" in reasons(stopping)
    deleting = [pod("expert", 1, expert_index=0, deleting=True), *pods[1:]]
    moved = step(later(observe(run_with(stopping.status), experts=experts, pods=deleting), 2), stopping.memory)
    action = created(moved)["expert-0"]
    assert (action.node, action.manifest["metadata"]["name"]) == ("h100-0", "r-expert-0-a2")
    zero = decided(moved)[0]
    assert (zero.moves, zero.restarts, zero.last_failure, zero.move) == (1, 1, None, None)


def _cp(step_: int) -> Any:
    from atoll.api.status import CheckpointStatus

    ref = checkpoint_ref(step_)
    return CheckpointStatus(step=ref.step, time=ref.time, uri=ref.uri)


# --- the end, deletion, re-creation, restart ---------------------------------------------------


def test_done_when_the_last_done_marker_exists() -> None:
    status = DDMRunStatus.model_validate(
        {
            "phase": "Evaluating", "storeUri": "s3://atoll/runs/ns/r", "clusterSizes": [100, 101],
            "modelUri": "s3://atoll/runs/ns/r/model",
            "stages": {
                "partition": {"phase": "Succeeded", "attempt": 1}, "router": {"phase": "Succeeded", "attempt": 1},
                "assemble": {"phase": "Succeeded", "attempt": 1},
                "evaluate": {"phase": "Running", "attempt": 1, "pod": "r-evaluate-a1"},
            },
        }
    )  # fmt: skip
    experts = [expert(k, {"phase": "Succeeded", "attempt": 1}) for k in (0, 1)]
    finished = pod("evaluate", 1, "Succeeded", exit_code=0)
    waiting = step(observe(run_with(status), experts=experts, pods=(finished,)))
    assert waiting.status.phase == "Evaluating", "exit 0 alone is not done: the marker decides"
    done = step(observe(run_with(status), experts=experts, pods=(finished,), snapshot=store(done={"evaluate": True})))
    assert done.status.phase == "Succeeded"
    assert condition(done.status, "Ready") == ("True", "ModelReady")
    assert done.status.progress == "100%"
    assert "Succeeded" in reasons(done)
    assert not done.of(CreatePod)


def test_a_deleted_run_is_left_to_its_finalizer() -> None:
    status, experts, pods = running_experts()
    decision = step(observe(run_body(status_body(status), deleting=True), experts=experts, pods=pods[1:]))
    assert decision.actions == ()
    assert decision.events == ()


def test_a_recreated_run_never_adopts_the_old_runs_pods_and_experts() -> None:
    status, experts, pods = running_experts()
    del status
    old = [*pods, pod("partition", 1, "Succeeded", exit_code=0)]
    decision = step(
        observe(
            run_body(uid="new-uid"),
            experts=experts,
            pods=old,
            snapshot=store(claims={"partition": 1}),
        )
    )
    (partition,) = decision.of(CreatePod)
    assert partition.manifest["metadata"]["name"] == "r-partition-a2", "above the old run's claim"
    assert partition.manifest["metadata"]["ownerReferences"][0]["uid"] == "new-uid"
    assert decision.status.stages.partition.attempt == 2
    assert not decision.of(PatchExpertStatus), "the old run's DDMExperts are not this run's"
    assert not decision.of(DeletePod)


def test_a_restarted_operator_reads_its_state_back_and_writes_nothing() -> None:
    """Memory lost: the statuses in the API server give the same picture, so a tick on an
    unchanged world creates nothing and patches nothing."""
    status, experts, pods = running_experts()
    snapshot = store(cluster_sizes=(100, 101), claims={"expert-0": 1, "expert-1": 1, "router": 1})
    first = step(observe(run_with(status), experts=experts, pods=pods, snapshot=snapshot))
    patched = decided(first)
    views = [expert(k, patched.get(k, e.status).model_dump(by_alias=True, mode="json")) for k, e in enumerate(experts)]
    restarted = step(later(observe(run_with(first.status), experts=views, pods=pods, snapshot=snapshot), 5))
    assert restarted.actions == ()
    assert restarted.events == ()


def test_a_heartbeat_of_an_older_attempt_says_nothing() -> None:
    """The observer keeps only heartbeats of the attempt holding the claim; with none, a
    running attempt shows no step, and a done marker alone would say done."""
    status, experts, pods = running_experts(expert0={"step": 7, "totalSteps": 100})
    decision = step(
        observe(run_with(status), experts=experts, pods=pods, snapshot=store(claims={"expert-0": 2}, progress={}))
    )
    zero = next((p.status for p in decision.of(PatchExpertStatus) if p.expert == 0), None)
    assert zero is None or zero.phase == "Running"
    assert all(p.status.phase != "Succeeded" for p in decision.of(PatchExpertStatus))


# --- the GPU ledger and the decision -----------------------------------------------------------


def test_gpus_promised_to_a_pod_the_index_already_shows_count_once() -> None:
    """A pod the operator created a moment ago is in the ledger and, once the watch delivered
    it, in the index too: its GPUs count once (the tick that rebuilt its observation without
    the index's GPU holders counted them twice and saw the node full)."""
    status = training_status()
    ledger = GpuLedger()
    ledger.reserve("other/job", "h100-0", 7)
    holders = {"other/job": GpuHolder("h100-0", 7)}
    h100_only = [gpu_node("h100-0", "NVIDIA-H100-80GB-HBM3", 81559, 8)]
    observation = observe(
        run_with(status), experts=(expert(0), expert(1)), pods=(pod("router", 1, node="h100-0"),), nodes=h100_only
    )
    decision = decide_reserving(ledger, observation, lambda: holders, RunMemory(), SETTINGS)
    placed = {slug: a.node for slug, a in created(decision).items() if slug.startswith("expert-")}
    assert placed == {"expert-0": "h100-0"}, "the one free GPU is used (the other expert queues)"
    assert ledger.usage(holders) == {"h100-0": 8}


def test_the_gpu_holders_are_read_under_the_ledgers_lock() -> None:
    """A reservation is dropped once a copy of the index shows its pod; a run deciding later on
    an older copy (taken before its tick waited for the lock) would count that pod nowhere and
    promise its GPUs again. So the copy is taken under the lock, right before deciding."""
    ledger = GpuLedger()
    others: list[threading.Thread] = []
    blocked: list[bool] = []

    def holders() -> dict[str, GpuHolder]:
        other = threading.Thread(target=lambda: ledger.reserve("ns/other", "t4-0", 1))
        other.start()
        other.join(timeout=0.2)
        blocked.append(other.is_alive())  # another thread cannot reserve while the copy is read
        others.append(other)
        return {}

    decide_reserving(ledger, observe(), holders, RunMemory(), SETTINGS)
    others[0].join(timeout=5)
    assert blocked == [True]
    assert ledger.usage({})["t4-0"] == 1, "it reserved once the decision was made"


def test_a_tick_with_nothing_to_place_neither_copies_the_index_nor_waits_for_the_ledger() -> None:
    """Most ticks of a training run only watch its pods: they decide without the GPU usage, so
    they neither wait for the ledger's lock while another run places nor copy the index's GPU
    holders (a round trip to the busy event loop, under that lock, once per tick of every run)."""
    status, experts, pods = running_experts()
    observation = observe(run_with(status), experts=experts, pods=pods)
    ledger = GpuLedger()

    def holders() -> dict[str, GpuHolder]:
        raise AssertionError("the GPU holders were copied for a tick that places nothing")

    with ledger.deciding():  # another run is placing: this tick must not wait for it
        done: list[Decision] = []
        watcher = threading.Thread(
            target=lambda: done.append(decide_reserving(ledger, observation, holders, RunMemory(), SETTINGS))
        )
        watcher.start()
        watcher.join(timeout=5)
    assert done, "the tick waited for the ledger's lock"
    assert done[0] == decide_reserving(ledger, observation, dict, RunMemory(), SETTINGS)


def test_a_tick_that_places_decides_on_the_gpu_usage() -> None:
    """A fresh run places its partition: that decision reads the usage, so it is made again under
    the lock on the real one (here: the node it would take when all are free is full)."""
    t4s = [gpu_node(f"t4-{i}", "Tesla-T4", 15360, 1) for i in range(2)]
    free = decide_reserving(GpuLedger(), observe(nodes=t4s), dict, RunMemory(), SETTINGS)
    (first,) = {a.node for a in created(free).values()}
    copies: list[int] = []

    def holders() -> dict[str, GpuHolder]:
        copies.append(1)
        return {"ns/other": GpuHolder(str(first), 1)}

    ledger = GpuLedger()
    busy = decide_reserving(ledger, observe(nodes=t4s), holders, RunMemory(), SETTINGS)
    assert copies == [1]
    (other,) = {"t4-0", "t4-1"} - {first}
    assert {a.node for a in created(busy).values()} == {other}
    assert ledger.usage({}) == {other: 1}, "the partition's GPU is reserved"


def test_a_tick_that_places_plans_once(monkeypatch: Any) -> None:
    """The first try without the GPU usage stops where it first looks at the usage: the experts'
    placement is planned once per tick, on the real usage (planning them on an empty usage first,
    only to throw that plan away, doubled the CPU of every placing tick)."""
    from atoll.operator.reconcile import launch

    plans: list[int] = []
    real = launch.place_experts

    def counted(*args: Any, **kwargs: Any) -> Any:
        plans.append(1)
        return real(*args, **kwargs)

    observation = observe(run_with(training_status()), experts=(expert(0), expert(1)), pods=(pod("router", 1),))
    monkeypatch.setattr(launch, "place_experts", counted)
    decision = decide_reserving(GpuLedger(), observation, dict, RunMemory(), SETTINGS)
    assert {slug for slug in created(decision) if slug.startswith("expert-")} == {"expert-0", "expert-1"}
    assert plans == [1]


def test_a_tick_looks_at_the_pipeline_a_fixed_number_of_times_whatever_the_experts(monkeypatch: Any) -> None:
    """Whether a stage may start is read from the pipeline's phases once for all experts (they
    never wait for one another), not once per expert: a tick of K experts stays O(K)."""
    import importlib

    deciding = importlib.import_module("atoll.operator.reconcile.decide")  # the package exports decide()
    looks: list[int] = []
    real = deciding.stage_phases

    def counted(*args: Any, **kwargs: Any) -> Any:
        looks.append(1)
        return real(*args, **kwargs)

    status, experts, pods = running_experts()
    both = observe(run_with(status), experts=experts, pods=pods)
    one = observe(run_with(status), experts=experts[:1], pods=pods)
    monkeypatch.setattr(deciding, "stage_phases", counted)
    step(one)
    with_one = len(looks)
    step(both)
    assert len(looks) - with_one == with_one, "a second expert made the tick look at the pipeline more often"


def test_expert_statuses_are_patched_only_when_they_change() -> None:
    status, experts, pods = running_experts()
    beat = {"expert-0": heartbeat("expert", 1, expert_index=0, step=20, total_steps=100)}
    observation = observe(run_with(status), experts=experts, pods=pods, snapshot=store(progress=beat))
    first = step(observation)
    assert [p.expert for p in first.of(PatchExpertStatus)] == [0], "expert 0's heartbeat moved on, expert 1's did not"
    assert first.of(PatchExpertStatus)[0].status.step == 20
    # The same world a moment later (the watch still shows the old statuses): nothing to write.
    again = step(later(replace(observation, run=run_with(first.status)), 1), first.memory)
    assert again.actions == ()
    assert isinstance(again.memory.experts[1], DDMExpertStatus)


def two_experts_to_place() -> Any:
    """Training, the router running, two experts to place: both go to the A100 node (the
    other nodes' GPUs are busy)."""
    return observe(
        run_with(training_status()),
        experts=(expert(0), expert(1)),
        pods=(pod("router", 1),),
        busy={"h100-0": 8, "t4-0": 4},
        snapshot=store(cluster_sizes=(100, 101)),
    )


def expert_pods(phase: str, *, bound: bool) -> tuple[Any, ...]:
    """The two experts' attempt-1 pods on (or planned on) the A100 node, created at T0."""
    return tuple(
        pod("expert", 1, phase, expert_index=k, node="a100-0" if bound else None, planned_node="a100-0",
            created_at="2026-03-01T12:00:00Z")
        for k in (0, 1)
    )  # fmt: skip


def test_an_experts_pod_appearing_and_binding_writes_nothing_until_it_runs() -> None:
    # Writes at scale: created → seen Pending → bound → Running was 3 status patches per
    # expert, the middle one only swapping "created" for no message. Two are real changes,
    # and the first waits while the pod starts (up to PENDING_WRITTEN_AFTER).
    world = two_experts_to_place()
    first = step(world)
    assert {created(first)[f"expert-{k}"].node for k in (0, 1)} == {"a100-0"}
    assert not first.of(PatchExpertStatus), "the tick that creates the pods leaves their statuses to the next"
    assert {k: s.phase for k, s in decided(first).items()} == {0: "Pending", 1: "Pending"}

    decision = first
    writes = []
    ticks = (
        (1, "Pending", False),
        (2, "Pending", True),
        (6, "Pending", True),
        (7, "Pending", True),
        (8, "Running", True),
    )
    for seconds, phase, is_bound in ticks:
        pods = (pod("router", 1), *expert_pods(phase, bound=is_bound))
        decision = step(later(replace(world, run=run_with(decision.status)), seconds, pods=pods), decision.memory)
        writes.append({p.expert: p.status for p in decision.of(PatchExpertStatus)})
    seen, bound, waiting, still, running = writes
    assert seen == bound == {}, f"the pod starting for less than {PENDING_WRITTEN_AFTER:.0f} s: nothing written yet"
    assert {k: s.phase for k, s in waiting.items()} == {0: "Pending", 1: "Pending"}, "left unsent, written now"
    assert still == {}, "the pod bound Pending is no change of the status"
    assert {k: (s.phase, s.node, s.message) for k, s in running.items()} == {
        0: ("Running", "a100-0", None),
        1: ("Running", "a100-0", None),
    }
    # Its AttemptStarted Event named pod, node and GPU; the status now says it runs: no Event.
    assert not [e for e in decision.events if e.target["metadata"]["name"].startswith("r-expert-")]


def test_an_experts_pod_running_by_the_next_tick_costs_one_status_write() -> None:
    world = two_experts_to_place()
    first = step(world)
    assert not first.of(PatchExpertStatus)
    assert first.memory.experts_unsent == {0, 1}
    pods = expert_pods("Running", bound=True)
    then = step(later(replace(world, run=run_with(first.status)), 1, pods=(pod("router", 1), *pods)), first.memory)
    assert {p.expert: p.status.phase for p in then.of(PatchExpertStatus)} == {0: "Running", 1: "Running"}
    assert then.memory.experts_unsent == frozenset()
    quiet = step(later(replace(world, run=run_with(then.status)), 2, pods=(pod("router", 1), *pods)), then.memory)
    assert not quiet.of(PatchExpertStatus), "written once"


def test_a_status_left_unsent_is_written_even_when_the_next_tick_decides_it_unchanged() -> None:
    world = two_experts_to_place()
    first = step(world)
    pods = expert_pods("Pending", bound=False)
    soon = step(later(replace(world, run=run_with(first.status)), 1, pods=(pod("router", 1), *pods)), first.memory)
    assert not soon.of(PatchExpertStatus), "its pod is starting"
    assert soon.memory.experts_unsent == {0, 1}
    then = step(later(replace(world, run=run_with(soon.status)), 6, pods=(pod("router", 1), *pods)), soon.memory)
    assert {k: s.phase for k, s in decided(then).items()} == {0: "Pending", 1: "Pending"}
    assert {p.expert for p in then.of(PatchExpertStatus)} == {0, 1}
    # A write that failed is sent again (the executor drops it from the memory).
    failed = Applied(failed_experts={1})
    again = step(
        later(replace(world, run=run_with(then.status)), 7, pods=(pod("router", 1), *pods)),
        remember(soon.memory, then, failed),
    )
    assert {p.expert for p in again.of(PatchExpertStatus)} == {1}


def test_an_attempt_started_is_one_event_and_one_waiting_for_a_place_another() -> None:
    world = observe(
        run_with(training_status()),
        experts=(expert(0), expert(1)),
        pods=(pod("router", 1),),
        busy={"h100-0": 8, "t4-0": 4},
        snapshot=store(cluster_sizes=(100, 101)),
    )
    started = step(world)
    events = [(e.target["metadata"]["name"], e.reason) for e in started.events]
    announced = [(c.started.target["metadata"]["name"], c.started.reason) for c in started.of(CreatePod) if c.started]
    assert announced == [("r-expert-0", "AttemptStarted"), ("r-expert-1", "AttemptStarted")]
    assert not [e for e in events if e[0].startswith("r-expert-")], "the pod's AttemptStarted Event tells it"
    # No GPU free anywhere: Pending without a pod is told by a Scheduling Event of its own.
    waiting = step(replace(world, busy_gpus={"h100-0": 8, "a100-0": 8, "t4-0": 4}))
    assert not waiting.of(CreatePod)
    assert [e.reason for e in waiting.events if e.target["metadata"]["name"] == "r-expert-0"] == ["Scheduling"]
