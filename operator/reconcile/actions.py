"""What one reconciliation decided: the actions to apply, the run's new status, its Events.

The decision function returns a `Decision`; the executor applies its actions in a fixed
order and reports which ones failed. Plain data: building these never calls the API.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from atoll.api.spec import DDMRunSpec
from atoll.api.status import DDMExpertStatus, DDMRunStatus
from atoll.operator.reconcile.observation import RunMemory, StoreProblem


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event to post on `target` (a DDMRun or DDMExpert reference)."""

    target: Mapping[str, Any]
    type: str
    reason: str
    message: str


@dataclass(frozen=True)
class WriteSpec:
    """Write spec.json to the run's store (the first thing a run does; its inputs are settled then)."""

    spec: DDMRunSpec


@dataclass(frozen=True)
class CreateExpert:
    """Create a DDMExpert (create-if-absent)."""

    manifest: Mapping[str, Any]
    expert: int
    """Its expert index."""


@dataclass(frozen=True)
class DeletePod:
    """Delete a pod (NotFound is fine)."""

    name: str
    why: str
    grace_seconds: int | None = None


@dataclass(frozen=True)
class CreatePod:
    """Create a stage attempt's pod (create-if-absent: its name is deterministic)."""

    stage: str
    """The stage's slug (expert-3, router, …)."""
    manifest: Mapping[str, Any]
    node: str | None = None
    """The node its GPUs are promised on (reserved in the GPU ledger until the watch shows it)."""
    gpus: int = 0
    started: Event | None = None
    """Posted once the pod was created by this action (not when it already existed)."""
    island: str | None = None
    """The ComputeIsland to create it on (None: home)."""
    store_secret: str | None = None
    """The run's store Secret at home (copied to the island before an island's pod is created)."""

    @property
    def key(self) -> str:
        """namespace/name (island:namespace/name on an island), the GPU ledger's key."""
        metadata = self.manifest["metadata"]
        key = f"{metadata['namespace']}/{metadata['name']}"
        return key if self.island is None else f"{self.island}:{key}"


@dataclass(frozen=True)
class PatchExpertStatus:
    """Replace a DDMExpert's status (only sent when it changed)."""

    expert: int
    name: str
    status: DDMExpertStatus


@dataclass(frozen=True)
class PatchRunStatus:
    """Replace the DDMRun's status (only sent when it changed)."""

    status: DDMRunStatus


Action = WriteSpec | CreateExpert | DeletePod | CreatePod | PatchExpertStatus | PatchRunStatus


@dataclass(frozen=True)
class Decision:
    """One tick's outcome: the actions, the run's new status and Events, and the next memory."""

    actions: tuple[Action, ...]
    status: DDMRunStatus
    events: tuple[Event, ...]
    memory: RunMemory
    """What to remember if every action succeeds (the executor's failures amend it)."""

    def of(self, kind: type[Any]) -> list[Any]:
        """The actions of one kind, in order."""
        return [action for action in self.actions if isinstance(action, kind)]


@dataclass
class Applied:
    """What went wrong while applying a decision (everything else was applied)."""

    failed_pods: dict[str, str] = field(default_factory=dict)
    """Stage slug → why its pod could not be created (a transient error: created again)."""
    refused_pods: dict[str, str] = field(default_factory=dict)
    """Stage slug → the API server's message when it refused the pod for good (a 4xx other
    than 404, 408, 409, 425, 429): the stage fails."""
    spec_write_failure: StoreProblem | None = None
    """Why spec.json (or owner.json) could not be written."""
    failed_experts: set[int] = field(default_factory=set)
    """Experts whose status patch failed (patched again next tick)."""
    experts_not_created: set[int] = field(default_factory=set)
    """Experts whose DDMExpert could not be created (created again next tick)."""
    run_status_written: bool = True
    errors: list[str] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    """The Events to post: the decision's, and AttemptStarted for each pod created now."""
