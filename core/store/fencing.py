"""Fencing of a training stage's attempts: `<stage>/attempt.json` names the newest attempt.

An attempt claims the stage before it trains; a commit by an older attempt is refused, and
readers ignore checkpoints a stale attempt managed to write after the claim (its fence check
and its manifest write are not atomic, and S3 has no compare-and-swap). To make that
possible the claim records which committed checkpoints it `inherited`: a checkpoint is
admitted iff its attempt is not older than the claim, or it is in that list.
This module never deletes anything.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from atoll.log import get_logger
from atoll.store.base import FencedError, NotFoundError, Store, StoreError, join_key

log = get_logger(__name__)

ATTEMPT_FILE = "attempt.json"


@dataclass(frozen=True)
class Claim:
    """The content of attempt.json: the newest attempt and the checkpoints it inherited."""

    attempt: int
    """The newest attempt that claimed the stage (0: none ever did)."""
    inherited: frozenset[tuple[int, int]] | None = None
    """(step, attempt) of the checkpoints committed when `attempt` claimed; None: admit all."""
    claimed_at: datetime | None = None
    node: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def admits(self, step: int, attempt: int) -> bool:
        """Whether a checkpoint written by `attempt` at `step` is legitimate under this claim."""
        if self.inherited is None or attempt >= self.attempt:
            return True
        return (step, attempt) in self.inherited

    def to_json(self) -> dict[str, Any]:
        return {
            **self.extra,
            "attempt": self.attempt,
            "claimedAt": (self.claimed_at or datetime.now(UTC)).isoformat(),
            "node": self.node,
            "inherited": [{"step": s, "attempt": a} for s, a in sorted(self.inherited or ())],
        }


NO_CLAIM = Claim(attempt=0)


def attempt_key(stage_prefix: str) -> str:
    """The key of a stage's attempt.json."""
    return join_key(stage_prefix, ATTEMPT_FILE)


def read_claim(store: Store, stage_prefix: str) -> Claim:
    """The stage's current claim (NO_CLAIM when none was ever made)."""
    key = attempt_key(stage_prefix)
    try:
        raw = json.loads(store.get_bytes(key))
    except NotFoundError:
        return NO_CLAIM
    except ValueError as error:
        raise StoreError(f"{store.uri_of(key)} is not valid JSON: {error}") from error
    try:
        attempt = int(raw["attempt"])
        inherited = raw.get("inherited")
        claimed_at = raw.get("claimedAt")
        return Claim(
            attempt=attempt,
            inherited=None
            if inherited is None
            else frozenset((int(item["step"]), int(item["attempt"])) for item in inherited),
            claimed_at=datetime.fromisoformat(claimed_at) if claimed_at else None,
            node=raw.get("node"),
            extra={k: v for k, v in raw.items() if k not in ("attempt", "inherited", "claimedAt", "node")},
        )
    except (KeyError, TypeError, ValueError) as error:
        raise StoreError(f"{store.uri_of(key)} is malformed ({error!r}): expected {{'attempt': N, ...}}") from error


def claim(
    store: Store,
    stage_prefix: str,
    attempt: int | None,
    committed: Iterable[tuple[int, int]],
) -> Claim:
    """Claim the stage for `attempt` (None: the newest claimed + 1) and write attempt.json.

    `committed` is (step, attempt) of every checkpoint with a manifest now; the ones the
    previous claim admits become this claim's inheritance. An explicit attempt older than
    the claimed one raises FencedError; the same one is a re-run and claims nothing new.
    """
    if attempt is not None and attempt < 0:
        raise ValueError(f"attempt must be >= 0, got {attempt}")
    current = read_claim(store, stage_prefix)
    if attempt is not None and attempt < current.attempt:
        raise FencedError(
            f"attempt {attempt} of {store.uri_of(stage_prefix)} is stale: attempt {current.attempt} "
            f"claimed it at {current.claimed_at} (node {current.node})"
        )
    if attempt is not None and attempt == current.attempt and current.inherited is not None:
        return current
    new = Claim(
        attempt=current.attempt + 1 if attempt is None else attempt,
        inherited=frozenset(item for item in committed if current.admits(*item)),
        claimed_at=datetime.now(UTC),
        node=os.environ.get("NODE_NAME") or os.uname().nodename,
    )
    store.put_json(attempt_key(stage_prefix), new.to_json())
    log.info("attempt claimed", stage=store.uri_of(stage_prefix), attempt=new.attempt, previous=current.attempt)
    return new


def check_fence(store: Store, stage_prefix: str, mine: Claim) -> None:
    """Raise FencedError if a newer attempt has claimed the stage since `mine`.

    If an older attempt overwrote attempt.json (two claims racing), `mine` is written again so
    that the older one is fenced at its next check.
    """
    current = read_claim(store, stage_prefix)
    if current.attempt > mine.attempt:
        raise FencedError(
            f"attempt {mine.attempt} of {store.uri_of(stage_prefix)} is fenced: attempt {current.attempt} "
            f"claimed the stage at {current.claimed_at} (node {current.node}); this attempt must stop"
        )
    if current.attempt < mine.attempt:
        log.warning(
            "older attempt overwrote the claim; claiming again",
            stage=store.uri_of(stage_prefix),
            attempt=mine.attempt,
            found=current.attempt,
        )
        store.put_json(attempt_key(stage_prefix), mine.to_json())
