"""The placement plan: which node, how many GPUs, micro-batch × accumulation and when, per expert.

Value types only (built by `atoll.operator.placement.planner`, consumed by the operator
and `atoll plan`); `to_json` is the exact shape `atoll plan` prints. Pure.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from atoll.operator.placement.fleet import Exclusion


@dataclass(frozen=True, kw_only=True, slots=True)
class Assignment:
    """Where and how one stage attempt runs: an expert placed by the makespan planner (every
    field set), or a short stage (partition, router, assemble, evaluate) sent to a node of
    the fleet, whose batch split is left to the trainer when the spec does not fix it."""

    expert: int | None
    """The expert's index; None for the other stages."""
    node: str
    gpu_product: str
    gpus: int
    """GPUs on `node` (0: a stage that needs only a node of the fleet, such as assemble)."""
    micro_batch: int | None
    """Examples per forward pass per GPU (None: the trainer chooses)."""
    grad_accum: int | None
    """Gradient accumulation (None: derived from the global batch)."""
    samples: int = 0
    """Samples still to train (steps × global batch; on a re-plan, what remains)."""
    start_seconds: float = 0.0
    """Planned start from now (0 unless queued behind other experts on its node)."""
    predicted_seconds: float = 0.0
    """Predicted finish from now, queueing included (0: not predicted)."""
    samples_per_second: float = 0.0
    """Predicted speed of the expert on its GPUs."""
    pool: str | None = None
    """The autoscaler pool whose new node the expert waits for (`node` is then the pool's
    placeholder, `<pool>:<product>`, not a node); None: a node that exists."""
    pool_labels: Mapping[str, str] = field(default_factory=dict)
    """Labels every node of `pool` carries (what the expert's pod requires instead of a node name)."""

    def to_json(self) -> dict[str, Any]:
        pool = {"pool": self.pool} if self.pool is not None else {}
        return {
            **pool,
            "expert": self.expert,
            "node": self.node,
            "gpuProduct": self.gpu_product,
            "gpus": self.gpus,
            "microBatch": self.micro_batch,
            "gradAccum": self.grad_accum,
            "samples": self.samples,
            "startSeconds": round(self.start_seconds, 1),
            "predictedSeconds": round(self.predicted_seconds, 1),
        }


@dataclass(frozen=True, kw_only=True, slots=True)
class Provision:
    """GPUs a plan asks one autoscaler pool to add."""

    pool: str
    product: str
    placeholder: str
    """The name the plan's assignments give the pool's new nodes (`<pool>:<product>`)."""
    gpus: int
    """Most GPUs the plan's experts hold on the pool's new nodes at once."""
    headroom_gpus: int
    """GPUs the pool could add for this plan (its limit less what its nodes hold)."""
    ready_seconds: float
    """Its provisioning delay: no expert starts there before."""
    gpu_hours: float
    """GPU-hours the plan's experts run on it (provisioning and idle time not counted)."""
    cost: float | None
    """gpu_hours × the pool's cost per GPU-hour (None: the pool has no price)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "pool": self.pool,
            "gpuProduct": self.product,
            "gpus": self.gpus,
            "readySeconds": round(self.ready_seconds, 1),
            "gpuHours": round(self.gpu_hours, 3),
            "cost": None if self.cost is None else round(self.cost, 2),
        }


@dataclass(frozen=True, kw_only=True, slots=True)
class PlanCost:
    """What a plan's experts hold: GPU-hours from each one's planned start to its finish (the
    start cost included; a pool's provisioning delay and idle GPUs not), and their price."""

    gpu_hours: float = 0.0
    cost: float | None = None
    """Σ GPU-hours × price per GPU-hour over the GPUs with a price; None: none has one."""
    unpriced_gpu_hours: float = 0.0
    """Of `gpu_hours`, those on GPUs with no known price (not in `cost`)."""

    def to_json(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "gpuHours": round(self.gpu_hours, 3),
            "cost": None if self.cost is None else round(self.cost, 2),
        }
        if self.cost is not None and self.unpriced_gpu_hours > 0:
            document["unpricedGpuHours"] = round(self.unpriced_gpu_hours, 3)
        return document


@dataclass(frozen=True, kw_only=True, slots=True)
class Plan:
    """A placement of every unfinished expert of a run."""

    assignments: tuple[Assignment, ...]
    """Sorted by expert index."""
    makespan_seconds: float
    lower_bound_seconds: float
    speeds: Mapping[str, float]
    """Per-GPU samples/s of the expert preset on each usable product."""
    excluded: tuple[Exclusion, ...] = ()
    """Nodes not used, with the reason."""
    proven_optimal: bool = False
    """True when the search proved no placement finishes sooner (under the planner's model)."""
    speed_sources: Mapping[str, str] = field(default_factory=dict)
    """Per product: where its speed came from (SpeedTable.note: the source — observed, spec, measured,
    scaled, built-in or calibrated — then what measured or derived it)."""
    provisions: tuple[Provision, ...] = ()
    """Capacity the plan asks autoscaler pools to add (empty: the fleet as it is suffices)."""
    cost: PlanCost = field(default_factory=PlanCost)
    """GPU-hours the plan's experts hold and what they cost."""
    deadline_seconds: float | None = None
    """The deadline the plan was made for (from now; None: none, the fastest plan)."""
    reasons: tuple[str, ...] = ()
    """What a person should know about how the plan was chosen (a deadline no plan meets, a bad price)."""

    @property
    def idle_gpu_hours(self) -> float:
        """Idle GPU-hours the plan causes: for each pool it provisions, the pool's new GPUs
        (the most it holds at once) held from the ask (now) until the last expert planned there
        finishes, less the GPU-hours experts hold there (its provisioning delay, and GPUs waiting
        between experts). GPUs of nodes that exist are there whatever the plan: not counted."""
        idle = 0.0
        for provision in self.provisions:
            there = [a for a in self.assignments if a.node == provision.placeholder]
            if not there:
                continue
            held = provision.gpus * max(a.predicted_seconds for a in there)
            busy = sum(a.gpus * max(0.0, a.predicted_seconds - a.start_seconds) for a in there)
            idle += max(0.0, held - busy) / 3600
        return idle

    @property
    def meets_deadline(self) -> bool | None:
        """Whether the makespan is within the deadline (None: no deadline)."""
        if self.deadline_seconds is None:
            return None
        return self.makespan_seconds <= self.deadline_seconds * (1 + 1e-9)

    def assignment(self, expert: int) -> Assignment | None:
        return next((a for a in self.assignments if a.expert == expert), None)

    def to_json(self) -> dict[str, Any]:
        """The document `atoll plan` prints (its documented shape exactly; `deadlineSeconds` and
        `meetsDeadline` only with a deadline, `reasons` only when there are some, `provisions`
        only when the plan provisions)."""
        document: dict[str, Any] = {
            "assignments": [a.to_json() for a in self.assignments],
            "makespanSeconds": round(self.makespan_seconds, 1),
            "lowerBoundSeconds": round(self.lower_bound_seconds, 1),
            **self.cost.to_json(),
            "speeds": {product: round(speed, 3) for product, speed in sorted(self.speeds.items())},
        }
        if self.deadline_seconds is not None:
            document["deadlineSeconds"] = round(self.deadline_seconds, 1)
            document["meetsDeadline"] = self.meets_deadline
        if self.reasons:
            document["reasons"] = list(self.reasons)
        if self.provisions:
            document["provisions"] = [p.to_json() for p in self.provisions]
        return document

    def next_to_start(self, started: Collection[int], free_gpus: Mapping[str, int]) -> list[Assignment]:
        """The experts whose pods may be created now, in the plan's order.

        `started`: experts whose pods exist (running or done); `free_gpus`: node → GPUs
        free now. Per node, unstarted experts are taken in planned start order while they
        fit; the first that does not fit blocks the ones behind it, so a small expert never
        overtakes a large one the plan put first.
        """
        ready: list[Assignment] = []
        by_node: dict[str, list[Assignment]] = {}
        for item in self.assignments:
            if item.expert not in started:
                by_node.setdefault(item.node, []).append(item)
        for node in sorted(by_node):
            free = free_gpus.get(node, 0)
            for item in sorted(by_node[node], key=lambda a: (a.start_seconds, a.expert)):
                if item.gpus > free:
                    break
                ready.append(item)
                free -= item.gpus
        return sorted(ready, key=lambda a: (a.start_seconds, a.expert))
