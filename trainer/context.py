"""What every stage receives: the validated spec, the run's store and its own arguments."""

from __future__ import annotations

from dataclasses import dataclass

from atoll.api import DDMRunSpec
from atoll.store import Store


@dataclass(frozen=True, kw_only=True)
class StageContext:
    """Inputs of one stage invocation (one pod, or one local subprocess)."""

    spec: DDMRunSpec
    """The run's spec, as stored in spec.json."""
    store: Store
    """The run's store, rooted at the run prefix (keys from atoll.layout)."""
    expert: int | None = None
    """The expert index k (expert stage only)."""
    attempt: int | None = None
    """Attempt number for fencing; the next free one when None."""
    micro_batch: int | None = None
    """Examples per forward pass per GPU (placement plan); from the spec or automatic when None."""
    grad_accum: int | None = None
    """Gradient-accumulation steps (placement plan); derived from the global batch when None."""
    gpus: int = 1
    """GPUs this invocation may use (data parallel within one node)."""
