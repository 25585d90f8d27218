"""The read-only context of one decision and the accumulator of what it decides.

`Tick` is derived once from the observation and the memory (the run's own pods and
DDMExperts, the statuses of the last tick, the parsed spec); the deciding steps read it
and append actions, Events and troubles to one `Outcome`. Pure: no I/O.
"""

from __future__ import annotations

import functools
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from atoll.api.spec import API_GROUP_VERSION, DDMRunSpec
from atoll.api.status import DDMExpertStatus, DDMRunStatus, StageStatus
from atoll.log import get_logger
from atoll.operator.conditions import Trouble
from atoll.operator.islands.loss import StageKey, lost_islands, unreachable
from atoll.operator.placement import Assignment, Plan, labels
from atoll.operator.placement.autoscalers import removal_notice
from atoll.operator.placement.capacity import Requests
from atoll.operator.pods import Owner
from atoll.operator.reconcile.actions import Action, Event
from atoll.operator.reconcile.observation import Observation, RunMemory, RunObject
from atoll.operator.settings import OperatorSettings
from atoll.operator.views import ExpertView, PodView, parse_time
from atoll.stages import StageJob

log = get_logger("atoll.operator.reconcile")


def parse_status(raw: Mapping[str, Any] | None) -> DDMRunStatus:
    """The status stored in the API server (an unreadable one starts over, keeping the phase)."""
    try:
        return DDMRunStatus.model_validate(raw or {})
    except ValidationError as error:
        log.warning("unreadable DDMRun status, starting from scratch", error=str(error))
        phase = (raw or {}).get("phase")
        return DDMRunStatus(phase=phase) if phase in ("Succeeded", "Failed") else DDMRunStatus()


def own_objects(
    run: RunObject, pods: Sequence[PodView], experts: Sequence[ExpertView]
) -> tuple[tuple[PodView, ...], dict[int, ExpertView]]:
    """The run's own pods and DDMExperts (by expert index) among those labelled with its name:
    objects of a deleted run with the same name (another uid) are never taken for this run's."""
    uid = run.uid
    mine = {e.expert: e for e in sorted(experts, key=lambda e: e.name) if not uid or e.owner_uid == uid}
    owners = {uid} | {e.uid for e in mine.values()}
    return tuple(p for p in pods if not uid or p.owner_uid in owners), mine


@dataclass
class Outcome:
    """What the deciding steps add up (in order)."""

    actions: list[Action] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    troubles: list[Trouble] = field(default_factory=list)
    plan: Plan | None = None
    """The experts' placement plan an expert started by this tick, if one did (the run's status shows it)."""
    experts_created: dict[int, float] | None = None
    """The DDMExperts created and not shown by the index yet, with when (None: as remembered)."""
    experts_unsent: set[int] = field(default_factory=set)
    """Experts whose new status is left to a later tick (their pod is created now, or starting)."""


@dataclass(frozen=True)
class Tick:
    """One decision's inputs, with the run's own objects picked out."""

    obs: Observation
    memory: RunMemory
    settings: OperatorSettings
    parsed: DDMRunSpec | None
    """The validated spec (None: it does not validate, and the run fails)."""
    previous: DDMRunStatus
    """The run's status at the end of the last tick."""
    pods: tuple[PodView, ...]
    """This run's pods (owned by the run or by one of its DDMExperts)."""
    experts: Mapping[int, ExpertView]
    """This run's DDMExperts by expert index."""

    @classmethod
    def of(cls, obs: Observation, memory: RunMemory, settings: OperatorSettings, spec: DDMRunSpec | None) -> Tick:
        pods, experts = own_objects(obs.run, obs.pods, obs.experts)
        previous = memory.status or parse_status(obs.run.status)
        return cls(obs, memory, settings, spec, previous, pods, experts)

    @property
    def spec(self) -> DDMRunSpec:
        """The validated spec: every deciding step after the first runs only with one."""
        if self.parsed is None:
            raise RuntimeError("the run's spec does not validate")
        return self.parsed

    @property
    def owner(self) -> Owner:
        return Owner(api_version=API_GROUP_VERSION, kind="DDMRun", name=self.obs.run.name, uid=self.obs.run.uid)

    @functools.cached_property
    def expert_statuses(self) -> Mapping[int, DDMExpertStatus]:
        """Every DDMExpert's status at the end of the last tick (what this operator wrote, else the stored one)."""
        return {k: self.memory.experts.get(k, view.status) for k, view in self.experts.items()}

    def stage_status(self, job: StageJob, status: DDMRunStatus) -> StageStatus:
        """A stage's status at the end of the last tick."""
        if job.expert is not None:
            known = self.expert_statuses.get(job.expert)
            return known if known is not None else DDMExpertStatus()
        stage: StageStatus = getattr(status.stages, job.stage)
        return stage

    def stage_pods(self, job: StageJob) -> list[PodView]:
        return [p for p in self.pods if p.stage == job.stage and p.expert == job.expert]

    def event(self, job: StageJob | None, kind: str, reason: str, message: str) -> Event:
        """An Event on the run, or on the DDMExpert of an expert stage."""
        target: Mapping[str, Any] = self.obs.run.reference()
        if job is not None and job.expert is not None:
            view = self.experts.get(job.expert)
            if view is not None and view.uid:
                target = view.reference()
        return Event(target, kind, reason, message)

    def placement_spec(self) -> DDMRunSpec:
        """The spec as placement sees it: the operator's GPU-per-pod cap applied."""
        cap = self.settings.max_gpus_per_pod
        gpu = self.spec.placement.gpu
        if cap is None or gpu.max_per_expert <= cap:
            return self.spec
        placement = self.spec.placement.model_copy(update={"gpu": gpu.model_copy(update={"max_per_expert": cap})})
        return self.spec.model_copy(update={"placement": placement})

    def deadline_from(self) -> datetime | None:
        """When placement.deadlineHours counts from: the run's first plan of its experts (None: none yet, now)."""
        return self.previous.plan.deadline_from if self.previous.plan is not None else None

    def running_experts(self, *, bound_only: bool = False) -> dict[int, Assignment]:
        """Experts whose pod exists and holds (or waits for) its GPUs, where it is (re-planning
        keeps them there). `bound_only`: only pods that run already (what a move may stop)."""
        statuses = self.expert_statuses
        running: dict[int, Assignment] = {}
        for pod, node in self._expert_pods(bound_only=bound_only):
            assert pod.expert is not None
            status = statuses.get(pod.expert) or DDMExpertStatus()
            running[pod.expert] = Assignment(
                expert=pod.expert,
                node=node,
                gpu_product=pod.gpu_product or status.gpu or "",
                gpus=max(pod.gpus, 1),
                micro_batch=status.micro_batch,
                grad_accum=status.grad_accum,
            )
        return running

    def running_requests(self, experts: Collection[int]) -> dict[str, Requests]:
        """CPU and memory the pods of running `experts` (as `running_experts` finds them) request, per node."""
        held: dict[str, Requests] = {}
        for pod, node in self._expert_pods():
            if pod.expert in experts:
                held[node] = held.get(node, Requests()) + pod.requests
        return held

    def _expert_pods(self, *, bound_only: bool = False) -> list[tuple[PodView, str]]:
        """This run's active expert pods with their node (the planned one while unbound), on nodes
        that exist: not those of a lost island, nor those of an attempt another one replaced."""
        nodes = self.nodes_known
        statuses = self.expert_statuses
        found = []
        for pod in self.pods:
            if pod.stage != "expert" or pod.expert is None or not pod.active:
                continue
            if pod.island in self.lost_islands:
                continue
            current = statuses.get(pod.expert)
            if current is not None and pod.attempt < current.attempt:
                continue  # left on an island that was lost: deleted once it answers
            if bound_only and pod.phase != "Running":
                continue
            node = pod.node or pod.planned_node
            if node is None and pod.waits_at is not None:
                node = pod.waits_at  # waits for a pool's new node: its GPUs are held there
            elif node is None or (nodes is not None and node not in nodes):
                continue  # not placed yet, or stranded on a node that is gone (being replaced)
            found.append((pod, node))
        return found

    @functools.cached_property
    def lost_nodes(self) -> Mapping[str, str]:
        """Nodes that exist but count as lost → why: NotReady, or their GPU agent silent, for
        failurePolicy.nodeLostSeconds (whatever the pods tolerate: the taint eviction waits 300 s)."""
        limit = self.spec.failure_policy.node_lost_seconds
        lost: dict[str, str] = {}
        for node in self.obs.nodes or ():
            if not node.ready and node.not_ready_since is not None:
                waited = (self.obs.now - node.not_ready_since).total_seconds()
                if waited >= limit:
                    lost[node.name] = f"NotReady for {waited:.0f} s, failurePolicy.nodeLostSeconds is {limit}"
                    continue
            try:
                beat = parse_time(node.annotations.get(labels.HEARTBEAT))
            except ValueError:
                beat = None  # unreadable: the fleet rule excludes the node from placement, nothing more
            if beat is not None and (silent := (self.obs.now - beat).total_seconds()) >= limit:
                lost[node.name] = f"its GPU agent silent for {silent:.0f} s, failurePolicy.nodeLostSeconds is {limit}"
        return lost

    @functools.cached_property
    def removal_notices(self) -> Mapping[str, str]:
        """Nodes being removed → why (a deletion taint an autoscaler put on them, or a True node
        condition of `settings.termination_conditions`): nothing new goes there, and the
        experts on them move off at a checkpoint."""
        conditions = self.settings.termination_conditions
        return {
            node.name: notice
            for node in self.obs.nodes or ()
            if (notice := removal_notice(node.taints, node.notices, conditions)) is not None
        }

    @functools.cached_property
    def unreachable_islands(self) -> Mapping[str, datetime]:
        """Islands whose last probe failed → since when (nothing is deleted there meanwhile)."""
        return unreachable(self.obs.islands)

    @functools.cached_property
    def lost_islands(self) -> Mapping[str, str]:
        """Islands unreachable for failurePolicy.islandLostSeconds → why: their experts are placed again elsewhere."""
        if self.parsed is None:
            return {}
        return lost_islands(self.obs.islands, self.parsed.failure_policy.island_lost_seconds, self.obs.now)

    def current_attempts(self, status: DDMRunStatus) -> dict[StageKey, int]:
        """Every stage's current attempt, as the statuses at the end of the last tick say."""
        jobs = [StageJob(stage) for stage in ("partition", "router", "assemble", "evaluate")]
        jobs += [StageJob("expert", k) for k in sorted(self.experts)]
        return {(job.stage, job.expert): self.stage_status(job, status).attempt for job in jobs}

    @functools.cached_property
    def nodes_known(self) -> frozenset[str] | None:
        """Names of the nodes that exist (None: not known yet, so nothing is declared lost)."""
        nodes: Sequence[Any] | None = self.obs.nodes
        return frozenset(node.name for node in nodes) if nodes else None
