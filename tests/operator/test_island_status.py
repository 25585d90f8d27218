"""An island's status from its probes: backoff, disconnectedSince set once, inventory of usable GPU nodes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from atoll.api.island import ComputeIslandSpec, ComputeIslandStatus
from atoll.operator.islands.status import Reached, Unreached, backoff_seconds, changed, due, next_status

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
SPEC = ComputeIslandSpec.model_validate({"kubeconfigSecretRef": {"name": "s"}})
DOWN = Unreached(
    reason="Unreachable", message="cannot reach the API server at https://10.0.0.1:6443: ConnectionRefused"
)


def _node(name: str, product: str, gpus: int, *, ready: bool = True, cordoned: bool = False) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {"nvidia.com/gpu.product": product, "nvidia.com/gpu.memory": "23034",
                                              "nvidia.com/gpu.count": str(gpus)}},
        "spec": {"unschedulable": cordoned},
        "status": {"allocatable": {"nvidia.com/gpu": str(gpus)},
                   "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }  # fmt: skip


NODES = (
    _node("l4-0", "NVIDIA-L4", 4),
    _node("l4-1", "NVIDIA-L4", 4),
    _node("t4-0", "Tesla-T4", 4, ready=False),
    _node("t4-1", "Tesla-T4", 4, cordoned=True),
    {"metadata": {"name": "cpu-0"}, "status": {"allocatable": {}}},
)
UP = Reached(version="v1.36.3", nodes=NODES, used_gpus={"l4-0": 3, "elsewhere": 2})


def test_backoff_doubles_up_to_its_cap() -> None:
    assert [backoff_seconds(n) for n in range(8)] == [0, 5, 10, 20, 40, 80, 160, 300]
    assert backoff_seconds(100) == 300


def test_disconnected_since_is_set_once_and_retries_back_off() -> None:
    first = next_status(ComputeIslandStatus(), DOWN, spec=SPEC, now=T0, generation=1)
    assert (first.failed_attempts, first.disconnected_since, first.next_retry_time) == (
        1,
        T0,
        T0 + timedelta(seconds=5),
    )
    assert [(c.type, c.status, c.reason) for c in first.conditions] == [
        ("Connected", "False", "Unreachable"),
        ("Ready", "False", "Disconnected"),
    ]
    assert not due(first, T0 + timedelta(seconds=4))
    assert due(first, T0 + timedelta(seconds=5))
    later = T0 + timedelta(seconds=5)
    second = next_status(first, DOWN, spec=SPEC, now=later, generation=1)
    assert (second.failed_attempts, second.disconnected_since) == (2, T0)
    assert second.next_retry_time == later + timedelta(seconds=10)
    assert second.conditions[0].last_transition_time == T0  # the condition did not change
    assert changed(first, second) == []


def test_a_reconnect_clears_the_outage_and_reads_the_inventory() -> None:
    down = next_status(ComputeIslandStatus(), DOWN, spec=SPEC, now=T0, generation=1)
    up = next_status(down, UP, spec=SPEC, now=T0 + timedelta(seconds=5), generation=1)
    assert (up.failed_attempts, up.disconnected_since, up.next_retry_time) == (0, None, None)
    assert [(c.type, c.status, c.reason) for c in up.conditions] == [
        ("Connected", "True", "Connected"),
        ("Ready", "True", "Ready"),
    ]
    assert [(g.product, g.nodes, g.gpus, g.free) for g in up.inventory] == [("NVIDIA-L4", 2, 8, 5)]
    assert (up.gpus, up.free_gpus, up.products, up.server_version) == (8, 5, "NVIDIA-L4×8", "v1.36.3")
    assert [c.type for c in changed(down, up)] == ["Connected", "Ready"]
    assert due(up, T0 + timedelta(seconds=5))


def test_cordoned_or_empty_islands_are_not_ready() -> None:
    cordoned = SPEC.model_copy(update={"cordoned": True})
    assert next_status(ComputeIslandStatus(), UP, spec=cordoned, now=T0).conditions[1].reason == "Cordoned"
    empty = Reached(version="v1.36.3", nodes=(NODES[2], NODES[4]), used_gpus={})
    status = next_status(ComputeIslandStatus(), empty, spec=SPEC, now=T0)
    assert (status.conditions[1].status, status.conditions[1].reason, status.gpus) == ("False", "NoUsableGpus", 0)
