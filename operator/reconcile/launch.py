"""Starting stage attempts in one reconciliation: place them (experts through the makespan
planner, under the operator's GPU ledger), create their pods (create-if-absent: names are
deterministic), and delete pods stranded on vanished nodes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

from atoll.api.spec import API_GROUP_VERSION
from atoll.api.status import StageStatus
from atoll.operator import storage
from atoll.operator.attempts import StageDecision
from atoll.operator.conditions import Trouble
from atoll.operator.observe import PodView
from atoll.operator.planning import (
    Assignment,
    PlacementJob,
    place_experts,
    plan_stages,
)
from atoll.operator.pods import Owner, StageAttempt, build_pod, pod_name
from atoll.operator.reconcile.state import (
    CPU_ONLY_STAGES,
    PLACED_STAGES,
    TRAINING_STAGES,
    TickState,
    label,
    log,
    parse_key,
    stage_key,
)
from atoll.store import StoreError


class LaunchSteps(TickState):
    """Starting stage attempts in one reconciliation: place them (experts through the makespan"""

    def _act(self, decisions: dict[str, StageDecision]) -> dict[str, StageDecision]:
        """Create the pods the decisions ask for (placed first), delete stranded ones."""
        assert self.spec is not None
        assert self.target is not None
        for decision in decisions.values():
            for name in decision.delete_pods:
                log.warning("deleting pod stranded on a vanished node", pod=name, namespace=self.namespace)
                self.kube.delete_pod(self.namespace, name, grace_seconds=0)
        starting = {key: self._claimed(key, d) for key, d in decisions.items() if d.create_attempt is not None}
        if not starting:
            return decisions
        # Plan and reserve under the ledger's lock: runs plan one after the other, each
        # seeing the GPUs the ones before it promised (their pods may not be watched yet).
        ledger = self.ledger
        with ledger.lock:
            busy = ledger.busy(self.observed.busy_gpus, self.observed.gpu_pods)
            plan = self._plan(starting, busy)
            for key, assignment in plan.items():
                ledger.reserve(self._pod_key(key, starting[key]), assignment.node, assignment.gpus)
        for key, decision in starting.items():
            decisions[key] = self._start(key, decision, plan.get(key))
        return decisions

    def _pod_key(self, key: str, decision: StageDecision) -> str:
        stage, expert = parse_key(key)
        return f"{self.namespace}/{pod_name(self.name, stage, expert, decision.create_attempt or 1)}"

    def _claimed(self, key: str, decision: StageDecision) -> StageDecision:
        """A training stage's next attempt lies above every attempt its store has seen claimed."""
        assert self.store is not None
        stage, expert = parse_key(key)
        attempt = decision.create_attempt or 1
        if stage in TRAINING_STAGES:
            # Unreadable claim: fencing still protects, a stale attempt number exits 3.
            with contextlib.suppress(StoreError):
                attempt = max(attempt, storage.claimed_attempt(self.store, stage, expert) + 1)
        if attempt == decision.create_attempt:
            return decision
        return StageDecision(decision.status.model_copy(update={"attempt": attempt}), attempt, decision.delete_pods)

    def _plan(self, starting: Mapping[str, StageDecision], busy_gpus: Mapping[str, int]) -> dict[str, Assignment]:
        """Experts moving to planned faster GPUs first, the other experts through the makespan
        planner, then the short stages on what is left."""
        assert self.spec is not None
        statuses = self._expert_statuses()
        capacity = {node.name: node.gpus for node in self.observed.nodes}
        busy = dict(busy_gpus)
        plan: dict[str, Assignment] = {}
        placed_anew: list[int] = []
        for key in starting:
            stage, k = parse_key(key)
            if stage != "expert" or k is None:
                continue
            move = statuses[k].move if k in statuses else None
            if move is not None and busy.get(move.node, 0) + move.gpus <= capacity.get(move.node, 0):
                plan[key] = Assignment(
                    node=move.node,
                    gpu_product=move.gpu_product,
                    gpus=move.gpus,
                    micro_batch=move.micro_batch,
                    grad_accum=move.grad_accum,
                    pin=True,
                )
                busy[move.node] = busy.get(move.node, 0) + move.gpus
            else:
                placed_anew.append(k)
        placement = place_experts(
            self._placement_spec(),
            self.observed.nodes,
            starting=placed_anew,
            running=self._running_experts(),
            progress={k: p for k in statuses if (p := self.memory.progress.get(stage_key("expert", k))) is not None},
            cluster_sizes=self.status.cluster_sizes or None,
            busy_gpus=busy,
            now=self.now,
        )
        self.expert_placement = placement
        for k, assignment in placement.assignments.items():
            plan[stage_key("expert", k)] = assignment
            busy[assignment.node] = busy.get(assignment.node, 0) + assignment.gpus
        jobs = []
        for key in starting:
            stage, _ = parse_key(key)
            if stage == "expert":
                continue
            recipe = self.spec.router.recipe() if stage == "router" else None
            jobs.append(
                PlacementJob(
                    key=key,
                    preset=recipe.preset if recipe else None,
                    samples=recipe.steps * recipe.global_batch_size if recipe else 0,
                    global_batch=recipe.global_batch_size if recipe else None,
                    micro_batch=self.spec.router.micro_batch_size if stage == "router" else None,
                    gpus=0 if stage in CPU_ONLY_STAGES else 1,
                )
            )
        plan.update(plan_stages(jobs, self.observed.nodes, busy, self.spec.placement))
        return plan

    def _start(self, key: str, decision: StageDecision, assignment: Assignment | None) -> StageDecision:
        """Create the pod of the decided attempt (or explain why it cannot start yet)."""
        assert self.spec is not None
        assert self.target is not None
        assert self.store is not None
        stage, expert = parse_key(key)
        previous = self._previous_stage_status(key)
        if stage == "expert" and assignment is None:
            placement = self.expert_placement
            if placement is not None and placement.error:
                self.troubles.append(Trouble("NoUsableNode", placement.error))
            message = (placement.error or placement.waiting) if placement is not None else None
            return StageDecision(previous.model_copy(update={"phase": "Pending", "message": message}))
        if stage in PLACED_STAGES and assignment is None:
            return StageDecision(previous.model_copy(update={"phase": "Pending", "message": self._no_node_message()}))
        attempt = decision.create_attempt or 1
        views = {view.expert: view for view in self.observed.experts}
        owner = self.owner
        if expert is not None and expert in views and views[expert].uid:
            view = views[expert]
            owner = Owner(api_version=API_GROUP_VERSION, kind="DDMExpert", name=view.name, uid=view.uid)
        item = StageAttempt(
            run=self.name,
            namespace=self.namespace,
            stage=stage,
            expert=expert,
            attempt=attempt,
            spec_uri=self.target.spec_uri,
            store_uri=self.target.run_uri,
            store_secret=self.target.secret if self.target.s3 else None,
            owner=owner,
            assignment=assignment,
        )
        manifest = build_pod(item, self.spec, self.settings)
        from kubernetes.client.exceptions import ApiException

        try:
            created = self.kube.create_pod(manifest)
        except ApiException as error:
            self.ledger.release(self._pod_key(key, decision))
            message = f"cannot create pod {manifest['metadata']['name']}: {error.status} {error.reason}"
            self.troubles.append(Trouble("PodCreationFailed", message))
            return StageDecision(previous.model_copy(update={"phase": "Pending", "message": message}))
        name = pod_name(self.name, stage, expert, attempt)
        update: dict[str, Any] = {"attempt": attempt, "pod": name, "message": f"attempt {attempt} created"}
        if assignment is not None:
            update.update(node=assignment.node, gpu=assignment.gpu_product, gpus=assignment.gpus)
            if stage == "expert":
                update.update(
                    micro_batch=assignment.micro_batch,
                    grad_accum=assignment.grad_accum,
                    predicted_seconds=assignment.predicted_seconds,
                    move=None,
                )
        status = decision.status.model_copy(update=update)
        if created:
            where = f" on {assignment.gpu_product or 'a GPU'} (planned node {assignment.node})" if assignment else ""
            self._event(key, "Normal", "AttemptStarted", f"{label(key)}: attempt {attempt}, pod {name}{where}")
        return StageDecision(status)

    def _no_node_message(self) -> str:
        assert self.spec is not None
        gpu = self.spec.placement.gpu
        wanted = f"a GPU with at least {gpu.min_memory_gi_b:g} GiB"
        if gpu.products:
            wanted += f" of {', '.join(gpu.products)}"
        if self.spec.placement.node_selector:
            wanted += f" on nodes labelled {self.spec.placement.node_selector}"
        message = f"waiting for a schedulable, healthy node with {wanted}"
        self.troubles.append(Trouble("NoUsableNode", message))
        return message

    def _confirm_missing(self, status: StageStatus, pods: list[PodView]) -> list[PodView]:
        """The index may lag a pod created a moment ago: ask the API server before calling it lost."""
        if status.attempt == 0 or status.phase not in ("Pending", "Running") or not status.pod:
            return pods
        if any(p.attempt >= status.attempt for p in pods):
            return pods
        body = self.kube.get_pod(self.namespace, status.pod)
        view = PodView.from_body(body) if body is not None else None
        return [*pods, view] if view is not None else pods
