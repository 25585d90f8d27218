"""The operator's door to placement: short stages on the fleet's usable nodes, experts through
the makespan planner, identical nodes planned over once, the GPU ledger."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

from atoll.api.spec import DDMRunSpec, PlacementSpec
from atoll.operator.ledger import GpuHolder, GpuLedger
from atoll.operator.placement import Assignment
from atoll.operator.planning import FleetState, PlacementJob, distinct_nodes, place_experts, plan_stages, stage_nodes
from atoll.operator.views import NodeView

NOW = datetime(2026, 1, 1, 12, tzinfo=UTC)
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}


def node(name: str, product: str, memory_mib: int, gpus: int, **extra: object) -> NodeView:
    labels = {"nvidia.com/gpu.product": product, "nvidia.com/gpu.memory": str(memory_mib)}
    return NodeView(name=name, labels=labels, gpus=gpus, **extra)  # type: ignore[arg-type]


NODES = [
    node("t4-0", "Tesla-T4", 15360, 4, taints=(GPU_TAINT,)),
    node("a100-0", "NVIDIA-A100-SXM4-40GB", 40960, 8),
    node("a100-1", "NVIDIA-A100-SXM4-40GB", 40960, 8, unschedulable=True),
    node("h100-0", "NVIDIA-H100-80GB-HBM3", 81559, 8, annotations={"atoll.dev/gpu-health": "xid 79"}),
    node("cpu-0", "", 0, 0),
]


def job(key: str, gpus: int = 1, micro: int | None = None) -> PlacementJob:
    return PlacementJob(key=key, global_batch=64, micro_batch=micro, gpus=gpus)


def names(nodes: list[object]) -> list[str]:
    return [n.name for n in nodes]  # type: ignore[attr-defined]


def test_only_schedulable_healthy_nodes_with_enough_memory() -> None:
    placement = PlacementSpec.model_validate({"gpu": {"minMemoryGiB": 16}})
    assert names(stage_nodes(NODES, placement, NOW)) == ["a100-0"]
    assert names(stage_nodes(NODES, PlacementSpec(), NOW)) == ["a100-0", "t4-0"]
    only_t4 = PlacementSpec.model_validate({"gpu": {"products": ["Tesla-T4"]}})
    assert names(stage_nodes(NODES, only_t4, NOW)) == ["t4-0"]


def test_short_stages_use_the_fleets_rule_of_a_usable_node() -> None:
    """Taints the run does not tolerate and stale agent heartbeats exclude a node for the
    short stages exactly as for the experts (one definition: atoll.operator.placement.fleet)."""
    stale = (NOW - timedelta(minutes=30)).isoformat()
    fresh = (NOW - timedelta(seconds=5)).isoformat()
    fleet = [
        node("tainted", "NVIDIA-L4", 23034, 4, taints=({"key": "dedicated", "value": "ml", "effect": "NoSchedule"},)),
        node("stale", "NVIDIA-L4", 23034, 4, annotations={"atoll.dev/gpu-heartbeat": stale}),
        node("fresh", "NVIDIA-L4", 23034, 1, annotations={"atoll.dev/gpu-heartbeat": fresh}),
    ]
    assert names(stage_nodes(fleet, PlacementSpec(), NOW)) == ["fresh"]
    plan = plan_stages([job("router")], fleet, {}, PlacementSpec(), NOW)
    assert plan["router"].node == "fresh", "the node with the most free GPUs, but only among usable ones"
    tolerant = PlacementSpec.model_validate(
        {"tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}]}
    )
    assert names(stage_nodes(fleet, tolerant, NOW)) == ["fresh", "tainted"]


def test_plan_spreads_by_free_gpus_and_is_deterministic() -> None:
    jobs = [job(f"stage-{k}") for k in range(4)]
    plan = plan_stages(jobs, NODES, {"a100-0": 6}, PlacementSpec(), NOW)
    # free GPUs: t4 4, a100 2 → t4, t4, then a tie the larger node wins, then t4 again
    assert [plan[j.key].node for j in jobs] == ["t4-0", "t4-0", "a100-0", "t4-0"]
    assert plan == plan_stages(jobs, list(reversed(NODES)), {"a100-0": 6}, PlacementSpec(), NOW)


def test_busy_fleet_still_gets_a_queue_and_no_fleet_gets_nothing() -> None:
    plan = plan_stages([job("router")], NODES, {"a100-0": 8, "t4-0": 4}, PlacementSpec(), NOW)
    assert plan["router"].node == "a100-0"
    impossible = PlacementSpec.model_validate({"gpu": {"minMemoryGiB": 100}})
    assert plan_stages([job("router")], NODES, {}, impossible, NOW) == {}


def test_batch_split_keeps_the_global_batch() -> None:
    plan = plan_stages([job("router", micro=16), job("assemble", gpus=0)], NODES, {}, PlacementSpec(), NOW)
    assert (plan["router"].micro_batch, plan["router"].grad_accum, plan["router"].gpus) == (16, 4, 1)
    assert plan["assemble"].gpus == 0
    assert plan["assemble"].micro_batch is None


def fleet_state(spec: DDMRunSpec, nodes: list[NodeView], **changes: object) -> FleetState:
    values: dict[str, object] = {
        "spec": spec,
        "nodes": nodes,
        "running": {},
        "progress": {},
        "cluster_sizes": [10, 10, 10],
        "busy_gpus": {},
        "now": NOW,
    }
    values.update(changes)
    return FleetState(**values)  # type: ignore[arg-type]


def test_experts_go_through_the_makespan_planner() -> None:
    spec = DDMRunSpec.model_validate(
        {"dataset": {"uri": "builtin://digits"}, "partition": {"clusters": 3}, "expert": {"preset": "tiny"}}
    )
    nodes = [node("t4-0", "Tesla-T4", 15360, 4), node("h100-0", "NVIDIA-H100-80GB-HBM3", 81559, 8)]
    placed = place_experts(fleet_state(spec, nodes), [0, 1, 2])
    # The plan may queue an expert behind another on a much faster GPU: it starts later, when free.
    queued = {0, 1, 2} - set(placed.assignments)
    assert placed.assignments
    assert all(f"expert {k} queued" in (placed.waiting or "") for k in queued)
    assert all(a.node in {"t4-0", "h100-0"} for a in placed.assignments.values())
    for a in placed.assignments.values():
        assert a.micro_batch is not None
        assert a.grad_accum is not None
        assert a.micro_batch * a.grad_accum * a.gpus == 64  # the tiny preset's global batch, kept exactly
    assert place_experts(fleet_state(spec, nodes), [0, 1, 2]) == placed
    # A running expert stays where it is; only the restarted one is placed.
    running = {0: Assignment(expert=0, node="t4-0", gpu_product="Tesla-T4", gpus=1, micro_batch=64, grad_accum=1)}
    one = place_experts(fleet_state(spec, nodes, running=running, busy_gpus={"t4-0": 1}), [1])
    assert set(one.assignments) == {1}
    big = spec.model_copy(update={"placement": PlacementSpec.model_validate({"gpu": {"minMemoryGiB": 200}})})
    none = place_experts(fleet_state(big, nodes), [0])
    assert not none.assignments
    assert none.error is not None
    assert "minMemoryGiB" in none.error


def test_experts_start_on_a_declared_pool_up_to_its_limit_and_pods_waiting_for_it_hold_its_gpus() -> None:
    spec = DDMRunSpec.model_validate(
        {
            "dataset": {"uri": "builtin://digits"},
            "partition": {"clusters": 3},
            "expert": {"preset": "tiny"},
            "placement": {
                "pools": [
                    {"name": "t4", "product": "Tesla-T4", "maxGpus": 2, "gpusPerNode": 1, "provisioningSeconds": 0}
                ]
            },
        }
    )
    nodes = [node("t4-0", "Tesla-T4", 15360, 1)]
    waiting = "t4:Tesla-T4"
    placed = place_experts(fleet_state(spec, nodes), [0, 1, 2])
    assert sorted(a.node for a in placed.assignments.values()) == ["t4-0", waiting, waiting]
    assert {a.pool for a in placed.assignments.values() if a.node == waiting} == {"t4"}
    # Expert 1's pod waits for the pool's node: its GPU is held at the placeholder; one is left for expert 2.
    on_pool = Assignment(expert=1, node=waiting, gpu_product="Tesla-T4", gpus=1, micro_batch=64, grad_accum=1)
    on_fleet = Assignment(expert=0, node="t4-0", gpu_product="Tesla-T4", gpus=1, micro_batch=64, grad_accum=1)
    running = {0: on_fleet, 1: on_pool}
    state = fleet_state(spec, nodes, running=running, busy_gpus={"t4-0": 1, waiting: 1})
    assert [(a.node, a.pool) for a in place_experts(state, [2]).assignments.values()] == [(waiting, "t4")]
    # Another run's pod waits for the pool's last GPU: expert 2 waits, the pool's limit holds.
    full = place_experts(fleet_state(spec, nodes, running=running, busy_gpus={"t4-0": 1, waiting: 2}), [2])
    assert full.assignments == {}
    assert full.waiting is not None
    assert "expert 2 queued" in full.waiting
    # Once a node of the pool exists it counts against the limit (and is planned over as a node).
    labels = {"nvidia.com/gpu.product": "Tesla-T4", "nvidia.com/gpu.memory": "15360", "karpenter.sh/nodepool": "t4"}
    grown = [*nodes, NodeView(name="t4-new", labels=labels, gpus=1)]
    again = place_experts(fleet_state(spec, grown, running={0: on_fleet}, busy_gpus={"t4-0": 1}), [1, 2])
    assert sorted(a.node for a in again.assignments.values()) == ["t4-new", waiting]


def test_identical_nodes_are_planned_over_at_most_once_per_expert() -> None:
    pool = [node(f"l4-{i}", "NVIDIA-L4", 23034, 4) for i in range(50)]
    busy = {"l4-7": 2}
    chosen = distinct_nodes([*pool, *NODES], keep={"l4-40"}, experts=3, max_gpus=8, busy_gpus=busy)
    chosen_names = [n.name for n in chosen]
    assert "l4-40" in chosen_names  # running experts' nodes always stay
    assert "l4-7" in chosen_names  # a node with other free GPUs is another kind
    assert len([n for n in chosen_names if n.startswith("l4-")]) == 5  # 3 of the idle kind + l4-7 + l4-40
    # One GPU per expert: a 4-GPU node hosts 4 experts at once, so 10 experts need 3 such nodes.
    one_each = distinct_nodes(pool, keep=(), experts=10, max_gpus=1, busy_gpus={})
    assert len(one_each) == 3
    assert {"t4-0", "a100-0", "a100-1", "h100-0", "cpu-0"} <= set(chosen_names)


def test_the_ledger_counts_promised_gpus_until_the_watch_shows_the_pod() -> None:
    now = [0.0]
    ledger = GpuLedger(ttl_seconds=60, clock=lambda: now[0])
    ledger.reserve("ns/r-expert-0-a1", "h100-0", 2)
    ledger.reserve("ns/r-expert-1-a1", "h100-0", 1)
    assert ledger.usage({"other/pod": GpuHolder("h100-0", 1)}) == {"h100-0": 4}
    # Once the watch shows a pod its count comes from the index, not from the ledger.
    shown = {"ns/r-expert-0-a1": GpuHolder("h100-0", 2), "other/pod": GpuHolder("h100-0", 1)}
    assert ledger.usage(shown) == {"h100-0": 4}
    ledger.release("ns/r-expert-1-a1")
    assert ledger.usage({}) == {}
    ledger.reserve("ns/r-router-a1", "t4-0", 1)
    now[0] = 61
    assert ledger.usage({}) == {}, "a reservation whose pod never appeared expires"


def test_the_ledger_is_safe_across_threads() -> None:
    """Reserving, releasing and reading from many threads at once never breaks the ledger
    (every method holds the same lock) and loses no reservation."""
    ledger = GpuLedger(ttl_seconds=600)
    errors: list[BaseException] = []

    def churn(worker: int) -> None:
        try:
            for i in range(2000):
                ledger.reserve(f"ns/w{worker}-{i}", f"node-{i % 7}", 1)
                ledger.usage({f"ns/w{worker}-{i - 1}": GpuHolder(f"node-{(i - 1) % 7}", 1)})
                if i % 3 == 0:
                    ledger.release(f"ns/w{worker}-{i}")
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=churn, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    # What is left: every pod neither released nor shown by "the index" (each worker's last one).
    assert sum(ledger.usage({}).values()) == 8
