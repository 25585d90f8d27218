"""Host CPU and memory in the fleet view and the plan: a node offers only the GPUs whose expert
pods its free CPU and memory hold (sized by the pod builder itself), and a node that cannot
hold one such pod is left out with the reason."""

from __future__ import annotations

from typing import Any

from atoll.api import DDMRunSpec
from atoll.operator.placement import Assignment, plan_run, read_fleet, replan
from atoll.operator.placement.capacity import GIB, Requests, expert_pod_size, pod_requests
from atoll.operator.pod_resources import pod_resources
from atoll.operator.views import NodeView
from atoll.stages import StageJob
from tests.placement.fleets import NOW, PRODUCTS, node

H100 = PRODUCTS[0]


def run(clusters: int = 2, **placement: Any) -> DDMRunSpec:
    return DDMRunSpec.model_validate(
        {
            "dataset": {"uri": "builtin://digits", "resolution": 8},
            "partition": {"clusters": clusters},
            "expert": {"preset": "tiny", "steps": 100, "globalBatchSize": 8},
            "placement": placement,
        }
    )


def h100(name: str, cpu: str = "64", memory: str = "512Gi", gpus: int = 8) -> dict[str, Any]:
    found = node(name, H100, gpus)
    found["status"]["allocatable"].update(cpu=cpu, memory=memory)
    return found


def test_cpu_for_two_pods_caps_an_eight_gpu_node_at_two_gpus() -> None:
    spec = run(cpuPerGpu=4)  # an expert pod asks 4 cores per GPU
    size = expert_pod_size(spec)
    used = {"a": Requests(cpu_millis=56_000)}  # other pods hold 56 of 64 cores: 8 left, two pods' worth
    (gpu,) = read_fleet([h100("a")], now=NOW, pod_size=size, used_requests=used).nodes
    assert (gpu.gpus, gpu.free_gpus) == (8, 2)
    (small,) = read_fleet([h100("a", cpu="9")], now=NOW, pod_size=size).nodes
    assert small.free_gpus == 2, "9 allocatable cores hold two 4-core pods, not three"
    (free,) = read_fleet([h100("a")], now=NOW, pod_size=size).nodes
    assert free.free_gpus == 8, "64 cores hold all eight"


def test_memory_caps_the_gpus_likewise() -> None:
    spec = run(memoryPerGpuGiB=64)
    used = {"a": Requests(memory_bytes=400 * GIB)}  # 112 GiB of 512 left: one 64 GiB pod
    (gpu,) = read_fleet([h100("a")], now=NOW, pod_size=expert_pod_size(spec), used_requests=used).nodes
    assert gpu.free_gpus == 1


def test_a_node_that_cannot_hold_one_expert_pod_is_excluded_with_the_reason() -> None:
    size = expert_pod_size(run(cpuPerGpu=4, memoryPerGpuGiB=64))
    fleet = read_fleet(
        [h100("cpu-full"), h100("memory-full"), h100("roomy")],
        now=NOW,
        pod_size=size,
        used_requests={"cpu-full": Requests(62_000, 0), "memory-full": Requests(0, 500 * GIB)},
    )
    assert [n.name for n in fleet.nodes] == ["roomy"]
    cpu, memory = fleet.exclusion("cpu-full"), fleet.exclusion("memory-full")
    assert cpu is not None
    assert memory is not None
    assert cpu.kind == "cpu"
    assert cpu.reason == (
        "CPU for 0 GPU(s) of expert pods: 2 cores free (allocatable 64 cores, other pods request 62 cores),"
        " an expert pod requests 4 cores per GPU"
    )
    assert memory.kind == "host-memory"
    assert "host memory for 0 GPU(s) of expert pods: 12.0 GiB free" in memory.reason
    unreadable = h100("bad", cpu="lots")
    assert read_fleet([unreadable], now=NOW, pod_size=size).excluded[0].reason == (
        "status.allocatable.cpu is not a quantity: 'lots'"
    )


def test_the_plan_leaves_a_node_whose_cpu_other_pods_hold() -> None:
    """Two equal nodes; the first by name is the planner's pick until other pods hold its CPU."""
    nodes = [h100("h100-a"), h100("h100-b")]
    spec = run(clusters=2, gpu={"maxPerExpert": 1})
    assert {a.node for a in plan_run(spec, nodes, now=NOW).assignments} == {"h100-a"}
    held = {"h100-a": Requests(cpu_millis=64_000)}
    result = plan_run(spec, nodes, used_requests=held, now=NOW)
    assert {a.node for a in result.assignments} == {"h100-b"}
    assert [(e.node, e.kind) for e in result.excluded] == [("h100-a", "cpu")]


def test_nodes_that_report_no_cpu_or_memory_are_not_capped() -> None:
    bare = node("a", H100, 8)
    del bare["status"]["allocatable"]["cpu"], bare["status"]["capacity"]["cpu"]
    (gpu,) = read_fleet([bare], now=NOW, pod_size=expert_pod_size(run(cpuPerGpu=100))).nodes
    assert gpu.free_gpus == 8


def running_on(name: str, gpus: int) -> Assignment:
    return Assignment(expert=0, node=name, gpu_product=H100[0], gpus=gpus, micro_batch=4, grad_accum=1)


def test_a_running_experts_gpus_count_against_its_nodes_cpu() -> None:
    """The node's room holds the running expert's pod and no more: the other expert goes to a
    slower node, or queues behind it, but never starts beside it."""
    spec = run(clusters=2, cpuPerGpu=32, gpu={"maxPerExpert": 1})
    running = {0: running_on("h100-a", 2)}  # its pod asks 64 cores: all of h100-a's
    plan = replan(spec, [h100("h100-a"), node("t4", PRODUCTS[8], 4)], progress={}, running=running, now=NOW)
    zero, one = plan.assignment(0), plan.assignment(1)
    assert zero is not None
    assert one is not None
    assert zero.node == "h100-a"
    assert one.node == "t4" or one.start_seconds >= zero.predicted_seconds, one


def test_a_running_expert_stays_on_a_node_other_pods_filled() -> None:
    """Requests never evict a bound pod: a running expert is not moved off a node whose CPU or
    memory other pods now hold."""
    spec = run(clusters=1)
    for full in (Requests(cpu_millis=64_000), Requests(memory_bytes=512 * GIB)):
        plan = replan(
            spec, [h100("h100-a"), h100("h100-b")], progress={}, running={0: running_on("h100-a", 1)},
            used_requests={"h100-a": full}, now=NOW,
        )  # fmt: skip
        (kept,) = plan.assignments
        assert (kept.node, kept.start_seconds) == ("h100-a", 0.0)


def test_the_expert_pod_size_is_the_pod_builders() -> None:
    spec = run(cpuPerGpu=2.5, memoryPerGpuGiB=10)
    for gpus in (1, 3):
        built = pod_resources(spec, StageJob("expert", 1), gpus).container("nvidia.com/gpu", gpus)
        assert expert_pod_size(spec)(gpus) == pod_requests({"containers": [{"resources": built}]})
    assert expert_pod_size(spec)(3) == Requests(cpu_millis=7500, memory_bytes=30 * GIB)


def test_pod_requests_add_up_as_the_scheduler_does() -> None:
    spec = {
        "containers": [
            {"resources": {"requests": {"cpu": "500m", "memory": "1Gi"}}},
            {"resources": {"limits": {"cpu": "2", "memory": "512Mi"}}},  # requests default to limits
            {"resources": {}},
        ],
        "initContainers": [{"resources": {"requests": {"cpu": "4", "memory": "1Mi"}}}],  # the larger wins
        "overhead": {"cpu": "100m"},
    }
    assert pod_requests(spec) == Requests(cpu_millis=4100, memory_bytes=GIB + 512 * 1024**2)
    assert pod_requests({}) == Requests()
    assert not pod_requests({"containers": [{"resources": {"requests": {"cpu": "oops"}}}]})


def test_node_views_carry_allocatable_cpu_and_memory_to_the_fleet() -> None:
    view = NodeView.from_body(h100("a", cpu="3", memory="8Gi"))
    assert (view.cpu, view.memory) == ("3", "8Gi")
    (gpu,) = read_fleet([view], now=NOW, pod_size=expert_pod_size(run())).nodes
    assert gpu.free_gpus == 3, "tiny asks 1 core and 2 GiB per GPU: 3 cores hold three"
