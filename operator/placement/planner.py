"""`plan`: assign a run's experts to the fleet's GPUs so that the run finishes soonest.

Builds the makespan problem of `atoll.operator.placement.schedule` from Node objects, the
experts' work and the speed table: for every usable node and every GPU count g (g divides
the global batch, g ≤ placement.gpu.maxPerExpert and the node's free GPUs — those whose
expert pods its free CPU and memory hold, see the fleet — and the largest fitting
micro-batch exists) one option lasting samples / speed(g), plus
START_SECONDS for an expert not yet running.

Growable pools (`GrowablePool`: a Karpenter NodePool, a pool the run declares) join the
problem as one more node each, named by its placeholder, whose GPUs are the pool's
headroom and become usable only after its provisioning delay (the options' release). The
plan is the better of the fleet alone and fleet plus pools: provisioning wins only when it
shortens the makespan by more than MIN_PROVISION_GAIN, and experts that gain nothing on
new capacity are moved off it (atoll.operator.placement.provision). Cost then decides
(atoll.operator.placement.cost): it breaks makespan ties, and under
`placement.deadlineHours` the cheapest plan that meets the deadline wins. Pure and
deterministic: equal inputs (`now` included) give equal plans.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from atoll.api import DDMRunSpec
from atoll.api.spec import PlacementSpec
from atoll.operator.placement.capacity import PodSize, Requests, expert_pod_size
from atoll.operator.placement.cost import apply_objective, node_prices, plan_cost
from atoll.operator.placement.fleet import node_products, read_fleet
from atoll.operator.placement.plan import Assignment, Plan
from atoll.operator.placement.pools import GrowablePool
from atoll.operator.placement.problem import (
    ExpertWork,
    PlacementError,
    ProblemBuilder,
    without_start,
)
from atoll.operator.placement.provision import provisions, solve_with_pools
from atoll.operator.placement.schedule import lower_bound
from atoll.operator.placement.speeds import (
    DATA_PARALLEL_EFFICIENCY,
    SpeedTable,
    observed_speeds,
)
from atoll.operator.placement.workload import Workload, workload_of
from atoll.progress import StageProgress

STALE_AFTER_SECONDS = 180.0
"""An agent heartbeat older than this makes a node stale (the agent reports every 30 s)."""
EXACT_SEARCH_MAX_EXPERTS = 10
EXACT_SEARCH_BUDGET = 20_000
"""Search nodes plus list schedules the exact search may spend (about a second) before the
heuristic's plan is kept."""


def experts_of(spec: DDMRunSpec, cluster_sizes: Sequence[int] | None = None) -> list[ExpertWork]:
    """Every expert of a run with samples = steps (stepsPolicy) × global batch.

    Without cluster sizes (before partitioning) every cluster is assumed equal in size.
    """
    clusters = spec.partition.clusters
    sizes = list(cluster_sizes) if cluster_sizes is not None else [1] * clusters
    if len(sizes) != clusters:
        raise PlacementError(f"{len(sizes)} cluster sizes given for partition.clusters = {clusters}")
    if any(size < 0 for size in sizes) or sum(sizes) <= 0:
        raise PlacementError(f"cluster sizes must be ≥ 0 and not all 0, got {sizes}")
    batch = spec.expert.recipe().global_batch_size
    return [
        ExpertWork(expert=k, samples=spec.expert.steps_for(k, sizes) * batch, global_batch=batch)
        for k in range(clusters)
    ]


def speed_table(spec: DDMRunSpec, *, progress: Iterable[StageProgress] = (), nodes: Iterable[Any] = ()) -> SpeedTable:
    """The run's speed table: built-in, spec.placement.speeds, corrected by reported samples/s."""
    return SpeedTable(
        workload=workload_of(spec),
        overrides=dict(spec.placement.speeds),
        observed=observed_speeds(progress, node_products(nodes)),
    )


def plan_run(
    spec: DDMRunSpec,
    nodes: Iterable[Any],
    *,
    cluster_sizes: Sequence[int] | None = None,
    progress: Iterable[StageProgress] = (),
    used_gpus: Mapping[str, int] | None = None,
    used_requests: Mapping[str, Requests] | None = None,
    now: datetime | None = None,
    pools: Sequence[GrowablePool] = (),
) -> Plan:
    """The initial plan of a run: every expert, nothing running yet. A node offers only the
    GPUs whose expert pods (sized as the pod builder sizes them) its free CPU and memory hold."""
    node_list = list(nodes)
    return plan(
        node_list,
        experts_of(spec, cluster_sizes),
        workload=workload_of(spec),
        placement=spec.placement,
        speeds=speed_table(spec, progress=progress, nodes=node_list),
        used_gpus=used_gpus,
        now=now,
        pod_size=expert_pod_size(spec),
        used_requests=used_requests,
        pools=pools,
    )


def plan(
    nodes: Iterable[Any],
    experts: Sequence[ExpertWork],
    *,
    workload: Workload,
    placement: PlacementSpec | None = None,
    speeds: SpeedTable | None = None,
    used_gpus: Mapping[str, int] | None = None,
    now: datetime | None = None,
    stale_after_seconds: float = STALE_AFTER_SECONDS,
    efficiency: float = DATA_PARALLEL_EFFICIENCY,
    exact_budget: int | None = None,
    pod_size: PodSize | None = None,
    used_requests: Mapping[str, Requests] | None = None,
    pools: Sequence[GrowablePool] = (),
    deadline_seconds: float | None = None,
) -> Plan:
    """Place `experts` on the usable GPUs of `nodes`, and of `pools` once provisioned,
    minimising the predicted makespan, then cost; or, with a deadline (`deadline_seconds`
    from now, else placement.deadlineHours), minimising cost among plans that meet it.

    `used_gpus` (node → GPUs used by pods of other runs) lowers a node's capacity, and with
    `pod_size` (what an expert pod on g GPUs requests) so does the CPU and memory left by
    `used_requests` (node → requests of those pods); pinned experts keep their node even
    when it is no longer schedulable (cordoned, full); an expert pinned to a pool's
    placeholder waits for that pool's new node. Raises PlacementError when some expert
    fits nowhere.
    """
    placement = placement or PlacementSpec()
    speeds = speeds or SpeedTable(workload=workload)
    node_list = list(nodes)
    prices, price_problems = node_prices(node_list)
    if deadline_seconds is None and placement.deadline_hours is not None:
        deadline_seconds = placement.deadline_hours * 3600
    fleet = read_fleet(
        node_list,
        placement=placement,
        used_gpus=used_gpus,
        now=now,
        stale_after_seconds=stale_after_seconds,
        needs_bf16=workload.precision == "bf16",
        pod_size=pod_size,
        used_requests=used_requests,
    )
    builder = ProblemBuilder(
        fleet=fleet,
        experts=experts,
        workload=workload,
        placement=placement,
        speeds=speeds,
        efficiency=efficiency,
        used_gpus=used_gpus or {},
        pools=pools,
        prices=prices,
    )
    problem = builder.problem()
    budget = exact_budget
    if budget is None:
        budget = EXACT_SEARCH_BUDGET if len(experts) <= EXACT_SEARCH_MAX_EXPERTS else 0
    candidates = solve_with_pools(problem, builder.first_pool, budget)
    objective = apply_objective(
        problem,
        fastest=candidates.chosen,
        seeds=candidates.others,
        pricing=builder.pricing(),
        deadline=deadline_seconds,
    )
    schedule = objective.schedule
    assignments = []
    for job, expert in enumerate(builder.experts):
        option = builder.choices[job][schedule.choice[job]]
        node = builder.nodes[option.node]
        pool = builder.pool_of[node.name].pool if node.name in builder.pool_of else None
        assignments.append(
            Assignment(
                expert=expert.expert,
                node=node.name,
                gpu_product=node.product,
                gpus=option.gpus,
                micro_batch=option.micro_batch,
                grad_accum=option.grad_accum,
                samples=expert.samples,
                start_seconds=schedule.start[job],
                predicted_seconds=schedule.finish[job],
                samples_per_second=option.speed,
                pool=pool.pool if pool is not None else None,
                pool_labels=dict(pool.node_labels) if pool is not None else {},
            )
        )
    products = {n.product: n for n in builder.nodes}
    return Plan(
        assignments=tuple(sorted(assignments, key=lambda a: a.expert or 0)),  # every plan assignment is an expert's
        makespan_seconds=schedule.makespan,
        lower_bound_seconds=lower_bound(without_start(problem), fleet_rate=builder.full_rate),
        speeds={p: speeds.per_gpu(p, n.compute_major) for p, n in products.items()},
        speed_sources={p: speeds.note(p, n.compute_major) for p, n in products.items()},
        excluded=fleet.excluded + tuple(builder.too_small),
        proven_optimal=schedule.proven_optimal,
        provisions=provisions([builder.pool_of[name] for name in builder.pool_of], assignments),
        cost=plan_cost(assignments, builder.known_prices()),
        deadline_seconds=deadline_seconds,
        reasons=objective.reasons + price_problems,
    )
