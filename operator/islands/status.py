"""An island's status from one probe: conditions, reconnect backoff and GPU inventory. Pure.

`disconnectedSince` is set by the first failed probe and kept by every retry after it;
`failedAttempts` counts failed probes in a row and sets the next retry (exponential
backoff, capped). The inventory counts the nodes the planner would use — the one
definition of a usable node, atoll.operator.placement.fleet.read_fleet. Messages and
reasons come from the probe, which never puts a credential in them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from atoll.api.island import ComputeIslandSpec, ComputeIslandStatus, IslandCondition, IslandConditionType, IslandGpus
from atoll.operator.conditions import transition
from atoll.operator.placement.fleet import read_fleet

BACKOFF_FIRST_SECONDS = 5.0
BACKOFF_MAX_SECONDS = 300.0
Status = Literal["True", "False", "Unknown"]


@dataclass(frozen=True, kw_only=True, slots=True)
class Reached:
    """The island answered: its version, its nodes, and the GPUs pods request per node (island namespace)."""

    version: str
    nodes: tuple[Mapping[str, Any], ...]
    used_gpus: Mapping[str, int]
    pods: tuple[Mapping[str, Any], ...] = ()
    """Every pod of the island's namespace."""
    pods_version: str = ""
    """The resourceVersion of that list (the island's pod watch starts from it)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Unreached:
    """The island could not be used: a CamelCase reason and a sentence (never a credential)."""

    reason: str
    message: str


Outcome = Reached | Unreached


def backoff_seconds(failed_attempts: int) -> float:
    """Delay before the next probe after `failed_attempts` failures in a row (5 s, 10 s, 20 s, … ≤ 300 s)."""
    if failed_attempts <= 0:
        return 0.0
    return min(BACKOFF_MAX_SECONDS, BACKOFF_FIRST_SECONDS * float(2 ** min(failed_attempts - 1, 30)))


def due(status: ComputeIslandStatus, now: datetime) -> bool:
    """Whether a probe is due: always while connected, after nextRetryTime while disconnected."""
    return status.next_retry_time is None or now >= status.next_retry_time


def inventory(nodes: Sequence[Mapping[str, Any]], used_gpus: Mapping[str, int], now: datetime) -> list[IslandGpus]:
    """Usable GPUs by product (sorted): nodes, allocatable GPUs, and those no pod requests."""
    by_product: dict[str, list[int]] = {}
    for node in read_fleet(nodes, now=now).nodes:
        counts = by_product.setdefault(node.product, [0, 0, 0])
        counts[0] += 1
        counts[1] += node.gpus
        counts[2] += max(0, node.gpus - max(0, used_gpus.get(node.name, 0)))
    return [
        IslandGpus(product=product, nodes=n, gpus=gpus, free=free)
        for product, (n, gpus, free) in sorted(by_product.items())
    ]


def next_status(
    previous: ComputeIslandStatus,
    outcome: Outcome,
    *,
    spec: ComputeIslandSpec,
    now: datetime,
    generation: int | None = None,
) -> ComputeIslandStatus:
    """The island's status after one probe with `outcome`."""
    old = {c.type: c for c in previous.conditions}

    def make(kind: IslandConditionType, status: Status, reason: str, message: str) -> IslandCondition:
        return transition(IslandCondition, old.get(kind), kind, status, reason, message, now, generation)

    if isinstance(outcome, Unreached):
        failed = previous.failed_attempts + 1
        retry = now + timedelta(seconds=backoff_seconds(failed))
        return previous.model_copy(
            update={
                "conditions": [
                    make("Connected", "False", outcome.reason, outcome.message),
                    make("Ready", "False", "Disconnected", f"not connected: {outcome.message}"),
                ],
                "disconnected_since": previous.disconnected_since or now,
                "failed_attempts": failed,
                "next_retry_time": retry,
                "last_probe_time": now,
                "observed_generation": generation,
            }
        )
    gpus = inventory(outcome.nodes, outcome.used_gpus, now)
    total = sum(entry.gpus for entry in gpus)
    if spec.cordoned:
        ready = make("Ready", "False", "Cordoned", "spec.cordoned: the island accepts no new experts")
    elif total == 0:
        ready = make("Ready", "False", "NoUsableGpus", "no Ready, schedulable node with allocatable nvidia.com/gpu")
    else:
        ready = make("Ready", "True", "Ready", f"{total} GPUs on {sum(e.nodes for e in gpus)} usable nodes")
    return ComputeIslandStatus(
        conditions=[make("Connected", "True", "Connected", f"Kubernetes {outcome.version}"), ready],
        server_version=outcome.version,
        disconnected_since=None,
        failed_attempts=0,
        next_retry_time=None,
        last_probe_time=now,
        inventory=gpus,
        products=", ".join(f"{entry.product}×{entry.gpus}" for entry in gpus) or None,
        gpus=total,
        free_gpus=sum(entry.free for entry in gpus),
        observed_generation=generation,
    )


def changed(previous: ComputeIslandStatus, current: ComputeIslandStatus) -> list[IslandCondition]:
    """The conditions whose status or reason differ from before (for Events)."""
    old = {c.type: (c.status, c.reason) for c in previous.conditions}
    return [c for c in current.conditions if old.get(c.type) != (c.status, c.reason)]
