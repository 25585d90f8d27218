"""One reconciliation of one DDMRun: observe → decide → act → the run's new status.

Observe: the run's pods, DDMExperts and the nodes (kopf indexes), its store (progress.json,
checkpoints, partition results; throttled). Decide: every stage through
atoll.operator.attempts, the run through atoll.operator.machine. Act: create-if-absent
pods and DDMExperts, delete stranded pods, patch DDMExpert statuses. Returns the run's
status and the Events to post; it never posts or patches the DDMRun itself.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import ValidationError

from atoll import layout
from atoll.api.errors import format_validation_error
from atoll.api.spec import API_GROUP_VERSION, DDMRunSpec
from atoll.api.status import CheckpointStatus, DDMExpertStatus, DDMRunStatus, MoveStatus, StageStatus
from atoll.log import get_logger
from atoll.operator import storage
from atoll.operator.attempts import StageDecision, StageInputs, decide_stage
from atoll.operator.conditions import Trouble, changed, run_conditions
from atoll.operator.experts import build_expert
from atoll.operator.kube import Kube
from atoll.operator.ledger import GpuLedger
from atoll.operator.machine import TERMINAL, RunFacts, advance, run_progress, stage_ready
from atoll.operator.observe import ExpertView, NodeView, PodView
from atoll.operator.planning import (
    Assignment,
    ExpertPlacement,
    PlacementJob,
    Where,
    distinct_nodes,
    place_experts,
    plan_stages,
)
from atoll.operator.pods import Owner, StageAttempt, build_pod, pod_name
from atoll.operator.settings import OperatorSettings
from atoll.progress import StageProgress
from atoll.store import Store, StoreError

log = get_logger(__name__)

SINGLE_STAGES = ("partition", "router", "assemble", "evaluate")
PLACED_STAGES = frozenset({"partition", "expert", "router", "assemble", "evaluate"})
"""Every stage is placed on the GPU fleet; assemble asks for no GPU, only for a fleet node."""
CPU_ONLY_STAGES = frozenset({"assemble"})
TRAINING_STAGES = frozenset({"expert", "router"})


def utcnow() -> datetime:
    return datetime.now(UTC)


def stage_key(stage: str, expert: int | None) -> str:
    return f"expert-{expert}" if stage == "expert" else stage


def _parse_key(key: str) -> tuple[str, int | None]:
    return ("expert", int(key.removeprefix("expert-"))) if key.startswith("expert-") else (key, None)


def _label(key: str) -> str:
    stage, expert = _parse_key(key)
    return f"expert {expert}" if expert is not None else stage


@dataclass
class RunMemory:
    """What the operator remembers of one run between ticks. Lost on restart, where the
    statuses in the API server and the store give the same picture back."""

    status: DDMRunStatus | None = None
    experts: dict[int, DDMExpertStatus] = field(default_factory=dict)
    store: Store | None = None
    store_identity: tuple[str, str | None, str | None] | None = None
    last_poll: float = -math.inf
    progress: dict[str, StageProgress | None] = field(default_factory=dict)
    checkpoints: dict[str, CheckpointStatus | None] = field(default_factory=dict)
    store_down_since: datetime | None = None
    store_error: str | None = None
    last_move_check: float = -math.inf


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event to post on `target` (a DDMRun or DDMExpert body)."""

    target: Mapping[str, Any]
    type: str
    reason: str
    message: str


@dataclass(frozen=True)
class Observed:
    """The cluster as the kopf indexes show it."""

    pods: Sequence[PodView]
    """This run's pods."""
    experts: Sequence[ExpertView]
    """This run's DDMExperts."""
    nodes: Sequence[NodeView]
    busy_gpus: Mapping[str, int]
    """GPUs held by active pods, per node."""
    gpu_pods: Collection[str] = ()
    """namespace/name of every pod counted in busy_gpus."""


@dataclass
class Outcome:
    status: DDMRunStatus
    events: list[Event]


class _Failure(Exception):  # noqa: N818 - control flow inside one reconciliation, never escapes
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class Reconciler:
    """Reconciles DDMRuns; one per operator process, shared by every run's timer."""

    def __init__(
        self,
        kube: Kube,
        settings: OperatorSettings,
        *,
        clock: Callable[[], datetime] = utcnow,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kube = kube
        self.settings = settings
        self.ledger = GpuLedger()
        self.clock = clock
        self.monotonic = monotonic

    # --- the tick ----------------------------------------------------------------------

    def reconcile(self, body: Mapping[str, Any], memory: RunMemory, observed: Observed) -> Outcome:
        """Bring one run one step closer to done; return its new status and Events."""
        tick = _Tick(self, body, memory, observed)
        try:
            tick.run()
        except _Failure as failure:
            tick.fail(failure.reason, failure.message)
        memory.status = tick.status
        return Outcome(tick.status, tick.events)


def parse_status(raw: Mapping[str, Any] | None) -> DDMRunStatus:
    """The status stored in the API server (an unreadable one starts over, keeping the phase)."""
    try:
        return DDMRunStatus.model_validate(raw or {})
    except ValidationError as error:
        log.warning("unreadable DDMRun status, starting from scratch", error=str(error))
        phase = (raw or {}).get("phase")
        return DDMRunStatus(phase=phase) if phase in ("Succeeded", "Failed") else DDMRunStatus()


def _expert_status(view: ExpertView | None) -> DDMExpertStatus:
    if view is None:
        return DDMExpertStatus()
    try:
        return DDMExpertStatus.model_validate(view.status)
    except ValidationError:
        return DDMExpertStatus()


class _Tick:
    """The state of one reconciliation (split from Reconciler to keep each step readable)."""

    def __init__(self, owner: Reconciler, body: Mapping[str, Any], memory: RunMemory, observed: Observed) -> None:
        self.kube = owner.kube
        self.ledger = owner.ledger
        self.settings = owner.settings
        self.monotonic = owner.monotonic
        self.now = owner.clock()
        self.body = body
        self.memory = memory
        self.observed = observed
        metadata = body["metadata"]
        self.name: str = metadata["name"]
        self.namespace: str = metadata.get("namespace", "default")
        self.generation: int | None = metadata.get("generation")
        self.owner = Owner(api_version=API_GROUP_VERSION, kind="DDMRun", name=self.name, uid=metadata.get("uid", ""))
        self.previous = memory.status or parse_status(body.get("status"))
        self.status = self.previous.model_copy(deep=True)
        self.events: list[Event] = []
        self.troubles: list[Trouble] = []
        self.spec: DDMRunSpec | None = None
        self.target: storage.StoreTarget | None = None
        self.store: Store | None = None
        self.expert_placement: ExpertPlacement | None = None

    # --- top level ---------------------------------------------------------------------

    def run(self) -> None:
        if self.previous.phase in TERMINAL:
            if self.previous.phase == "Failed":
                self._stop_pods()
            return
        self.spec = self._parse_spec()
        self.status.start_time = self.status.start_time or self.now
        self.target, self.store = self._open_store()
        store_ready = self._ensure_spec()
        if store_ready:
            self._poll_store()
        stages = self._decide(store_ready)
        self._finish(store_ready, stages)

    def fail(self, reason: str, message: str) -> None:
        """Move the run to Failed (from any phase) and stop its pods."""
        self._transition(["Failed"], reason=reason, message=message)
        self._stop_pods()

    # --- spec and store ----------------------------------------------------------------

    def _parse_spec(self) -> DDMRunSpec:
        try:
            spec = DDMRunSpec.model_validate(self.body.get("spec") or {})
        except ValidationError as error:
            raise _Failure("InvalidSpec", "; ".join(format_validation_error(error, "spec"))) from None
        return spec

    def _placement_spec(self) -> DDMRunSpec:
        """The spec as placement sees it: the operator's GPU-per-pod cap applied."""
        assert self.spec is not None
        cap = self.settings.max_gpus_per_pod
        gpu = self.spec.placement.gpu
        if cap is None or gpu.max_per_expert <= cap:
            return self.spec
        placement = self.spec.placement.model_copy(update={"gpu": gpu.model_copy(update={"max_per_expert": cap})})
        return self.spec.model_copy(update={"placement": placement})

    def _open_store(self) -> tuple[storage.StoreTarget, Store]:
        assert self.spec is not None
        try:
            target = storage.store_target(self.spec, self.namespace, self.name, self.settings)
            secret_version = None
            env = None
            if target.s3 and target.secret:
                secret = self.kube.get_secret(self.namespace, target.secret)
                env = storage.credentials(secret, target.secret, self.namespace)
                secret_version = (secret or {}).get("metadata", {}).get("resourceVersion")
            identity = (target.run_uri, target.secret, secret_version)
            if self.memory.store is None or self.memory.store_identity != identity:
                self.memory.store = storage.open_run_store(target, env)
                self.memory.store_identity = identity
        except storage.RunSetupError as error:
            raise _Failure(error.reason, error.message) from None
        return target, self.memory.store

    def _ensure_spec(self) -> bool:
        """spec.json in the store (once); False while the store cannot be reached."""
        assert self.spec is not None
        assert self.store is not None
        assert self.target is not None
        if self.status.store_uri:
            return True
        try:
            storage.ensure_spec(self.store, self.spec)
        except storage.RunSetupError as error:
            raise _Failure(error.reason, error.message) from None
        except StoreError as error:
            problem = storage.classify_store_error(error, self.target)
            if problem.permanent:
                raise _Failure(problem.reason, problem.message) from None
            since = self.memory.store_down_since or self.now
            self.memory.store_down_since = since
            waited = (self.now - since).total_seconds()
            if waited >= self.settings.store_grace_seconds:
                raise _Failure(
                    "StoreUnreachable",
                    f"{problem.message}; the run's store was never reachable in {waited:.0f} s",
                ) from None
            self.troubles.append(Trouble("StoreUnavailable", problem.message))
            return False
        self.memory.store_down_since = None
        self.status.store_uri = self.target.run_uri
        return True

    def _poll_keys(self) -> list[str]:
        """Stages whose heartbeat is worth reading now: not final, and started or ready."""
        status = self.status
        keys = []
        experts_done = bool(self.memory.experts) and all(
            s.phase == "Succeeded" for s in self._expert_statuses().values()
        )
        singles = {
            "partition": True,
            "router": status.stages.partition.phase == "Succeeded",
            "assemble": experts_done and status.stages.router.phase == "Succeeded",
            "evaluate": status.stages.assemble.phase == "Succeeded",
        }
        for key, ready in singles.items():
            stage_status: StageStatus = getattr(status.stages, key)
            if stage_status.phase not in ("Succeeded", "Failed") and (ready or stage_status.attempt > 0):
                keys.append(key)
        for k, expert in self._expert_statuses().items():
            if expert.phase not in ("Succeeded", "Failed"):
                keys.append(stage_key("expert", k))
        return keys

    def _poll_store(self) -> None:
        """Read heartbeats, checkpoints and partition results (at most every store_poll_seconds)."""
        assert self.store is not None
        memory = self.memory
        if self.monotonic() - memory.last_poll < self.settings.store_poll_seconds:
            if memory.store_error is not None:
                self.troubles.append(Trouble("StoreUnavailable", memory.store_error))
            return
        memory.last_poll = self.monotonic()
        try:
            for key in self._poll_keys():
                stage, expert = _parse_key(key)
                progress = storage.read_progress(self.store, stage, expert)
                memory.progress[key] = progress
                if stage in TRAINING_STAGES and progress is not None:
                    known = memory.checkpoints.get(key)
                    newest = progress.last_checkpoint
                    if newest is not None and (known is None or known.step != newest.step):
                        memory.checkpoints[key] = storage.last_checkpoint(self.store, stage, expert)
            if self.status.stages.partition.phase == "Succeeded" and not self.status.cluster_sizes:
                self.status.cluster_sizes = storage.cluster_sizes(self.store) or []
        except StoreError as error:
            since = memory.store_down_since or self.now
            memory.store_down_since = since
            memory.store_error = f"{self.target.root if self.target else 'the store'} unreachable since " + (
                f"{since.isoformat(timespec='seconds')}: {error}"
            )
            self.troubles.append(Trouble("StoreUnavailable", memory.store_error))
            return
        if memory.store_down_since is not None:
            log.info("store reachable again", run=self.name, namespace=self.namespace)
        memory.store_down_since = None
        memory.store_error = None

    # --- stages ------------------------------------------------------------------------

    def _expert_statuses(self) -> dict[int, DDMExpertStatus]:
        views = {view.expert: view for view in self.observed.experts}
        statuses = {k: _expert_status(view) for k, view in views.items()}
        statuses.update({k: s for k, s in self.memory.experts.items() if k in views})
        return statuses

    def _inputs(self, key: str, status: StageStatus, ready: bool) -> StageInputs:
        assert self.spec is not None
        stage, expert = _parse_key(key)
        pods = [p for p in self.observed.pods if p.stage == stage and p.expert == expert]
        pods = self._confirm_missing(status, pods)
        current = next((p for p in pods if p.attempt == status.attempt), None)
        moving = isinstance(status, DDMExpertStatus) and status.move is not None
        return StageInputs(
            moving=moving and (current is None or not current.active),
            ready=ready,
            pods=pods,
            status=status,
            progress=self.memory.progress.get(key),
            claimed_attempt=0,
            nodes=frozenset(node.name for node in self.observed.nodes) if self.observed.nodes else None,
            policy=self.spec.failure_policy,
            now=self.now,
        )

    def _confirm_missing(self, status: StageStatus, pods: list[PodView]) -> list[PodView]:
        """The index may lag a pod created a moment ago: ask the API server before calling it lost."""
        if status.attempt == 0 or status.phase not in ("Pending", "Running") or not status.pod:
            return pods
        if any(p.attempt >= status.attempt for p in pods):
            return pods
        body = self.kube.get_pod(self.namespace, status.pod)
        view = PodView.from_body(body) if body is not None else None
        return [*pods, view] if view is not None else pods

    def _decide(self, store_ready: bool) -> dict[str, StageDecision]:
        """Every stage's decision, in pipeline order so that a finished stage unblocks the next at once."""
        assert self.spec is not None
        decisions: dict[str, StageDecision] = {}
        stages = self.status.stages

        def facts() -> RunFacts:
            return self._facts(store_ready, decisions)

        decisions["partition"] = decide_stage(
            self._inputs("partition", stages.partition, stage_ready("partition", facts()))
        )
        if decisions["partition"].status.phase == "Succeeded":
            self._ensure_experts()
        self._execute_moves()
        statuses = self._expert_statuses()
        for k, expert_status in sorted(statuses.items()):
            key = stage_key("expert", k)
            decisions[key] = decide_stage(self._inputs(key, expert_status, stage_ready("expert", facts())))
        decisions["router"] = decide_stage(self._inputs("router", stages.router, stage_ready("router", facts())))
        decisions["assemble"] = decide_stage(
            self._inputs("assemble", stages.assemble, stage_ready("assemble", facts()))
        )
        decisions["evaluate"] = decide_stage(
            self._inputs("evaluate", stages.evaluate, stage_ready("evaluate", facts()))
        )
        return self._plan_moves(self._act(decisions))

    # --- moving experts to faster GPUs ------------------------------------------------------

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

    def _running_pod(self, expert: int) -> bool:
        return any(
            p.stage == "expert" and p.expert == expert and p.phase == "Running" and p.active for p in self.observed.pods
        )

    def _facts(self, store_ready: bool, decisions: Mapping[str, StageDecision]) -> RunFacts:
        assert self.spec is not None

        def phase(key: str) -> Any:
            if key in decisions:
                return decisions[key].status.phase
            if key.startswith("expert-"):
                return self._expert_statuses().get(_parse_key(key)[1] or 0, DDMExpertStatus()).phase
            return getattr(self.status.stages, key).phase

        experts = self._expert_statuses()
        complete = len(experts) == self.spec.partition.clusters
        failure = None
        for key, decision in decisions.items():
            if decision.failed:
                stage = _parse_key(key)[0]
                failure = (f"{stage.capitalize()}Failed", f"{_label(key)}: {decision.status.message}")
                break
        return RunFacts(
            store_ready=store_ready,
            partition=phase("partition"),
            experts=[phase(stage_key("expert", k)) for k in sorted(experts)] if complete else [],
            router=phase("router"),
            assemble=phase("assemble"),
            evaluate=phase("evaluate"),
            failure=failure,
        )

    def _ensure_experts(self) -> None:
        """One DDMExpert per cluster once the partition's cluster sizes are known."""
        assert self.spec is not None
        sizes = self.status.cluster_sizes
        if not sizes and self.store is not None:
            try:
                sizes = storage.cluster_sizes(self.store) or []
            except StoreError:
                sizes = []
            self.status.cluster_sizes = sizes
        if not sizes:
            return
        if len(sizes) != self.spec.partition.clusters:
            raise _Failure(
                "PartitionMismatch",
                f"the partition wrote {len(sizes)} clusters, partition.clusters is {self.spec.partition.clusters}",
            )
        if empty := [k for k, size in enumerate(sizes) if size == 0]:
            raise _Failure(
                "EmptyCluster",
                f"clusters {empty} of the partition are empty: the dataset has too few examples for"
                f" {len(sizes)} clusters",
            )
        existing = {view.expert for view in self.observed.experts}
        for k in range(len(sizes)):
            if k in existing:
                continue
            manifest = build_expert(
                run=self.name, namespace=self.namespace, owner=self.owner, spec=self.spec, expert=k, sizes=sizes
            )
            view = ExpertView.from_body(self.kube.ensure_expert(manifest))
            if view is not None:
                self.observed = Observed(
                    pods=self.observed.pods,
                    experts=[*self.observed.experts, view],
                    nodes=self.observed.nodes,
                    busy_gpus=self.observed.busy_gpus,
                )

    # --- acting ------------------------------------------------------------------------

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
        stage, expert = _parse_key(key)
        return f"{self.namespace}/{pod_name(self.name, stage, expert, decision.create_attempt or 1)}"

    def _claimed(self, key: str, decision: StageDecision) -> StageDecision:
        """A training stage's next attempt lies above every attempt its store has seen claimed."""
        assert self.store is not None
        stage, expert = _parse_key(key)
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
            stage, k = _parse_key(key)
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
            stage, _ = _parse_key(key)
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

    def _running_experts(self) -> dict[int, Where]:
        """Experts whose pod exists and holds (or waits for) its GPUs: re-planning keeps them."""
        statuses = self._expert_statuses()
        running: dict[int, Where] = {}
        for pod in self.observed.pods:
            if pod.stage != "expert" or pod.expert is None or not pod.active:
                continue
            node = pod.node or pod.planned_node
            if node is None:
                continue
            status = statuses.get(pod.expert, DDMExpertStatus())
            running[pod.expert] = Where(
                node=node, gpus=max(pod.gpus, 1), micro_batch=status.micro_batch, grad_accum=status.grad_accum
            )
        return running

    def _start(self, key: str, decision: StageDecision, assignment: Assignment | None) -> StageDecision:
        """Create the pod of the decided attempt (or explain why it cannot start yet)."""
        assert self.spec is not None
        assert self.target is not None
        assert self.store is not None
        stage, expert = _parse_key(key)
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
            self._event(key, "Normal", "AttemptStarted", f"{_label(key)}: attempt {attempt}, pod {name}{where}")
        return StageDecision(status)

    def _previous_stage_status(self, key: str) -> StageStatus:
        stage, expert = _parse_key(key)
        if expert is not None:
            return self._expert_statuses().get(expert, DDMExpertStatus())
        stage_status: StageStatus = getattr(self.status.stages, stage)
        return stage_status

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

    def _stop_pods(self) -> None:
        """Delete the run's active pods (a failed run frees its GPUs; its store data stays)."""
        for pod in self.observed.pods:
            if pod.active:
                self.kube.delete_pod(self.namespace, pod.name)

    def _event(self, key: str | None, kind: str, reason: str, message: str) -> None:
        target: Mapping[str, Any] = self.body
        if key is not None and key.startswith("expert-"):
            views = {view.expert: view for view in self.observed.experts}
            view = views.get(_parse_key(key)[1] or 0)
            if view is not None and view.uid:
                target = view.reference()
        self.events.append(Event(target, kind, reason, message))

    # --- the run's status --------------------------------------------------------------

    def _finish(self, store_ready: bool, decisions: dict[str, StageDecision]) -> None:
        assert self.spec is not None
        assert self.target is not None
        for key, decision in decisions.items():
            self._record(key, decision.status)
        facts = self._facts(store_ready, decisions)
        statuses = self._expert_statuses()
        clusters = self.spec.partition.clusters
        ready = sum(1 for s in statuses.values() if s.phase == "Succeeded")
        self.status.experts_total = clusters
        self.status.experts_ready = ready
        self.status.experts = f"{ready}/{clusters}"
        stages = self.status.stages
        fraction = run_progress(
            partition=_fraction(stages.partition),
            experts=[_fraction(s) for s in statuses.values()],
            clusters=clusters,
            router=_fraction(stages.router),
            assemble=_fraction(stages.assemble),
            evaluate=_fraction(stages.evaluate),
        )
        self.status.progress_fraction = round(fraction, 4)
        self.status.progress = f"{math.floor(fraction * 100)}%"
        if stages.assemble.phase == "Succeeded":
            self.status.model_uri = f"{self.target.run_uri}/{layout.MODEL}"
        self._collect_troubles(decisions)
        path = advance(self.previous.phase, facts)
        if facts.failure is not None and path == ["Failed"]:
            self.fail(*facts.failure)
            return
        self._transition(path, reason=None, message=None)

    def _record(self, key: str, status: StageStatus) -> None:
        """Keep a stage's new status; a DDMExpert's is patched at once when it changed."""
        stage, expert = _parse_key(key)
        if expert is None:
            old: StageStatus = getattr(self.status.stages, stage)
            if old.phase != status.phase:
                self._stage_event(key, old.phase, status)
            setattr(self.status.stages, stage, status)
            return
        assert isinstance(status, DDMExpertStatus)
        if key in self.memory.checkpoints and self.memory.checkpoints[key] is not None:
            status = status.model_copy(update={"last_checkpoint": self.memory.checkpoints[key]})
        old_expert = self._expert_statuses().get(expert, DDMExpertStatus())
        if old_expert.phase != status.phase:
            self._stage_event(key, old_expert.phase, status)
        views = {view.expert: view for view in self.observed.experts}
        if status != old_expert or expert not in self.memory.experts:
            view = views.get(expert)
            if view is not None:
                self.kube.patch_expert_status(self.namespace, view.name, status.model_dump(by_alias=True, mode="json"))
        self.memory.experts[expert] = status

    def _stage_event(self, key: str, old: str, status: StageStatus) -> None:
        if status.phase in ("Waiting", old):
            return
        kind = "Warning" if status.phase in ("Restarting", "Failed") else "Normal"
        reason = {"Pending": "Scheduling"}.get(status.phase, status.phase)
        what = {
            "Pending": f"attempt {status.attempt} waits for its pod to run",
            "Running": f"attempt {status.attempt} is running" + (f" on {status.node}" if status.node else ""),
            "Restarting": "is restarting",
            "Succeeded": "succeeded",
            "Failed": "failed",
        }[status.phase]
        detail = f": {status.message}" if status.message and status.phase in ("Restarting", "Failed") else ""
        self._event(key, kind, reason, f"{_label(key)} {what}{detail}")

    def _collect_troubles(self, decisions: Mapping[str, StageDecision]) -> None:
        stale = timedelta(seconds=self.settings.heartbeat_stale_seconds)
        for key, decision in decisions.items():
            status = decision.status
            if status.phase == "Restarting":
                self.troubles.append(Trouble("StageRestarting", f"{_label(key)}: {status.message}"))
            elif status.phase == "Running" and (key == "router" or key.startswith("expert-")):
                beat = status.heartbeat_time
                if beat is not None and self.now - beat > stale:
                    self.troubles.append(
                        Trouble(
                            "HeartbeatStale",
                            f"{_label(key)} has not written progress.json since {beat.isoformat(timespec='seconds')}",
                        )
                    )

    def _message(self) -> str:
        """What the run is doing now, in its current phase."""
        assert self.spec is not None
        status = self.status
        phase = status.phase
        if phase == "Pending":
            return "writing spec.json to the store"
        if phase == "Partitioning":
            return f"partitioning {self.spec.dataset.uri} into {self.spec.partition.clusters} clusters"
        parts = [f"{status.experts_ready}/{status.experts_total} experts trained"]
        router = status.stages.router
        if router.phase != "Succeeded" and router.step is not None and router.total_steps:
            parts.append(f"router step {router.step}/{router.total_steps}")
        elif router.phase == "Succeeded":
            parts.append("router trained")
        if status.model_uri:
            parts.append(f"model at {status.model_uri}")
        return "; ".join(parts)

    def _transition(self, path: list[Any], *, reason: str | None, message: str | None) -> None:
        """Apply the phase path (an Event per transition) and recompute the conditions.

        `message` None: describe the phase the run ends up in.
        """
        for phase in path:
            old = self.status.phase
            self.status.phase = phase
            text = message if message is not None else self._message()
            if phase == "Failed":
                self.events.append(Event(self.body, "Warning", reason or "Failed", text))
            else:
                self.events.append(Event(self.body, "Normal", phase, f"{old} → {phase}: {text}"))
        message = message if message is not None else self._message()
        if self.status.phase in TERMINAL and self.status.completion_time is None:
            self.status.completion_time = self.now
        self.status.reason = reason if self.status.phase == "Failed" else None
        self.status.message = message
        trouble = self.troubles[0] if self.troubles else None
        conditions = run_conditions(
            self.previous.conditions,
            phase=self.status.phase,
            reason=reason,
            message=message,
            trouble=trouble,
            now=self.now,
            generation=self.generation,
        )
        was_degraded = any(c.type == "Degraded" and c.status == "True" for c in self.previous.conditions)
        for condition in changed(self.previous.conditions, conditions):
            if condition.type == "Degraded" and (condition.status == "True" or was_degraded):
                kind = "Warning" if condition.status == "True" else "Normal"
                why = condition.reason if condition.status == "True" else "Recovered"
                self.events.append(Event(self.body, kind, why, condition.message))
        self.status.conditions = conditions
        self.status.observed_generation = self.generation


def _fraction(status: StageStatus) -> float:
    if status.phase == "Succeeded":
        return 1.0
    if status.step is not None and status.total_steps:
        return min(1.0, status.step / status.total_steps)
    return 0.0
