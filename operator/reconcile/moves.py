"""Moving running experts to faster GPUs that became free: plan the move (placement's
`migrations`), then stop the expert right after the checkpoint of the move's step; the
launch step restarts it on the planned GPUs. A move is not a failure.
"""

from __future__ import annotations

from atoll.api.status import DDMExpertStatus, MoveStatus
from atoll.operator.attempts import StageDecision
from atoll.operator.planning import (
    distinct_nodes,
)
from atoll.operator.reconcile.state import (
    TickState,
    log,
    stage_key,
)


class MoveSteps(TickState):
    """Moving running experts to faster GPUs that became free: plan the move (placement's"""

    def _execute_moves(self) -> None:
        """Stop an expert whose move is planned once its checkpoint of the move's step exists."""
        pods = {(p.expert, p.attempt): p for p in self.observed.pods if p.stage == "expert"}
        for k, status in self._expert_statuses().items():
            move = status.move
            pod = pods.get((k, status.attempt))
            if move is None or pod is None or not pod.active or pod.phase != "Running":
                continue
            checkpoint = self.memory.checkpoints.get(stage_key("expert", k))
            if checkpoint is None or checkpoint.step < move.at_step:
                continue
            log.info("moving expert to faster GPUs", run=self.name, expert=k, pod=pod.name, to=move.node)
            self.kube.delete_pod(self.namespace, pod.name)
            self._event(
                stage_key("expert", k),
                "Normal",
                "Moving",
                f"expert {k} stops after its checkpoint at step {checkpoint.step} to move from {pod.node} to"
                f" {move.gpus}× {move.gpu_product} on {move.node}",
            )

    def _plan_moves(self, decisions: dict[str, StageDecision]) -> dict[str, StageDecision]:
        """Every move_check_seconds: which running experts gain from faster GPUs that became free."""
        from atoll.operator.placement import migrations

        every = self.settings.move_check_seconds
        running = {k: w for k, w in self._running_experts().items() if self._running_pod(k)}
        if every <= 0 or not running or self.monotonic() - self.memory.last_move_check < every:
            return decisions
        self.memory.last_move_check = self.monotonic()
        spec = self._placement_spec()
        with self.ledger.lock:
            busy = self.ledger.busy(self.observed.busy_gpus, self.observed.gpu_pods)
        mine: dict[str, int] = {}
        for where in running.values():
            mine[where.node] = mine.get(where.node, 0) + where.gpus
        others = {node: max(0, used - mine.get(node, 0)) for node, used in busy.items()}
        nodes = distinct_nodes(
            self.observed.nodes,
            keep={w.node for w in running.values()},
            experts=len(running),
            max_gpus=spec.placement.gpu.max_per_expert,
            busy_gpus=busy,
        )
        progress = {k: p for k in running if (p := self.memory.progress.get(stage_key("expert", k))) is not None}
        for move in migrations(
            spec,
            nodes,
            progress=progress,
            running=running,
            cluster_sizes=self.status.cluster_sizes or None,
            used_gpus=others,
            now=self.now,
        ):
            key = stage_key("expert", move.expert)
            decision = decisions.get(key)
            if decision is None or not isinstance(decision.status, DDMExpertStatus) or decision.status.move:
                continue
            target = move.to
            planned = MoveStatus(
                node=target.node,
                gpu_product=target.gpu_product,
                gpus=target.gpus,
                micro_batch=target.micro_batch,
                grad_accum=target.grad_accum,
                at_step=move.at_step,
                gain_seconds=round(move.gain_seconds, 1),
            )
            decisions[key] = StageDecision(decision.status.model_copy(update={"move": planned}))
            self._event(
                key,
                "Normal",
                "MovePlanned",
                f"expert {move.expert} will move from {move.from_node} to {target.gpus}× {target.gpu_product} on"
                f" {target.node} after its checkpoint at step {move.at_step}: predicted to finish"
                f" {move.gain_seconds:.0f} s sooner",
            )
        return decisions
