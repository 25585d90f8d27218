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
