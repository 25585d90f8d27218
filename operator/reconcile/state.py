"""What one reconciliation of a DDMRun knows and shares between its steps.

`TickState` holds the tick's inputs (the run's body, what the indexes show, the memory of
earlier ticks) and what it has decided so far; the steps (store, launch, moves, report)
are mixins over it, assembled in atoll.operator.reconcile. Nothing here calls the API.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from atoll.api.spec import API_GROUP_VERSION, DDMRunSpec
from atoll.api.status import CheckpointStatus, DDMExpertStatus, DDMRunStatus, StageStatus
from atoll.log import get_logger
from atoll.operator import storage
from atoll.operator.attempts import StageDecision
from atoll.operator.conditions import Trouble
from atoll.operator.kube import Kube
from atoll.operator.ledger import GpuLedger
from atoll.operator.machine import RunFacts
from atoll.operator.observe import ExpertView, NodeView, PodView
from atoll.operator.planning import (
    ExpertPlacement,
    Where,
)
from atoll.operator.pods import Owner
from atoll.operator.settings import OperatorSettings
from atoll.progress import StageProgress
from atoll.store import Store

log = get_logger("atoll.operator.reconcile")

PLACED_STAGES = frozenset({"partition", "expert", "router", "assemble", "evaluate"})
"""Every stage is placed on the GPU fleet; assemble asks for no GPU, only for a fleet node."""
CPU_ONLY_STAGES = frozenset({"assemble"})
TRAINING_STAGES = frozenset({"expert", "router"})


def utcnow() -> datetime:
    return datetime.now(UTC)


def stage_key(stage: str, expert: int | None) -> str:
    return f"expert-{expert}" if stage == "expert" else stage


def parse_key(key: str) -> tuple[str, int | None]:
    return ("expert", int(key.removeprefix("expert-"))) if key.startswith("expert-") else (key, None)


def label(key: str) -> str:
    stage, expert = parse_key(key)
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


class Failure(Exception):  # noqa: N818 - control flow inside one reconciliation, never escapes
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def parse_status(raw: Mapping[str, Any] | None) -> DDMRunStatus:
    """The status stored in the API server (an unreadable one starts over, keeping the phase)."""
    try:
        return DDMRunStatus.model_validate(raw or {})
    except ValidationError as error:
        log.warning("unreadable DDMRun status, starting from scratch", error=str(error))
        phase = (raw or {}).get("phase")
        return DDMRunStatus(phase=phase) if phase in ("Succeeded", "Failed") else DDMRunStatus()


def expert_status(view: ExpertView | None) -> DDMExpertStatus:
    if view is None:
        return DDMExpertStatus()
    try:
        return DDMExpertStatus.model_validate(view.status)
    except ValidationError:
        return DDMExpertStatus()


class TickState:
    """The state of one reconciliation; the step mixins read and extend it."""

    def __init__(
        self,
        *,
        kube: Kube,
        ledger: GpuLedger,
        settings: OperatorSettings,
        now: datetime,
        monotonic: Callable[[], float],
        body: Mapping[str, Any],
        memory: RunMemory,
        observed: Observed,
    ) -> None:
        self.kube = kube
        self.ledger = ledger
        self.settings = settings
        self.monotonic = monotonic
        self.now = now
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

    def _expert_statuses(self) -> dict[int, DDMExpertStatus]:
        views = {view.expert: view for view in self.observed.experts}
        statuses = {k: expert_status(view) for k, view in views.items()}
        statuses.update({k: s for k, s in self.memory.experts.items() if k in views})
        return statuses

    def _event(self, key: str | None, kind: str, reason: str, message: str) -> None:
        target: Mapping[str, Any] = self.body
        if key is not None and key.startswith("expert-"):
            views = {view.expert: view for view in self.observed.experts}
            view = views.get(parse_key(key)[1] or 0)
            if view is not None and view.uid:
                target = view.reference()
        self.events.append(Event(target, kind, reason, message))

    def _previous_stage_status(self, key: str) -> StageStatus:
        stage, expert = parse_key(key)
        if expert is not None:
            return self._expert_statuses().get(expert, DDMExpertStatus())
        stage_status: StageStatus = getattr(self.status.stages, stage)
        return stage_status

    def _placement_spec(self) -> DDMRunSpec:
        """The spec as placement sees it: the operator's GPU-per-pod cap applied."""
        assert self.spec is not None
        cap = self.settings.max_gpus_per_pod
        gpu = self.spec.placement.gpu
        if cap is None or gpu.max_per_expert <= cap:
            return self.spec
        placement = self.spec.placement.model_copy(update={"gpu": gpu.model_copy(update={"max_per_expert": cap})})
        return self.spec.model_copy(update={"placement": placement})

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
                return self._expert_statuses().get(parse_key(key)[1] or 0, DDMExpertStatus()).phase
            return getattr(self.status.stages, key).phase

        experts = self._expert_statuses()
        complete = len(experts) == self.spec.partition.clusters
        failure = None
        for key, decision in decisions.items():
            if decision.failed:
                stage = parse_key(key)[0]
                failure = (f"{stage.capitalize()}Failed", f"{label(key)}: {decision.status.message}")
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

    def _stop_pods(self) -> None:
        """Delete the run's active pods (a failed run frees its GPUs; its store data stays)."""
        for pod in self.observed.pods:
            if pod.active:
                self.kube.delete_pod(self.namespace, pod.name)
