"""The planner on hand-made fleets: choices a person can check, errors, and the plan's JSON shape."""

from __future__ import annotations

import pytest

from atoll.api import DDMRunSpec
from atoll.operator.placement import PlacementError, experts_of, plan_run
from atoll.operator.placement.problem import START_SECONDS
from tests.placement.fleets import NOW, PRODUCTS, node

H100, A100_40, L4, RTX4090, T4 = PRODUCTS[0], PRODUCTS[3], PRODUCTS[5], PRODUCTS[6], PRODUCTS[8]


def run(preset: str = "dit-b/2", clusters: int = 4, **placement: object) -> DDMRunSpec:
    return DDMRunSpec.model_validate(
        {
            "dataset": {"uri": "builtin://shapes", "resolution": 256, "vae": "sd-vae-ft-mse"},
            "weights": {"source": "hub"},
            "partition": {"clusters": clusters},
            "expert": {"preset": preset, "steps": 10_000, "globalBatchSize": 256},
            "placement": placement,
        }
    )


def test_experts_go_to_the_fastest_gpus_not_the_most_numerous() -> None:
    fleet = [node("h100", H100, 8)] + [node(f"t4-{i}", T4, 4) for i in range(6)]
    result = plan_run(run(clusters=4), fleet, now=NOW)
    assert {a.node for a in result.assignments} == {"h100"}
    assert sum(a.gpus for a in result.assignments if a.start_seconds == 0) <= 8
    assert result.proven_optimal  # 4 experts: exact search


def test_a_lone_expert_takes_every_gpu_of_the_best_node() -> None:
    result = plan_run(run(clusters=1), [node("h100", H100, 8), node("l4", L4, 4)], now=NOW)
    (only,) = result.assignments
    assert (only.node, only.gpus, only.micro_batch * only.grad_accum * only.gpus) == ("h100", 8, 256)
    # the bound is training time alone; the plan adds the start of the expert
    assert result.makespan_seconds == pytest.approx(result.lower_bound_seconds + START_SECONDS)


def test_scarce_gpus_queue_experts_on_a_node() -> None:
    result = plan_run(run(clusters=3), [node("l4", L4, 1)], now=NOW)
    starts = sorted(a.start_seconds for a in result.assignments)
    finishes = sorted(a.predicted_seconds for a in result.assignments)
    assert starts[0] == 0.0
    assert starts[1:] == pytest.approx(finishes[:2])  # one after the other
    assert result.makespan_seconds == pytest.approx(3 * finishes[0])


def test_max_per_expert_and_gpus_in_use_by_other_pods() -> None:
    spec = run(clusters=2, gpu={"maxPerExpert": 2})
    result = plan_run(spec, [node("h100", H100, 8)], used_gpus={"h100": 5}, now=NOW)
    assert all(a.gpus <= 2 for a in result.assignments)
    assert sum(a.gpus for a in result.assignments if a.start_seconds == 0) <= 3


def test_steps_policy_proportional_gives_work_in_proportion_to_cluster_sizes() -> None:
    spec = run(clusters=3)
    spec.expert.steps_policy = "proportional"
    work = [w.samples for w in experts_of(spec, [600, 300, 100])]
    assert work == [18_000 * 256, 9_000 * 256, 3_000 * 256]  # steps × K × share × batch
    assert sum(work) == 3 * 10_000 * 256
    equal = [w.samples for w in experts_of(run(clusters=3), [600, 300, 100])]
    assert equal == [10_000 * 256] * 3
    with pytest.raises(PlacementError, match=r"2 cluster sizes given for partition\.clusters = 3"):
        experts_of(spec, [1, 2])


def test_memory_need_rules_out_small_gpus() -> None:
    small = ("Tiny-GPU-8GB", 8192, 8)
    fleet = [node("small", small, 8), node("l4", L4, 1)]
    result = plan_run(run("dit-xl/2", clusters=2), fleet, now=NOW)
    assert {a.node for a in result.assignments} == {"l4"}
    (too_small,) = [e for e in result.excluded if e.node == "small"]
    assert too_small.kind == "memory"
    assert too_small.reason.startswith("8.0 GiB GPUs < ")
    assert "dit-xl/2 expert needs at micro-batch 1" in too_small.reason


def test_no_usable_node_fails_with_every_reason() -> None:
    fleet = [node("a", H100, 8, "cordoned"), node("b", L4, 4, "unhealthy"), node("c", T4, 4)]
    with pytest.raises(PlacementError) as error:
        plan_run(run(clusters=2, gpu={"minMemoryGiB": 20}), fleet, now=NOW)
    message = str(error.value)
    assert "expert 0 (dit-b/2, global batch 256) fits on no usable GPU node" in message
    assert "a: cordoned (spec.unschedulable)" in message
    assert "b: GPU unhealthy: gpu 0: 2 uncorrected ECC errors" in message
    assert "c: 15.0 GiB GPUs < placement.gpu.minMemoryGiB 20" in message
    with pytest.raises(PlacementError, match="the node list is empty"):
        plan_run(run(), [], now=NOW)


def test_plan_json_has_exactly_the_documented_shape() -> None:
    result = plan_run(run(clusters=2), [node("h100", H100, 8), node("a100", A100_40, 8)], now=NOW)
    document = result.to_json()
    assert list(document) == ["assignments", "makespanSeconds", "lowerBoundSeconds", "gpuHours", "cost", "speeds"]
    assert list(document["assignments"][0]) == [
        "expert",
        "node",
        "gpuProduct",
        "gpus",
        "microBatch",
        "gradAccum",
        "samples",
        "startSeconds",
        "predictedSeconds",
    ]
    assert set(document["speeds"]) == {"NVIDIA-H100-80GB-HBM3", "NVIDIA-A100-SXM4-40GB"}
    assert document["makespanSeconds"] == round(result.makespan_seconds, 1)


def test_next_to_start_follows_the_planned_order_per_node() -> None:
    result = plan_run(run(clusters=3), [node("l4", L4, 1)], now=NOW)
    order = [a.expert for a in sorted(result.assignments, key=lambda a: a.start_seconds)]
    assert [a.expert for a in result.next_to_start(started=set(), free_gpus={"l4": 1})] == order[:1]
    assert result.next_to_start(started={order[0]}, free_gpus={"l4": 0}) == []
    assert [a.expert for a in result.next_to_start(started={order[0]}, free_gpus={"l4": 1})] == order[1:2]


def test_identical_nodes_beyond_the_experts_change_no_plan_and_still_count_in_the_bound() -> None:
    spec = run(clusters=3)
    tail = [node(f"t4-{i:02d}", T4, 1) for i in range(30)]
    many = plan_run(spec, [node("h100", H100, 8), *tail], now=NOW)
    few = plan_run(spec, [node("h100", H100, 8), *tail[:3]], now=NOW)
    assert many.makespan_seconds == pytest.approx(few.makespan_seconds)
    assert [a.node for a in many.assignments] == [a.node for a in few.assignments]
    # the lower bound: all samples over the speed of every usable GPU (all 30 T4s count)
    speed = 8 * many.speeds["NVIDIA-H100-80GB-HBM3"] + 30 * many.speeds["Tesla-T4"]
    assert many.lower_bound_seconds == pytest.approx(3 * 10_000 * 256 / speed)
