"""Island loss, decided: which islands cannot be reached now, which count as lost (unreachable
for failurePolicy.islandLostSeconds), and which pods on islands are left over from attempts
that a lost island ran and another attempt has replaced since.

The reconciler's decision reads these (atoll.operator.reconcile): the experts of a lost island
are placed again elsewhere and resume from their last checkpoint in the store, where the
fence (the claimed attempt) makes the old attempts' commits harmless. Nothing on an island is
deleted while it cannot be reached; once it answers again, the left-over pods are removed.
Pure: no API calls, no clock of its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime

from atoll.api.placement import HOME_ISLAND
from atoll.operator.islands.fleet import IslandFleet
from atoll.operator.views import PodView
from atoll.stages import ExitCode

StageKey = tuple[str, int | None]
"""(stage, expert) of a stage pod: the stage whose attempts it belongs to."""


def unreachable(fleets: Iterable[IslandFleet]) -> dict[str, datetime]:
    """Island → since when it has not answered (its status.disconnectedSince), for every island
    whose last probe failed."""
    return {f.name: f.disconnected_since for f in fleets if f.disconnected_since is not None}


def lost_islands(fleets: Iterable[IslandFleet], limit_seconds: float, now: datetime) -> dict[str, str]:
    """Island → why it counts as lost: unreachable for at least `limit_seconds`."""
    lost = {}
    for name, since in sorted(unreachable(fleets).items()):
        waited = (now - since).total_seconds()
        if waited >= limit_seconds:
            lost[name] = (
                f"island {name} unreachable for {waited:.0f} s (since {since.isoformat(timespec='seconds')}),"
                f" failurePolicy.islandLostSeconds is {limit_seconds:g}"
            )
    return lost


def deletable(pod: PodView, unreachable_islands: Mapping[str, datetime] | Iterable[str]) -> bool:
    """Whether the pod may be deleted now: not while its island cannot be reached (it is
    deleted once the island answers again)."""
    return pod.island == HOME_ISLAND or pod.island not in unreachable_islands


def left_over(
    pods: Iterable[PodView],
    current_attempts: Mapping[StageKey, int],
    unreachable_islands: Mapping[str, datetime] | Iterable[str],
) -> list[PodView]:
    """The pods on reachable islands that belong to an attempt older than their stage's current
    one and still run (the island was lost with them and answers again) or ended fenced (they
    tried to commit after the new attempt claimed the stage). Nobody else removes them while
    their run lives: an island's pods have no owner reference there. A superseded attempt that
    failed by itself keeps its pod, for its logs, as it would at home."""
    unreached = set(unreachable_islands)
    found = []
    for pod in pods:
        if pod.island == HOME_ISLAND or pod.island in unreached or pod.deleting:
            continue
        current = current_attempts.get((pod.stage, pod.expert), 0)
        if pod.attempt >= current:
            continue
        if pod.active or pod.exit_code == ExitCode.FENCED:
            found.append(pod)
    return sorted(found, key=lambda p: p.name)
