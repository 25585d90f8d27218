"""Moving running experts to faster GPUs that became free — on another node, or more GPUs of
their own node (growing in place) — as decisions: plan the move
(placement's `migrations`, every move_check_seconds), then stop the expert right after the
checkpoint of the move's step; the launch step restarts it on the planned GPUs. A move is
not a failure. Pure: returns DeletePod actions and the experts' new `move` fields.
"""

from __future__ import annotations

from atoll.api.status import DDMExpertStatus, MoveStatus
from atoll.operator.attempts import StageDecision
from atoll.operator.planning import FleetState, plan_moves
from atoll.operator.reconcile.actions import DeletePod
from atoll.operator.reconcile.context import Outcome, Tick
from atoll.stages import StageJob


def stop_moving_experts(tick: Tick, out: Outcome) -> None:
    """Stop an expert whose move is planned once its checkpoint of the move's step exists."""
    pods = {(p.expert, p.attempt): p for p in tick.pods if p.stage == "expert"}
    for k, status in tick.expert_statuses.items():
        move = status.move
        pod = pods.get((k, status.attempt))
        if move is None or pod is None or not pod.active or pod.phase != "Running":
            continue
        job = StageJob("expert", k)
        checkpoint = tick.obs.store.checkpoints.get(job.slug)
        if checkpoint is None or checkpoint.step < move.at_step:
            continue
        out.actions.append(DeletePod(pod.name, why=f"moving to {move.node}"))
        where = _change(pod.node, pod.gpus, move.node, move.gpus, move.gpu_product)
        out.events.append(
            tick.event(
                job, "Normal", "Moving", f"expert {k} stops after its checkpoint at step {checkpoint.step} to {where}"
            )
        )


def _change(from_node: str | None, from_gpus: int, to_node: str, to_gpus: int, product: str) -> str:
    """What a move does, in words: grow (or shrink) in place, or move to another node."""
    if from_node == to_node:
        verb = "grow" if to_gpus > from_gpus else "shrink"
        return f"{verb} from {from_gpus} to {to_gpus} {product} GPU(s) on {to_node}"
    return f"move from {from_node} to {to_gpus}× {product} on {to_node}"


def move_check_due(tick: Tick) -> bool:
    """move_check_seconds have passed since the last check (the first comes one interval after
    the run's experts started: a run that just started has nothing to gain yet)."""
    every = tick.settings.move_check_seconds
    return every > 0 and tick.obs.monotonic - tick.memory.last_move_check >= every


def plan_expert_moves(tick: Tick, decisions: dict[str, StageDecision], out: Outcome) -> dict[str, StageDecision]:
    """Which running experts gain from faster GPUs that became free (when the check is due)."""
    obs = tick.obs
    running = tick.running_experts()
    fleet = FleetState(
        spec=tick.placement_spec(),
        nodes=obs.nodes or (),
        running=running,
        progress={k: p for k in running if (p := obs.store.progress.get(StageJob("expert", k).slug)) is not None},
        cluster_sizes=obs.store.cluster_sizes or tick.previous.cluster_sizes or None,
        cluster_pools=obs.node_pools,
        busy_gpus=obs.busy_gpus,
        busy_requests=obs.busy_requests,
        running_requests=tick.running_requests(running),
        now=obs.now,
        deadline_from=tick.deadline_from(),
    )
    decided = dict(decisions)
    for move in plan_moves(fleet, movable=set(tick.running_experts(bound_only=True))):
        job = StageJob("expert", move.expert)
        decision = decided.get(job.slug)
        if decision is None or not isinstance(decision.status, DDMExpertStatus) or decision.status.move:
            continue
        if decision.status.evacuation:
            continue  # leaving its node already: placed anew once stopped
        target = move.to
        assert target.micro_batch is not None
        assert target.grad_accum is not None
        planned = MoveStatus(
            node=target.node,
            gpu_product=target.gpu_product,
            gpus=target.gpus,
            micro_batch=target.micro_batch,
            grad_accum=target.grad_accum,
            at_step=move.at_step,
            gain_seconds=round(move.gain_seconds, 1),
        )
        decided[job.slug] = StageDecision(decision.status.model_copy(update={"move": planned}))
        out.events.append(
            tick.event(
                job,
                "Normal",
                "MovePlanned",
                f"expert {move.expert} will"
                f" {_change(move.from_node, running[move.expert].gpus, target.node, target.gpus, target.gpu_product)}"
                f" after its checkpoint at step {move.at_step}: predicted to finish {move.gain_seconds:.0f} s sooner",
            )
        )
    return decided
