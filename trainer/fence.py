"""Fencing for every stage: claim the attempt on entry, write the done marker only under the claim.

Training stages claim through their checkpoint store (the claim lists the checkpoints it
inherits); partition, assemble and evaluate claim the same `<stage>/attempt.json` with no
checkpoints. A stage writes its done marker (`atoll.stages`) last and only if no newer
attempt claimed the stage meanwhile, so "done" always comes from the attempt that holds
the claim. Never deletes anything.
"""

from __future__ import annotations

from typing import Any

from atoll.stages import StageJob
from atoll.store import FencedError, Store
from atoll.store.checkpoint import CheckpointStore
from atoll.store.fencing import claim, read_claim


def claim_attempt(store: Store, job: StageJob, attempt: int | None) -> int:
    """Claim `job` for `attempt` (None: the next one) and return the attempt that holds the claim.

    FencedError when `attempt` is older than the stage's claim: a newer attempt exists.
    """
    if job.trains:
        return CheckpointStore(store, job.prefix, attempt=attempt).attempt
    return claim(store, job.prefix, attempt, ()).attempt


def ensure_current(store: Store, job: StageJob, attempt: int | None) -> None:
    """FencedError if a newer attempt than `attempt` claimed the stage (None: unfenced, in-process use)."""
    if attempt is None:
        return
    current = read_claim(store, job.prefix)
    if current.attempt > attempt:
        raise FencedError(
            f"attempt {attempt} of {store.uri_of(job.prefix)} is fenced: attempt {current.attempt} claimed the"
            f" stage at {current.claimed_at} (node {current.node}); its done marker is not written"
        )


def write_done(store: Store, job: StageJob, attempt: int | None, value: dict[str, Any]) -> None:
    """Write the stage's done marker (JSON) if `attempt` still holds the claim."""
    ensure_current(store, job, attempt)
    store.put_json(job.done_marker, {**value, "attempt": attempt})
