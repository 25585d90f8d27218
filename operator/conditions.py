"""The standard conditions of a DDMRun (Ready, Progressing, Degraded, Complete, Failed) and
Schedulable (False while the scheduler cannot place one of its pods, with its reason).

Computed from the phase and what is wrong right now; a condition keeps its
lastTransitionTime until its status changes (metav1.Condition semantics). Pure.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, TypeVar

from atoll.api.status import CONDITION_TYPES, Condition, ConditionType, RunPhase

Status = Literal["True", "False", "Unknown"]


@dataclass(frozen=True)
class Trouble:
    """Something wrong that the run survives (Degraded): a store outage, a restarting expert…"""

    reason: str
    message: str


ConditionT = TypeVar("ConditionT", bound=Condition)


def transition(  # noqa: PLR0917 - the fields of one condition
    model: type[ConditionT],
    previous: Condition | None,
    kind: str,
    status: Status,
    reason: str,
    message: str,
    now: datetime,
    generation: int | None,
) -> ConditionT:
    """A condition of `model` (a run's Condition, an island's IslandCondition): it keeps the
    lastTransitionTime of `previous` (the same type's condition before) until its status changes."""
    since = previous.last_transition_time if previous is not None and previous.status == status else now
    fields = {
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message[:1024],
        "last_transition_time": since,
        "observed_generation": generation,
    }
    return model.model_validate(fields)


def run_conditions(
    previous: Sequence[Condition],
    *,
    phase: RunPhase,
    reason: str | None,
    message: str,
    trouble: Trouble | None,
    now: datetime,
    generation: int | None,
    unschedulable: str | None = None,
) -> list[Condition]:
    """All six conditions for a run in `phase` (`unschedulable`: the scheduler's reason for
    one of its pods, None when every created pod could be scheduled)."""
    old = {c.type: c for c in previous}
    final = phase in ("Succeeded", "Failed")
    failed_reason = reason or "Failed"

    def make(kind: ConditionType, status: Status, why: str, text: str) -> Condition:
        return transition(Condition, old.get(kind), kind, status, why, text, now, generation)

    conditions = {
        "Ready": make("Ready", "True", "ModelReady", message)
        if phase == "Succeeded"
        else make("Ready", "False", phase, "the model is not assembled and evaluated yet"),
        "Progressing": make("Progressing", "False", phase, message)
        if final
        else make("Progressing", "True", phase, message),
        "Degraded": make("Degraded", "True", trouble.reason, trouble.message)
        if trouble is not None and not final
        else make("Degraded", "False", "AsExpected", "nothing is wrong"),
        "Complete": make("Complete", "True", "Succeeded", message)
        if phase == "Succeeded"
        else make("Complete", "False", phase, "the run has not finished"),
        "Failed": make("Failed", "True", failed_reason, message)
        if phase == "Failed"
        else make("Failed", "False", "AsExpected", "no stage has failed for good"),
        "Schedulable": make("Schedulable", "False", "Unschedulable", unschedulable)
        if unschedulable is not None and not final
        else make("Schedulable", "True", "AsExpected", "every created pod could be scheduled"),
    }
    return [conditions[kind] for kind in CONDITION_TYPES]


def changed(previous: Sequence[Condition], current: Sequence[Condition]) -> list[Condition]:
    """The conditions whose status or reason differ from before (for Events)."""
    old = {c.type: (c.status, c.reason) for c in previous}
    return [c for c in current if old.get(c.type) != (c.status, c.reason)]
