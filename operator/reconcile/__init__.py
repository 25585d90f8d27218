"""One reconciliation of one DDMRun: observe → decide → act → the run's new status.

Observe: the run's pods, DDMExperts and the nodes (kopf indexes), its store (progress.json,
checkpoints, partition results; throttled). Decide: every stage through
atoll.operator.attempts, the run through atoll.operator.machine. Act: create-if-absent
pods and DDMExperts, delete stranded pods, patch DDMExpert statuses. Returns the run's
status and the Events to post; it never posts or patches the DDMRun itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from atoll.api.errors import format_validation_error
from atoll.api.spec import DDMRunSpec
from atoll.api.status import DDMExpertStatus, StageStatus
from atoll.operator import storage
from atoll.operator.attempts import StageDecision, StageInputs, decide_stage
from atoll.operator.experts import build_expert
from atoll.operator.kube import Kube
from atoll.operator.ledger import GpuLedger
from atoll.operator.machine import TERMINAL, RunFacts, stage_ready
from atoll.operator.observe import ExpertView
from atoll.operator.reconcile.launch import LaunchSteps
from atoll.operator.reconcile.moves import MoveSteps
from atoll.operator.reconcile.report import ReportSteps
from atoll.operator.reconcile.state import (
    Event,
    Failure,
    Observed,
    Outcome,
    RunMemory,
    parse_key,
    parse_status,
    stage_key,
    utcnow,
)
from atoll.operator.reconcile.store import StoreSteps
from atoll.operator.settings import OperatorSettings
from atoll.store import StoreError

__all__ = ["Event", "Observed", "Outcome", "Reconciler", "RunMemory", "parse_status"]


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
        tick = _Tick(
            kube=self.kube,
            ledger=self.ledger,
            settings=self.settings,
            now=self.clock(),
            monotonic=self.monotonic,
            body=body,
            memory=memory,
            observed=observed,
        )
        try:
            tick.run()
        except Failure as failure:
            tick.fail(failure.reason, failure.message)
        memory.status = tick.status
        return Outcome(tick.status, tick.events)


class _Tick(StoreSteps, LaunchSteps, MoveSteps, ReportSteps):
    """One reconciliation: the pipeline of steps over one TickState."""

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

    def _parse_spec(self) -> DDMRunSpec:
        try:
            spec = DDMRunSpec.model_validate(self.body.get("spec") or {})
        except ValidationError as error:
            raise Failure("InvalidSpec", "; ".join(format_validation_error(error, "spec"))) from None
        return spec

    def _inputs(self, key: str, status: StageStatus, ready: bool) -> StageInputs:
        assert self.spec is not None
        stage, expert = parse_key(key)
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
        for k, expert_state in sorted(statuses.items()):
            key = stage_key("expert", k)
            decisions[key] = decide_stage(self._inputs(key, expert_state, stage_ready("expert", facts())))
        decisions["router"] = decide_stage(self._inputs("router", stages.router, stage_ready("router", facts())))
        decisions["assemble"] = decide_stage(
            self._inputs("assemble", stages.assemble, stage_ready("assemble", facts()))
        )
        decisions["evaluate"] = decide_stage(
            self._inputs("evaluate", stages.evaluate, stage_ready("evaluate", facts()))
        )
        return self._plan_moves(self._act(decisions))

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
            raise Failure(
                "PartitionMismatch",
                f"the partition wrote {len(sizes)} clusters, partition.clusters is {self.spec.partition.clusters}",
            )
        if empty := [k for k, size in enumerate(sizes) if size == 0]:
            raise Failure(
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
