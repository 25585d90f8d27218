"""The run's status at the end of one reconciliation: DDMExpert statuses patched when they
changed, the run's phase through the state machine, conditions, progress, the model URI,
and an Event for every transition.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from atoll import layout
from atoll.api.status import DDMExpertStatus, StageStatus
from atoll.operator.attempts import StageDecision
from atoll.operator.conditions import Trouble, changed, run_conditions
from atoll.operator.machine import TERMINAL, advance, run_progress
from atoll.operator.reconcile.state import (
    Event,
    TickState,
    label,
    parse_key,
)


class ReportSteps(TickState):
    """The run's status at the end of one reconciliation: DDMExpert statuses patched when they"""

    def fail(self, reason: str, message: str) -> None:
        """Move the run to Failed (from any phase) and stop its pods."""
        self._transition(["Failed"], reason=reason, message=message)
        self._stop_pods()

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
        stage, expert = parse_key(key)
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
        self._event(key, kind, reason, f"{label(key)} {what}{detail}")

    def _collect_troubles(self, decisions: Mapping[str, StageDecision]) -> None:
        stale = timedelta(seconds=self.settings.heartbeat_stale_seconds)
        for key, decision in decisions.items():
            status = decision.status
            if status.phase == "Restarting":
                self.troubles.append(Trouble("StageRestarting", f"{label(key)}: {status.message}"))
            elif status.phase == "Running" and (key == "router" or key.startswith("expert-")):
                beat = status.heartbeat_time
                if beat is not None and self.now - beat > stale:
                    self.troubles.append(
                        Trouble(
                            "HeartbeatStale",
                            f"{label(key)} has not written progress.json since {beat.isoformat(timespec='seconds')}",
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
