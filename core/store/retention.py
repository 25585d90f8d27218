"""Which committed checkpoints a training stage keeps: the newest N plus every M-th step.

Pure selection; the CheckpointStore does the deleting (manifest first).
"""

from __future__ import annotations

from collections.abc import Iterable

from atoll.api.spec import RetentionSpec


def kept_steps(committed: Iterable[int], retention: RetentionSpec) -> set[int]:
    """The steps to keep among the committed ones: the `last` newest, and every step that is
    a multiple of `every` (when every > 0)."""
    steps = sorted(set(committed))
    keep = set(steps[-retention.last :])
    if retention.every > 0:
        keep.update(step for step in steps if step % retention.every == 0)
    return keep
