"""The makespan problem of one run: experts as jobs, the fleet's nodes (and growable pools) as
GPU pools, every feasible (node, GPU count, micro-batch split) as an option.

`ProblemBuilder` turns a fleet, the experts' remaining work and the speed table into the
`atoll.operator.placement.schedule` Problem and remembers what each option means (node,
GPUs, split, speed), so that `atoll.operator.placement.planner` can read the solver's
schedule back as a plan. It decides which nodes join the problem (usable ones, nodes only
pinned experts may use, pool placeholders, at most as many identical nodes as there are
experts to place) and why a node is left out (too little GPU memory). Pure: no clocks, no
API calls.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from atoll.api.spec import PlacementSpec
from atoll.errors import AtollError
from atoll.operator.placement.cost import Pricing, prices_of
from atoll.operator.placement.fleet import Exclusion, Fleet, GpuNode
from atoll.operator.placement.plan import Assignment
from atoll.operator.placement.pools import GrowablePool
from atoll.operator.placement.provision import pool_nodes
from atoll.operator.placement.schedule import Job, Option, Problem
from atoll.operator.placement.speeds import SpeedTable, throughput, trains_in_bf16
from atoll.operator.placement.workload import Workload

START_SECONDS = 60.0
"""What starting an expert costs whatever its size: scheduling, image, imports, loading the
cluster's data and resuming from its checkpoint. Without it, small experts look free to
queue behind each other on the fastest GPUs, which is never true in practice."""


class PlacementError(AtollError):
    """No placement exists (no usable node fits the experts); the message lists every node's reason."""


@dataclass(frozen=True, kw_only=True, slots=True)
class ExpertWork:
    """One expert to place: its remaining samples, its global batch and, if running, where."""

    expert: int
    samples: int
    global_batch: int
    pinned: Assignment | None = None
    """The assignment of an expert that is running and stays where it is (starts first)."""
    release_seconds: float = 0.0
    """Earliest start from now."""


def without_start(problem: Problem) -> Problem:
    """The problem with training time alone: the lower bound counts samples over speed."""
    jobs = tuple(
        job
        if job.pinned
        else Job(options=tuple(replace(o, seconds=o.seconds - START_SECONDS) for o in job.options), pinned=False)
        for job in problem.jobs
    )
    return replace(problem, jobs=jobs)


@dataclass(frozen=True, slots=True)
class Choice:
    """A schedule option plus what the plan needs to know about it."""

    node: int
    gpus: int
    micro_batch: int | None
    """None only for a pinned (running) expert that runs with the trainer's own split."""
    grad_accum: int | None
    speed: float


class ProblemBuilder:
    """Turns fleet + experts into a schedule Problem and remembers what each option means."""

    def __init__(
        self,
        *,
        fleet: Fleet,
        experts: Sequence[ExpertWork],
        workload: Workload,
        placement: PlacementSpec,
        speeds: SpeedTable,
        efficiency: float,
        used_gpus: Mapping[str, int],
        pools: Sequence[GrowablePool] = (),
        prices: Mapping[str, float] | None = None,
    ) -> None:
        self.fleet = fleet
        self.prices = dict(prices or {})
        """Node name → price of one of its GPUs for an hour (nodes with a known price only)."""
        self.experts = sorted(experts, key=lambda e: e.expert)
        if len({e.expert for e in self.experts}) != len(self.experts):
            raise PlacementError("an expert appears twice in the work list")
        self.workload = workload
        self.placement = placement
        self.speeds = speeds
        self.efficiency = efficiency
        self.used_gpus = used_gpus
        self.too_small: list[Exclusion] = []
        self.nodes: list[GpuNode] = list(fleet.nodes)
        held: dict[str, int] = {}
        for expert in self.experts:
            if expert.pinned is not None:
                held[expert.pinned.node] = held.get(expert.pinned.node, 0) + expert.pinned.gpus
        usable, unusable = pool_nodes(
            pools,
            placement=placement,
            bf16=workload.precision == "bf16",
            held=held,
            free_experts=sum(1 for e in self.experts if e.pinned is None),
        )
        self.pool_of = {entry.node.name: entry for entry in usable}
        """Placeholder → its pool node; pool nodes are the problem's last nodes."""
        self._pinned_nodes(placeholders={pool.placeholder for pool in pools})
        self.nodes += [entry.node for entry in usable]
        self.usable |= set(self.pool_of)
        self.too_small += unusable
        self.choices: list[list[Choice]] = []
        self.full_rate = 0.0

    def known_prices(self) -> dict[str, float]:
        """Problem node name → price of a GPU-hour, where one is known (nodes and pools)."""
        known = {n.name: self.prices[n.name] for n in self.nodes if n.name in self.prices}
        for name, entry in self.pool_of.items():
            if entry.pool.cost_per_gpu_hour is not None:
                known[name] = entry.pool.cost_per_gpu_hour
        return known

    def pricing(self) -> Pricing:
        """The cost objective's view of the problem's nodes (unknown prices count as 0)."""
        names = [n.name for n in self.nodes]
        return Pricing(price=prices_of(names, self.known_prices()), provisioned=tuple(n in self.pool_of for n in names))

    @property
    def first_pool(self) -> int:
        """Index of the first pool node (pool nodes come last); len(nodes) when there is none."""
        return next((i for i, n in enumerate(self.nodes) if n.name in self.pool_of), len(self.nodes))

    def _pinned_nodes(self, placeholders: set[str]) -> None:
        """Nodes that only pinned experts may use (cordoned, full; a pool the run may no longer
        use, for the experts waiting for it) join the problem with their GPUs."""
        usable = {n.name for n in self.nodes}
        extra: dict[str, GpuNode] = {}
        for expert in self.experts:
            pin = expert.pinned
            if pin is None or pin.node in usable or pin.node in self.pool_of:
                continue
            if pin.node not in self.fleet.all_nodes and pin.node not in placeholders:
                raise PlacementError(f"expert {expert.expert} is pinned to node {pin.node}, which does not exist")
            held = extra.get(pin.node)
            gpus = pin.gpus + (held.gpus if held else 0)
            extra[pin.node] = GpuNode(
                name=pin.node, product=pin.gpu_product, memory_mib=0, gpus=gpus, free_gpus=gpus, compute_major=None
            )
        self.nodes = sorted([*self.nodes, *extra.values()], key=lambda n: n.name)
        self.usable = usable

    def problem(self) -> Problem:
        splits = self._splits()
        self._drop_unneeded(splits)
        node_index = {n.name: i for i, n in enumerate(self.nodes)}
        per_gpu = [self.speeds.per_gpu(n.product, n.compute_major) for n in self.nodes]
        pool_of = self.pool_of
        ready = [pool_of[n.name].pool.provisioning_seconds if n.name in pool_of else 0.0 for n in self.nodes]
        jobs = []
        for expert in self.experts:
            choices: list[Choice] = []
            if expert.pinned is not None:
                pin = expert.pinned
                index = node_index[pin.node]
                speed = throughput(per_gpu[index], pin.gpus, self.efficiency)
                choices.append(Choice(index, pin.gpus, pin.micro_batch, pin.grad_accum, speed))
            else:
                for index, node in enumerate(self.nodes):
                    for gpus, (micro, accum) in splits.get((node.name, expert.global_batch), []):
                        speed = throughput(per_gpu[index], gpus, self.efficiency)
                        choices.append(Choice(index, gpus, micro, accum, speed))
            if not choices:
                raise PlacementError(self._nowhere(expert))
            self.choices.append(choices)
            jobs.append(
                Job(
                    options=tuple(
                        Option(
                            node=c.node,
                            gpus=c.gpus,
                            seconds=expert.samples / c.speed + (0.0 if expert.pinned is not None else START_SECONDS),
                            release=expert.release_seconds
                            if expert.pinned is not None
                            else max(expert.release_seconds, ready[c.node]),
                        )
                        for c in choices
                    ),
                    pinned=expert.pinned is not None,
                )
            )
        capacity = tuple(n.free_gpus for n in self.nodes)
        for index, node in enumerate(self.nodes):
            held = sum(e.pinned.gpus for e in self.experts if e.pinned is not None and e.pinned.node == node.name)
            if held > capacity[index]:
                raise PlacementError(
                    f"node {node.name}: running experts hold {held} GPUs but only {capacity[index]} are free"
                    " (used_gpus must count other runs' pods only)"
                )
        return Problem(capacity=capacity, rate=tuple(per_gpu), jobs=tuple(jobs))

    def _drop_unneeded(self, splits: Mapping[tuple[str, int], list[tuple[int, tuple[int, int]]]]) -> None:
        """Leave out nodes no expert fits, and identical nodes beyond what the experts could use.

        n unpinned experts never use more than n nodes of one kind (product, memory, free
        GPUs, compute capability, price), and nodes of a kind are interchangeable: keeping the
        first n of each kind by name changes no optimum, and shrinks a 1000-node fleet of a
        few pools to a problem of tens of nodes. The issue's lower bound still counts the
        speed of every usable GPU (`full_rate`).
        """
        pinned_here = {e.pinned.node for e in self.experts if e.pinned is not None}
        free_experts = sum(1 for e in self.experts if e.pinned is None)
        fitting = [
            n
            for n in self.nodes
            if n.name in pinned_here or any(splits.get((n.name, e.global_batch)) for e in self.experts)
        ]
        self.full_rate = sum(n.free_gpus * self.speeds.per_gpu(n.product, n.compute_major) for n in fitting)
        kinds: dict[tuple[str, int, int, int | None, float | None], int] = {}
        kept = []
        for node in fitting:
            kind = (node.product, node.memory_mib, node.free_gpus, node.compute_major, self.prices.get(node.name))
            if node.name in pinned_here or node.name in self.pool_of:
                kept.append(node)
            elif kinds.get(kind, 0) < free_experts:
                kinds[kind] = kinds.get(kind, 0) + 1
                kept.append(node)
        self.nodes = kept

    def _splits(self) -> dict[tuple[str, int], list[tuple[int, tuple[int, int]]]]:
        """Per (usable node, global batch): the feasible GPU counts with their micro-batch split."""
        batches = sorted({e.global_batch for e in self.experts if e.pinned is None})
        table: dict[tuple[str, int], list[tuple[int, tuple[int, int]]]] = {}
        for node in self.nodes:
            if node.name not in self.usable:
                continue
            bf16 = trains_in_bf16(self.workload, node.product, node.compute_major)
            pool = self.pool_of.get(node.name)
            top = min(self.placement.gpu.max_per_expert, node.free_gpus)
            top = min(top, pool.per_expert_gpus) if pool is not None else top
            fits_any = False
            for batch in batches:
                options = []
                for gpus in range(1, top + 1):
                    split = self.workload.split_batch(batch, gpus, node.memory_mib, bf16)
                    if split is not None:
                        options.append((gpus, split))
                table[(node.name, batch)] = options
                fits_any = fits_any or bool(options)
            if batches and not fits_any:
                need = self.workload.min_memory_gib(1, bf16)
                self.too_small.append(
                    Exclusion(
                        node=node.name,
                        kind="memory",
                        reason=f"{node.memory_mib / 1024:.1f} GiB GPUs < {need:.1f} GiB the "
                        f"{self.workload.preset.name} expert needs at micro-batch 1",
                    )
                )
        return table

    def _nowhere(self, expert: ExpertWork) -> str:
        reasons = [f"{e.node}: {e.reason}" for e in (*self.fleet.excluded, *self.too_small)]
        listing = "; ".join(reasons) if reasons else "the node list is empty"
        return (
            f"expert {expert.expert} ({self.workload.preset.name}, global batch {expert.global_batch}) fits on no"
            f" usable GPU node — {listing}"
        )
