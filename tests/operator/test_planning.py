"""The simple placement behind the one `plan_stages` door."""

from __future__ import annotations

from atoll.api.spec import PlacementSpec
from atoll.operator.observe import NodeView
from atoll.operator.planning import PlacementJob, plan_stages, usable_nodes


def node(name: str, product: str, memory_mib: int, gpus: int, **extra: object) -> NodeView:
    labels = {"nvidia.com/gpu.product": product, "nvidia.com/gpu.memory": str(memory_mib)}
    return NodeView(name=name, labels=labels, gpus=gpus, **extra)  # type: ignore[arg-type]


NODES = [
    node("t4-0", "Tesla-T4", 15360, 4),
    node("a100-0", "NVIDIA-A100-SXM4-40GB", 40960, 8),
    node("a100-1", "NVIDIA-A100-SXM4-40GB", 40960, 8, unschedulable=True),
    node("h100-0", "NVIDIA-H100-80GB-HBM3", 81559, 8, annotations={"atoll.dev/gpu-health": "xid 79"}),
    node("cpu-0", "", 0, 0),
]


def job(key: str, gpus: int = 1, micro: int | None = None) -> PlacementJob:
    return PlacementJob(key=key, preset="tiny", samples=64_000, global_batch=64, micro_batch=micro, gpus=gpus)


def test_only_schedulable_healthy_nodes_with_enough_memory() -> None:
    placement = PlacementSpec.model_validate({"gpu": {"minMemoryGiB": 16}})
    assert [n.name for n in usable_nodes(NODES, placement)] == ["a100-0"]
    assert [n.name for n in usable_nodes(NODES, PlacementSpec())] == ["a100-0", "t4-0"]
    only_t4 = PlacementSpec.model_validate({"gpu": {"products": ["Tesla-T4"]}})
    assert [n.name for n in usable_nodes(NODES, only_t4)] == ["t4-0"]


def test_plan_spreads_by_free_gpus_and_is_deterministic() -> None:
    jobs = [job(f"expert-{k}") for k in range(4)]
    plan = plan_stages(jobs, NODES, {"a100-0": 6}, PlacementSpec())
    # free GPUs: t4 4, a100 2 → t4, t4, then a tie the larger node wins, then t4 again
    assert [plan[j.key].node for j in jobs] == ["t4-0", "t4-0", "a100-0", "t4-0"]
    assert plan == plan_stages(jobs, list(reversed(NODES)), {"a100-0": 6}, PlacementSpec())


def test_busy_fleet_still_gets_a_queue_and_no_fleet_gets_nothing() -> None:
    plan = plan_stages([job("router")], NODES, {"a100-0": 8, "t4-0": 4}, PlacementSpec())
    assert plan["router"].node == "a100-0"
    impossible = PlacementSpec.model_validate({"gpu": {"minMemoryGiB": 100}})
    assert plan_stages([job("router")], NODES, {}, impossible) == {}


def test_batch_split_keeps_the_global_batch() -> None:
    plan = plan_stages([job("expert-0", micro=16), job("assemble", gpus=0)], NODES, {}, PlacementSpec())
    assert (plan["expert-0"].micro_batch, plan["expert-0"].grad_accum, plan["expert-0"].gpus) == (16, 4, 1)
    assert plan["assemble"].gpus == 0
    assert plan["assemble"].micro_batch is None


def test_experts_go_through_the_makespan_planner_pinned_to_their_node() -> None:
    from datetime import UTC, datetime

    from atoll.api.spec import DDMRunSpec
    from atoll.operator.planning import Where, place_experts

    spec = DDMRunSpec.model_validate(
        {"dataset": {"uri": "builtin://digits"}, "partition": {"clusters": 3}, "expert": {"preset": "tiny"}}
    )
    nodes = [node("t4-0", "Tesla-T4", 15360, 4), node("h100-0", "NVIDIA-H100-80GB-HBM3", 81559, 8)]
    now = datetime(2026, 1, 1, tzinfo=UTC)
    placed = place_experts(
        spec, nodes, starting=[0, 1, 2], running={}, progress={}, cluster_sizes=[10, 10, 10], busy_gpus={}, now=now
    )
    # The plan may queue an expert behind another on a much faster GPU: it starts later, when free.
    queued = {0, 1, 2} - set(placed.assignments)
    assert placed.assignments
    assert all(f"expert {k} queued" in (placed.waiting or "") for k in queued)
    assert all(a.pin and a.node in {"t4-0", "h100-0"} for a in placed.assignments.values())
    for a in placed.assignments.values():
        assert a.micro_batch is not None
        assert a.grad_accum is not None
        assert a.micro_batch * a.grad_accum * a.gpus == 64  # the tiny preset's global batch, kept exactly
    again = place_experts(
        spec, nodes, starting=[0, 1, 2], running={}, progress={}, cluster_sizes=[10, 10, 10], busy_gpus={}, now=now
    )
    assert again == placed
    # A running expert stays where it is; only the restarted one is placed.
    running = {0: Where(node="t4-0", gpus=1, micro_batch=64, grad_accum=1)}
    one = place_experts(
        spec, nodes, starting=[1], running=running, progress={}, cluster_sizes=[10, 10, 10], busy_gpus={"t4-0": 1},
        now=now,
    )  # fmt: skip
    assert set(one.assignments) == {1}
    none = place_experts(
        spec.model_copy(update={"placement": PlacementSpec.model_validate({"gpu": {"minMemoryGiB": 200}})}),
        nodes, starting=[0], running={}, progress={}, cluster_sizes=[10, 10, 10], busy_gpus={}, now=now,
    )  # fmt: skip
    assert not none.assignments
    assert none.error is not None
    assert "minMemoryGiB" in none.error


def test_identical_nodes_are_planned_over_at_most_once_per_expert() -> None:
    from atoll.operator.planning import distinct_nodes

    pool = [node(f"l4-{i}", "NVIDIA-L4", 23034, 4) for i in range(50)]
    busy = {"l4-7": 2}
    chosen = distinct_nodes([*pool, *NODES], keep={"l4-40"}, experts=3, max_gpus=8, busy_gpus=busy)
    names = [n.name for n in chosen]
    assert "l4-40" in names  # running experts' nodes always stay
    assert "l4-7" in names  # a node with other free GPUs is another kind
    assert len([n for n in names if n.startswith("l4-")]) == 5  # 3 of the idle kind + l4-7 + l4-40
    # One GPU per expert: a 4-GPU node hosts 4 experts at once, so 10 experts need 3 such nodes.
    one_each = distinct_nodes(pool, keep=(), experts=10, max_gpus=1, busy_gpus={})
    assert len(one_each) == 3
    assert {"t4-0", "a100-0", "a100-1", "h100-0", "cpu-0"} <= set(names)


def test_the_ledger_counts_promised_gpus_until_the_watch_shows_the_pod() -> None:
    from atoll.operator.ledger import GpuLedger

    now = [0.0]
    ledger = GpuLedger(ttl_seconds=60, clock=lambda: now[0])
    ledger.reserve("ns/r-expert-0-a1", "h100-0", 2)
    ledger.reserve("ns/r-expert-1-a1", "h100-0", 1)
    assert ledger.busy({"h100-0": 1}, {"other/pod"}) == {"h100-0": 4}
    # Once the watch shows a pod its count comes from the index, not from the ledger.
    assert ledger.busy({"h100-0": 3}, {"ns/r-expert-0-a1"}) == {"h100-0": 4}
    ledger.release("ns/r-expert-1-a1")
    assert ledger.busy({}, ()) == {}
    ledger.reserve("ns/r-router-a1", "t4-0", 1)
    now[0] = 61
    assert ledger.busy({}, ()) == {}, "a reservation whose pod never appeared expires"
