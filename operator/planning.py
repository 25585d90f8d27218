"""The one door from the reconciler to placement: which node, GPU product and batch split
each stage attempt gets.

`plan_stages` is pure and deterministic. Today it places simply (any schedulable, healthy
node whose GPUs have enough memory, the one with the most free GPUs first); the
makespan planner of atoll.operator.placement replaces the body of this function, not
its callers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from atoll.api.spec import PlacementSpec
from atoll.operator.observe import NodeView


@dataclass(frozen=True, slots=True)
class PlacementJob:
    """One stage attempt that needs GPUs."""

    key: str
    """expert-<k>, router, partition or evaluate."""
    preset: str | None
    """Transformer preset it trains (None for partition / evaluate)."""
    samples: int
    """Work: steps × global batch (0 when unknown)."""
    global_batch: int | None
    micro_batch: int | None
    """The spec's micro-batch when set."""
    gpus: int = 1
    """GPUs it asks for; 0 for a stage that only needs a node of the fleet (assemble)."""


@dataclass(frozen=True, slots=True)
class Assignment:
    """Where a stage attempt runs and how it splits its batch."""

    node: str
    gpu_product: str | None
    gpus: int
    micro_batch: int | None
    grad_accum: int | None
    predicted_seconds: float | None = None


def usable_nodes(nodes: Sequence[NodeView], placement: PlacementSpec) -> list[NodeView]:
    """Nodes a stage of this run may use: schedulable, ready, healthy, with GPUs that fit."""
    need_mib = placement.gpu.min_memory_gi_b * 1024
    products = set(placement.gpu.products)
    found = []
    for node in nodes:
        if node.unschedulable or not node.ready or not node.healthy or node.gpus < 1:
            continue
        if node.gpu_memory_mib < need_mib or (products and node.gpu_product not in products):
            continue
        if any(node.labels.get(key) != value for key, value in placement.node_selector.items()):
            continue
        found.append(node)
    return sorted(found, key=lambda n: n.name)


def _split(job: PlacementJob, gpus: int) -> tuple[int | None, int | None]:
    """micro-batch × accumulation × GPUs = global batch, when the spec fixes the micro-batch."""
    if job.global_batch is None or job.micro_batch is None:
        return None, None
    per_step = job.micro_batch * gpus
    if job.global_batch % per_step:
        return None, None
    return job.micro_batch, job.global_batch // per_step


def plan_stages(
    jobs: Sequence[PlacementJob],
    nodes: Sequence[NodeView],
    busy_gpus: Mapping[str, int],
    placement: PlacementSpec,
) -> dict[str, Assignment]:
    """An assignment for each job that some node can run (jobs no node fits are left out).

    A job goes to the usable node with the most free GPUs (ties by name). When every
    usable node is busy it still gets the largest one and its pod queues there.
    """
    candidates = usable_nodes(nodes, placement)
    free = {node.name: node.gpus - busy_gpus.get(node.name, 0) for node in candidates}
    plan: dict[str, Assignment] = {}
    for job in jobs:
        if not candidates:
            break
        node = max(candidates, key=lambda n: (free[n.name], n.gpus))  # first by name among equals
        free[node.name] -= job.gpus
        micro, accum = _split(job, job.gpus) if job.gpus else (None, None)
        plan[job.key] = Assignment(
            node=node.name, gpu_product=node.gpu_product, gpus=job.gpus, micro_batch=micro, grad_accum=accum
        )
    return plan
