"""Starting stage attempts, as decisions: place them (experts through the makespan planner,
moves to their planned GPUs first), build their pods, and ask to delete pods stranded on
lost nodes or Pending past their timeout (an expert whose pinned pod its node never took is
placed on another node when one can take it now). An expert planned on an island's node gets
the same pod, made fit for the island (atoll.operator.islands.dispatch). Pure: returns CreatePod / DeletePod
actions, the executor applies them. A decision made without the GPU usage (`Observation.placing`
False) starts nothing and leaves each stage that would start as it was.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from atoll.api.placement import HOME_ISLAND
from atoll.api.spec import API_GROUP_VERSION
from atoll.api.status import DDMExpertStatus
from atoll.operator.attempts import StageDecision, waiting_message
from atoll.operator.conditions import Trouble
from atoll.operator.islands.dispatch import island_pod
from atoll.operator.islands.fleet import island_of
from atoll.operator.islands.loss import StageKey, deletable, left_over
from atoll.operator.placement import Assignment
from atoll.operator.placement.capacity import Requests, expert_pod_size
from atoll.operator.planning import ExpertPlacement, FleetState, PlacementJob, free_gpus, place_experts, plan_stages
from atoll.operator.pods import Owner, StageAttempt, build_pod, pod_name
from atoll.operator.reconcile.actions import CreatePod, DeletePod
from atoll.operator.reconcile.context import Outcome, Tick
from atoll.stages import StageJob


def start_attempts(tick: Tick, decisions: dict[str, StageDecision], out: Outcome) -> dict[str, StageDecision]:
    """The decisions with every attempt to start placed and its pod asked for."""
    pods = {pod.name: pod for pod in tick.pods}
    unreached = tick.unreachable_islands
    for slug, decision in decisions.items():
        for name in decision.delete_pods:
            if name in pods and not deletable(pods[name], unreached):
                continue  # on an island that does not answer: deleted once it does
            out.actions.append(DeletePod(name, why=decision.delete_why, grace_seconds=0))
        for name in decision.stop_pods:
            job = StageJob.from_slug(slug)
            out.actions.append(DeletePod(name, why=f"{decision.stop_why}: checkpointing to move"))
            out.events.append(
                tick.event(
                    job,
                    "Normal",
                    "Evacuating",
                    f"{job.label}: {decision.stop_why}; pod {name} is stopped (it checkpoints at its next step)"
                    " and the stage resumes from that checkpoint on other capacity",
                )
            )
        if decision.avoid_node is not None and decision.status.last_failure:
            job = StageJob.from_slug(slug)
            out.events.append(tick.event(job, "Warning", "PendingTimeout", decision.status.last_failure))
    current: dict[StageKey, int] = {}
    for slug, decision in decisions.items():
        job = StageJob.from_slug(slug)
        current[(job.stage, job.expert)] = max(decision.status.attempt, decision.create_attempt or 0)
    remove_left_overs(tick, current, out)
    starting = {slug: d for slug, d in decisions.items() if d.create_attempt is not None}
    if not starting:
        return decisions
    if not tick.obs.placing:  # no usage at hand: each stays as the last tick left it, until one that places
        held = {slug: StageDecision(tick.stage_status(StageJob.from_slug(slug), tick.previous)) for slug in starting}
        return {**decisions, **held}
    placed = _place(tick, starting)
    if placed.experts.assignments:  # the plan an expert starts by (not every tick a queued one waits)
        out.plan = placed.experts.plan
    decided = dict(decisions)
    for slug, decision in starting.items():
        decided[slug] = _start(tick, StageJob.from_slug(slug), decision, placed, out)
    return decided


def remove_left_overs(tick: Tick, current: Mapping[StageKey, int], out: Outcome) -> None:
    """Delete the pods a lost island kept of attempts replaced since (`current`: each stage's
    current attempt), once it answers again (atoll.operator.islands.loss.left_over)."""
    deleting = {action.name for action in out.actions if isinstance(action, DeletePod)}
    for pod in left_over(tick.pods, current, tick.unreachable_islands):
        if pod.name not in deleting:
            why = f"attempt {pod.attempt} was replaced while island {pod.island} was lost"
            out.actions.append(DeletePod(pod.name, why=why, grace_seconds=0))


@dataclass(frozen=True)
class _Placed:
    """Where each starting attempt goes (experts: a pinned plan; short stages: a node)."""

    assignments: dict[str, Assignment]
    """By stage slug; absent: no place now."""
    experts: ExpertPlacement


def _place(tick: Tick, starting: Mapping[str, StageDecision]) -> _Placed:
    """Experts moving to planned faster GPUs first, the other experts through the makespan
    planner, then the short stages on what is left."""
    obs = tick.obs
    statuses = tick.expert_statuses
    lost = tick.lost_nodes
    nodes = tuple(node for node in obs.nodes or () if node.name not in lost)  # nothing new goes to a lost node
    # nor to one being removed (a deletion taint, a termination condition): kept in view
    # unschedulable (its GPUs still count against its pool's limit until it is gone), whatever
    # the run tolerates
    leaving = tick.removal_notices
    nodes = tuple(replace(n, unschedulable=True) if n.name in leaving else n for n in nodes)
    if not (obs.store.run_uri or "").startswith("s3://"):
        nodes = tuple(node for node in nodes if node.island == HOME_ISLAND)  # islands reach an S3 store only
    by_name = {node.name: node for node in nodes}
    busy = dict(obs.busy_gpus)
    requested = dict(obs.busy_requests)
    size = expert_pod_size(tick.placement_spec())
    plan: dict[str, Assignment] = {}
    placed_anew: list[int] = []
    for slug in starting:
        job = StageJob.from_slug(slug)
        if job.expert is None:
            continue
        move = statuses[job.expert].move if job.expert in statuses else None
        target = by_name.get(move.node) if move is not None else None
        if move is not None and target is not None and free_gpus(target, busy, requested, size) >= move.gpus:
            plan[slug] = Assignment(
                expert=job.expert,
                node=move.node,
                gpu_product=move.gpu_product,
                gpus=move.gpus,
                micro_batch=move.micro_batch,
                grad_accum=move.grad_accum,
            )
            busy[move.node] = busy.get(move.node, 0) + move.gpus
            requested[move.node] = requested.get(move.node, Requests()) + size(move.gpus)
        else:
            placed_anew.append(job.expert)
    # An expert starting a new attempt no longer runs where its old pod is (being deleted).
    running = {k: a for k, a in tick.running_experts().items() if k not in placed_anew}
    fleet = FleetState(
        spec=tick.placement_spec(),
        nodes=nodes,
        running=running,
        running_requests=tick.running_requests(running),
        progress={k: p for k in statuses if (p := obs.store.progress.get(StageJob("expert", k).slug)) is not None},
        cluster_sizes=obs.store.cluster_sizes or tick.previous.cluster_sizes or None,
        cluster_pools=obs.node_pools,
        busy_gpus=busy,
        busy_requests=requested,
        now=obs.now,
        deadline_from=tick.deadline_from(),
    )
    avoid: dict[int, str] = {}
    for slug, decision in starting.items():
        expert = StageJob.from_slug(slug).expert
        if expert is not None and decision.avoid_node is not None:
            avoid[expert] = decision.avoid_node
    experts = _place_elsewhere(fleet, placed_anew, avoid)
    for k, assignment in experts.assignments.items():
        plan[StageJob("expert", k).slug] = assignment
        busy[assignment.node] = busy.get(assignment.node, 0) + assignment.gpus
    jobs = []
    for slug in starting:
        job = StageJob.from_slug(slug)
        if job.stage == "expert":
            continue
        router = job.stage == "router"
        jobs.append(
            PlacementJob(
                key=slug,
                global_batch=tick.spec.router.recipe().global_batch_size if router else None,
                micro_batch=tick.spec.router.micro_batch_size if router else None,
                gpus=0 if job.stage == "assemble" else 1,
            )
        )
    plan.update(plan_stages(jobs, nodes, busy, tick.spec.placement, obs.now))
    return _Placed(plan, experts)


def _place_elsewhere(fleet: FleetState, starting: list[int], avoid: Mapping[int, str]) -> ExpertPlacement:
    """The experts' placement with the nodes in `avoid` counted as full (each never took that
    expert's pinned pod within the pending timeout), when that places every such expert now;
    else the placement over the fleet as it is (a node that may take it later beats none).
    A pool in `avoid` (by its placeholder: no node came for the pod that waited for it) is
    left out of the plan either way."""
    if not avoid:
        return place_experts(fleet, starting)
    avoided = set(avoid.values())
    pools = frozenset(pool.pool for pool in fleet.pools() if pool.placeholder in avoided)
    if pools:
        fleet = replace(fleet, excluded_pools=fleet.excluded_pools | pools)
    full = {node.name: node.gpus for node in fleet.nodes if node.name in avoided}
    if not full:
        return place_experts(fleet, starting)
    elsewhere = place_experts(replace(fleet, busy_gpus={**fleet.busy_gpus, **full}), starting)
    if all(k in elsewhere.assignments for k in avoid):
        return elsewhere
    return place_experts(fleet, starting)


def _start(tick: Tick, job: StageJob, decision: StageDecision, placed: _Placed, out: Outcome) -> StageDecision:
    """The pod of the decided attempt (or why it cannot start yet)."""
    assignment = placed.assignments.get(job.slug)
    if assignment is None:
        return StageDecision(
            decision.status.model_copy(update={"phase": "Pending", "message": _waiting(tick, job, placed, out)})
        )
    store = tick.obs.store
    assert store.run_uri is not None
    assert store.spec_uri is not None
    attempt = decision.create_attempt or 1
    owner = tick.owner
    view = tick.experts.get(job.expert) if job.expert is not None else None
    if view is not None and view.uid:
        owner = Owner(api_version=API_GROUP_VERSION, kind="DDMExpert", name=view.name, uid=view.uid)
    item = StageAttempt(
        run=tick.obs.run.name,
        namespace=tick.obs.run.namespace,
        job=job,
        attempt=attempt,
        spec_uri=store.spec_uri,
        store_uri=store.run_uri,
        store_secret=store.secret,
        owner=owner,
        assignment=assignment,
        pinned=job.stage == "expert",
    )
    name = pod_name(tick.obs.run.name, job, attempt)
    island = island_of(assignment.node)
    planned = f"planned node {assignment.node}"
    if assignment.pool is not None:
        planned = f"a new node of pool {assignment.pool}"
    where = f" on {assignment.gpu_product or 'a GPU'} ({planned})"
    started = tick.event(job, "Normal", "AttemptStarted", f"{job.label}: attempt {attempt}, pod {name}{where}")
    manifest = build_pod(item, tick.spec, tick.settings)
    if island != HOME_ISLAND:
        fleet = next((f for f in tick.obs.islands if f.name == island), None)
        if fleet is None:
            message = f"waiting for island {island} (planned node {assignment.node}) to be known again"
            return StageDecision(decision.status.model_copy(update={"phase": "Pending", "message": message}))
        manifest = island_pod(manifest, island_namespace=fleet.namespace, run_uid=tick.obs.run.uid)
    out.actions.append(
        CreatePod(
            job.slug,
            manifest,
            assignment.node,
            assignment.gpus,
            started=started,
            island=None if island == HOME_ISLAND else island,
            store_secret=store.secret,
        )
    )
    update: dict[str, object] = {
        "attempt": attempt,
        "pod": name,
        "message": waiting_message(attempt),
        "node": assignment.node if assignment.pool is None else None,  # recorded once a node takes it
        "gpu": assignment.gpu_product,
        "gpus": assignment.gpus,
    }
    if isinstance(decision.status, DDMExpertStatus):
        update.update(
            micro_batch=assignment.micro_batch,
            grad_accum=assignment.grad_accum,
            predicted_seconds=assignment.predicted_seconds or None,
            move=None,
            evacuation=None,
            island=island,
        )
    return StageDecision(decision.status.model_copy(update=update))


def _waiting(tick: Tick, job: StageJob, placed: _Placed, out: Outcome) -> str | None:
    """Why an attempt has no place yet (and a NoUsableNode trouble where nothing fits)."""
    if job.stage == "expert":
        experts = placed.experts
        if experts.error:
            out.troubles.append(Trouble("NoUsableNode", experts.error))
        return experts.error or experts.waiting
    gpu = tick.spec.placement.gpu
    wanted = f"a GPU with at least {gpu.min_memory_gi_b:g} GiB"
    if gpu.products:
        wanted += f" of {', '.join(gpu.products)}"
    if tick.spec.placement.node_selector:
        wanted += f" on nodes labelled {tick.spec.placement.node_selector}"
    message = f"waiting for a schedulable, healthy node with {wanted}"
    out.troubles.append(Trouble("NoUsableNode", message))
    return message
