"""The operator's own configuration (command-line flags), shared by the reconciler and builders.

Plain data; one instance per operator process. Run-specific settings live in the DDMRun spec.
"""

from __future__ import annotations

from dataclasses import dataclass

from atoll import __version__
from atoll.operator.placement.autoscalers import TERMINATION_CONDITIONS

DEFAULT_IMAGE = f"ghcr.io/atoll-dev/atoll-trainer:{__version__}"


@dataclass(frozen=True, kw_only=True, slots=True)
class OperatorSettings:
    """What `atoll operator` was started with."""

    namespaces: tuple[str, ...] = ()
    """Namespaces to watch; all when empty."""
    image: str = DEFAULT_IMAGE
    """Container image of the stage pods (it must provide `python -m atoll.trainer`)."""
    image_pull_policy: str = "IfNotPresent"
    default_store: str = ""
    """Store root of runs without spec.storage.uri (e.g. s3://atoll/runs)."""
    default_store_secret: str | None = None
    """Secret (in the run's namespace) with the default store's credentials."""
    interval_seconds: float = 5.0
    """How often each run is reconciled (level-based: every tick looks at everything)."""
    store_poll_seconds: float = 5.0
    """How often progress.json and checkpoints are read from a run's store."""
    store_grace_seconds: float = 60.0
    """A run whose store was never reachable for this long fails (a wrong endpoint, not an outage)."""
    heartbeat_stale_seconds: float = 120.0
    """A running stage whose progress.json is older than this makes the run Degraded."""
    move_check_seconds: float = 60.0
    """How often a training run looks for faster GPUs that became free (0: never move experts)."""
    termination_conditions: tuple[str, ...] = TERMINATION_CONDITIONS
    """Node condition types that, when True, announce the node's end (a spot preemption): the
    experts there checkpoint and move, as on a node tainted for deletion (empty: none)."""
    max_gpus_per_pod: int | None = None
    """Cap on the GPUs of one stage pod (None: spec.placement.gpu.maxPerExpert alone). Fake
    fleets whose "GPUs" are CPU processes (the dev environment) set 1: each GPU of a pod
    is one data-parallel process."""
    run_as_user: int = 65532
    """Non-root user id of the stage containers."""
    service_account: str | None = None
    """ServiceAccount of the stage pods (none: the namespace default; its token is never mounted)."""
