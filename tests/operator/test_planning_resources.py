"""The operator's placement weighs the CPU and memory every pod on a node requests: the pod index
records them, the ledger keeps a created pod's until the watch shows it, and experts start only
where their pods fit beside every other pod."""

from __future__ import annotations

from datetime import UTC, datetime

from atoll.api.spec import DDMRunSpec
from atoll.operator.ledger import GpuHolder, GpuLedger
from atoll.operator.placement import Assignment
from atoll.operator.placement.capacity import GIB, Requests
from atoll.operator.planning import FleetState, place_experts
from atoll.operator.views import NodeView

NOW = datetime(2026, 1, 1, 12, tzinfo=UTC)
H100 = "NVIDIA-H100-80GB-HBM3"
SPEC = DDMRunSpec.model_validate(
    {
        "dataset": {"uri": "builtin://digits"},
        "partition": {"clusters": 2},
        "expert": {"preset": "tiny"},
        "placement": {"gpu": {"maxPerExpert": 1}, "cpuPerGpu": 4},
    }
)


def h100(name: str, cpu: str = "16") -> NodeView:
    labels = {"nvidia.com/gpu.product": H100, "nvidia.com/gpu.memory": "81559"}
    return NodeView(name=name, labels=labels, gpus=8, cpu=cpu, memory="512Gi")


def fleet(**changes: object) -> FleetState:
    values: dict[str, object] = {
        "spec": SPEC,
        "nodes": [h100("h100-a"), h100("h100-b")],
        "running": {},
        "progress": {},
        "cluster_sizes": [10, 10],
        "busy_gpus": {},
        "now": NOW,
    }
    values.update(changes)
    return FleetState(**values)  # type: ignore[arg-type]


def test_experts_start_only_where_other_pods_leave_the_cpu_their_pods_request() -> None:
    before = place_experts(fleet(), [0, 1])
    assert {a.node for a in before.assignments.values()} == {"h100-a"}, "the first by name when nothing is held"
    held = fleet(busy_requests={"h100-a": Requests(cpu_millis=14_000)})  # 2 cores left, a pod asks 4
    placed = place_experts(held, [0, 1])
    assert {a.node for a in placed.assignments.values()} == {"h100-b"}
    assert set(placed.assignments) == {0, 1}


def test_a_running_experts_own_pod_is_not_counted_as_another_pods() -> None:
    """h100-a's 16 cores: 4 for the running expert 0 (its own pod), the other 12 for three more."""
    running = {0: Assignment(expert=0, node="h100-a", gpu_product=H100, gpus=1, micro_batch=64, grad_accum=1)}
    own = {"h100-a": Requests(4_000, 2 * GIB)}
    state = fleet(running=running, busy_gpus={"h100-a": 1}, busy_requests=own, running_requests=own)
    assert state.other_requests() == {"h100-a": Requests()}
    assert state.free_gpus() == {"h100-a": 3, "h100-b": 4}
    placed = place_experts(state, [1])
    assert placed.error is None
    assert set(placed.assignments) == {1}


def test_the_ledger_counts_a_created_pods_cpu_and_memory_until_the_watch_shows_it() -> None:
    ledger = GpuLedger()
    pod = Requests(cpu_millis=4_000, memory_bytes=2 * GIB)
    ledger.reserve("ns/r-expert-0-a1", "h100-a", 1, pod)
    ledger.reserve("ns/r-partition-a1", "h100-b", 0, Requests(cpu_millis=1_000))  # no GPU, still a promise
    hog = GpuHolder("h100-a", 0, Requests(cpu_millis=8_000))
    assert ledger.held({"x/hog": hog}) == (
        {"h100-a": 1},
        {"h100-a": Requests(12_000, 2 * GIB), "h100-b": Requests(cpu_millis=1_000)},
    )
    shown = {"x/hog": hog, "ns/r-expert-0-a1": GpuHolder("h100-a", 1, pod)}
    assert ledger.held(shown)[1]["h100-a"] == Requests(12_000, 2 * GIB), "counted once when the watch shows it"
    assert ledger.usage(shown) == {"h100-a": 1}
