"""What one reconciliation of a DDMRun knows: one immutable observation of the world, and the
memory of earlier ticks.

The observer (atoll.operator.reconcile.observer) builds an `Observation` once per tick; the
decision function reads nothing else. `RunMemory` is what the operator remembers of a run
between ticks; it is lost on restart, when the statuses in the API server and the store
give the same picture back. Plain data: nothing here does I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from atoll.api.status import CheckpointStatus, DDMExpertStatus, DDMRunStatus
from atoll.operator.islands.fleet import IslandFleet
from atoll.operator.placement.capacity import Requests
from atoll.operator.placement.pools import GrowablePool
from atoll.operator.views import ExpertView, NodeView, PodView
from atoll.progress import StageProgress


@dataclass(frozen=True, kw_only=True)
class RunObject:
    """The DDMRun as the API server has it."""

    name: str
    namespace: str
    uid: str
    generation: int | None = None
    spec: Mapping[str, Any] = field(default_factory=dict)
    """Raw, as applied (validated by the decision, which names the bad fields)."""
    status: Mapping[str, Any] = field(default_factory=dict)
    """Raw, as last written."""
    deleting: bool = False
    """deletionTimestamp is set: the finalizer stops the pods, the reconciler does nothing."""

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> RunObject:
        metadata = body.get("metadata") or {}
        return cls(
            name=metadata["name"],
            namespace=metadata.get("namespace") or "default",
            uid=metadata.get("uid", ""),
            generation=metadata.get("generation"),
            spec=dict(body.get("spec") or {}),
            status=dict(body.get("status") or {}),
            deleting=metadata.get("deletionTimestamp") is not None,
        )

    @property
    def key(self) -> tuple[str, str, str]:
        """(namespace, name, uid): one run, not another of the same name created after it."""
        return (self.namespace, self.name, self.uid)

    def reference(self) -> dict[str, Any]:
        """Enough of the object for an Event."""
        from atoll.api.spec import API_GROUP_VERSION

        return {
            "apiVersion": API_GROUP_VERSION,
            "kind": "DDMRun",
            "metadata": {"name": self.name, "namespace": self.namespace, "uid": self.uid},
        }


@dataclass(frozen=True, kw_only=True)
class StoreProblem:
    """The run's store cannot be used: `permanent` ones fail the run, the others wait."""

    reason: str
    """A CamelCase word for status (SecretNotFound, StoreUnavailable, StoreConflict, …)."""
    message: str
    permanent: bool


@dataclass(frozen=True, kw_only=True)
class StoreSnapshot:
    """The run's store as last read (reads are throttled: this may be a few seconds old)."""

    run_uri: str | None = None
    """The run's prefix (None: the store could not even be opened)."""
    spec_uri: str | None = None
    secret: str | None = None
    """Secret with the store credentials, handed to the pods by reference (s3:// stores)."""
    setup: StoreProblem | None = None
    """The store cannot be opened or holds another run's spec (permanent), or is unreachable."""
    spec: Literal["stored", "absent", "unknown"] = "unknown"
    """spec.json, read only until the run has it in status.storeUri."""
    outage: str | None = None
    """Why the last poll could not read the store (the run is Degraded meanwhile)."""
    progress: Mapping[str, StageProgress] = field(default_factory=dict)
    """Current heartbeats by stage slug: only those of an attempt that still holds the claim."""
    claims: Mapping[str, int] = field(default_factory=dict)
    """Newest claimed attempt (attempt.json) by stage slug."""
    done: Mapping[str, bool] = field(default_factory=dict)
    """Whether each checked stage's done marker exists (absent: not checked)."""
    checkpoints: Mapping[str, CheckpointStatus] = field(default_factory=dict)
    """Newest committed checkpoint the fence admits, by training stage slug."""
    cluster_sizes: tuple[int, ...] | None = None
    """partition/stats.json's sizes, once the partition wrote them."""


@dataclass(frozen=True, kw_only=True)
class Observation:
    """Everything one tick decides from, read once."""

    run: RunObject
    pods: tuple[PodView, ...] = ()
    """Pods labelled with the run's name (any owner: the decision keeps its own)."""
    experts: tuple[ExpertView, ...] = ()
    """DDMExperts labelled with the run's name (any owner)."""
    nodes: tuple[NodeView, ...] | None = None
    """Every node, home and islands' (None: not known yet, so nothing is declared lost)."""
    islands: tuple[IslandFleet, ...] = ()
    """The islands known now: where an expert placed on one of their nodes is dispatched."""
    node_pools: tuple[GrowablePool, ...] = ()
    """Growable pools read from the cluster (Karpenter NodePools; none where it has none)."""
    islands_synced: bool = True
    """False until the island monitor has looked at every island once since the operator
    started: an attempt on an island whose pod is not seen is waited for meanwhile."""
    busy_gpus: Mapping[str, int] = field(default_factory=dict)
    """GPUs held per node by every GPU-holding pod, atoll's or not, and the GPUs promised to
    pods the watch does not show yet (the operator's ledger)."""
    busy_requests: Mapping[str, Requests] = field(default_factory=dict)
    """CPU and memory requested per node by every non-terminal pod bound (or pinned) to it,
    atoll's or not, and by the pods promised in the ledger (read with `busy_gpus`)."""
    placing: bool = True
    """False: the GPU usage is not at hand (another run holds the ledger): the decision places,
    starts and moves nothing, and keeps every stage that would start as it was; the others
    are decided as usual, so a running pod's status does not wait for another run's placing."""
    store: StoreSnapshot = field(default_factory=StoreSnapshot)
    now: datetime
    monotonic: float = 0.0
    """The operator's monotonic clock (throttles such as the move check)."""


@dataclass(frozen=True)
class RunMemory:
    """What the operator remembers of one run between ticks."""

    status: DDMRunStatus | None = None
    """The status the last tick decided."""
    written: DDMRunStatus | None = None
    """The status last written to the API server (None: unknown; the stored one counts)."""
    experts: Mapping[int, DDMExpertStatus] = field(default_factory=dict)
    """DDMExpert statuses last decided: written, or to be written by the next tick (`experts_unsent`)."""
    experts_unsent: frozenset[int] = frozenset()
    """Experts whose status in `experts` is not written yet: a Pending status waits while the
    expert's new pod starts (up to `report.PENDING_WRITTEN_AFTER`), so a pod that starts in
    time costs one write (Running) instead of two, and the tick that creates the pods ends a
    round of writes sooner."""
    store_down_since: datetime | None = None
    last_move_check: float = -math.inf
    creation_failures: Mapping[str, str] = field(default_factory=dict)
    """Stage slug → why the pod of its current attempt could not be created (retried as is)."""
    creation_refusals: Mapping[str, str] = field(default_factory=dict)
    """Stage slug → the API server's message when it refused that pod for good (the stage fails)."""
    spec_write_failure: StoreProblem | None = None
    """Why the last attempt to write spec.json (and owner.json) failed (None: it did not)."""
    experts_created: Mapping[int, float] = field(default_factory=dict)
    """Expert index → when (monotonic seconds) a tick created its DDMExpert, for those the
    index has not shown since: not created again before EXPERT_SHOWN_WITHIN has passed (the
    DDMExpert watch trails by seconds under load, and every create of one that exists is a
    request refused with a conflict)."""
