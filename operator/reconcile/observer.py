"""The observe step: everything one tick of a run decides from, read once into an `Observation`.

It takes a copy of the kopf indexes (made by the handler in the event loop, so nothing
mutates them meanwhile), the run's body and the memory of earlier ticks, and reads what
the indexes cannot show: the run's store (atoll.operator.reconcile.store_reader) and, from
the API server, a pod the index may not show yet. The GPU usage is read by the reconciler
under the GPU ledger's lock, right before deciding. Never writes anything.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from atoll.api.placement import HOME_ISLAND
from atoll.api.spec import DDMRunSpec
from atoll.api.status import DDMExpertStatus, DDMRunStatus
from atoll.operator.islands.dispatch import island_pod_view
from atoll.operator.islands.fleet import IslandFleet, split_node
from atoll.operator.islands.remote import Islands
from atoll.operator.kube import Kube
from atoll.operator.ledger import GpuHolder
from atoll.operator.placement.pools import GrowablePool
from atoll.operator.reconcile.context import own_objects, parse_status
from atoll.operator.reconcile.observation import Observation, RunMemory, RunObject
from atoll.operator.reconcile.store_reader import FINAL, RunStores, StoreReader, stage_statuses
from atoll.operator.settings import OperatorSettings
from atoll.operator.views import ExpertView, NodeView, PodView


@dataclass(frozen=True)
class IndexSnapshot:
    """A copy of what the kopf indexes show for one run, taken at one instant (the GPU holders
    are read apart, under the GPU ledger's lock: see atoll.operator.reconcile)."""

    pods: tuple[PodView, ...] = ()
    experts: tuple[ExpertView, ...] = ()
    nodes: tuple[NodeView, ...] = ()
    """The home cluster's nodes and those of every known island (atoll.operator.islands.fleet)."""
    islands: tuple[IslandFleet, ...] = ()
    node_pools: tuple[GrowablePool, ...] = ()
    """Karpenter NodePools as growable pools, as last listed (atoll.operator.nodepools)."""
    islands_synced: bool = True
    """Whether the island monitor has looked at every island since the operator started."""


TRAILING_FOR = 30.0
"""Seconds after the index last lacked a pod the run's status names (its pod watch trails:
under a burst of pod events, by up to 15 s at 16 runs × 64 experts) during which the run's
pods not started yet are read from the API server each tick, if created as recently."""

GpuHolders = Callable[[], Mapping[str, GpuHolder]]
"""A fresh copy of every pod that holds GPUs (atoll's or not), by namespace/name."""


class Observer:
    """Builds one run's Observation per tick."""

    def __init__(
        self, kube: Kube, settings: OperatorSettings, stores: RunStores, islands: Islands | None = None
    ) -> None:
        self.kube = kube
        self.store = StoreReader(kube, settings, stores)
        """The run's store, read through its cached client (atoll.operator.reconcile.store_reader)."""
        self.islands = islands
        self._ahead: dict[tuple[str, str, str], dict[str, PodView]] = {}
        """Per run, pods read from the API server that the index showed less far along."""
        self._trailing: dict[tuple[str, str, str], float] = {}
        """Per run, when (monotonic) the index last lacked a pod the run's status names."""

    def forget(self, run: RunObject) -> None:
        """The run is gone: drop what was read of its pods."""
        self._ahead.pop(run.key, None)
        self._trailing.pop(run.key, None)

    def observe(
        self, body: Mapping[str, Any], indexes: IndexSnapshot, memory: RunMemory, *, now: datetime, monotonic: float
    ) -> Observation:
        run = RunObject.from_body(body)
        observation = Observation(
            run=run,
            pods=indexes.pods,
            experts=indexes.experts,
            nodes=indexes.nodes or None,
            islands=indexes.islands,
            node_pools=indexes.node_pools,
            islands_synced=indexes.islands_synced,
            now=now,
            monotonic=monotonic,
        )
        previous = memory.status or parse_status(run.status)
        if run.deleting or previous.phase in FINAL:
            return observation
        try:
            spec = DDMRunSpec.model_validate(run.spec)
        except ValidationError:
            return observation  # the decision fails the run, naming the fields
        own_pods, own_experts = own_objects(run, indexes.pods, indexes.experts)
        experts = {k: memory.experts.get(k, view.status) for k, view in own_experts.items()}
        confirmed = self._confirm_missing(run, previous, experts, own_pods, now=now, monotonic=monotonic)
        # A pod read from the API server first: it is at least as far along as the index's view of it.
        store = self.store.read(run, spec, previous, experts, confirmed + own_pods, monotonic=monotonic, now=now)
        return replace(observation, pods=self._not_behind(run, indexes.pods, confirmed), store=store)

    # --- pods -----------------------------------------------------------------------------

    def _confirm_missing(
        self,
        run: RunObject,
        previous: DDMRunStatus,
        experts: Mapping[int, DDMExpertStatus],
        pods: tuple[PodView, ...],
        *,
        now: datetime,
        monotonic: float,
    ) -> tuple[PodView, ...]:
        """Pods the index may not show (created a moment ago, or trailing in the watch), from the
        API server, before the decision calls them lost: a pod a stage's status names, and a pod
        the run's usage holds GPUs with (else one tick that missed it counted its attempt ended
        and posted CapacityReleased while it ran on). While the watch trails (`TRAILING_FOR`),
        the run's new pods that the index shows not started yet are read too, so that their
        start reaches the status when it happens, not when the watch shows it."""
        missing = _not_shown(previous, experts, pods)
        home: set[str] = set()
        found: list[PodView] = []
        if any(split_node(node)[0] == HOME_ISLAND or self.islands is None for node in missing.values()):
            self._trailing[run.key] = monotonic
        if monotonic - self._trailing.get(run.key, -math.inf) < TRAILING_FOR:
            home |= self._starting(run, pods, now)
        for name, node in sorted(missing.items()):
            island, _ = split_node(node)
            if self.islands is None or island == HOME_ISLAND:
                home.add(name)
            elif (view := self._read_island_pod(self.islands, run, name, island)) is not None:
                found.append(view)
        if home:  # one list of the run's pods, not a GET per pod (a burst of new pods the index trails)
            for body in self.kube.run_pods(run.namespace, run.name):
                if body["metadata"]["name"] in home and (view := PodView.from_body(body)) is not None:
                    found.append(view)
        return tuple(found)

    def _starting(self, run: RunObject, pods: tuple[PodView, ...], now: datetime) -> set[str]:
        """The run's pods at home created less than TRAILING_FOR ago and not started, as far as
        the index (or the last read of the API server) shows."""
        ahead = self._ahead.get(run.key, {})
        return {
            pod.name
            for pod in pods
            if pod.island == HOME_ISLAND and pod.active and pod.created_at is not None
            and _progress(ahead.get(pod.name, pod)) < 2
            and (now - pod.created_at).total_seconds() < TRAILING_FOR
        }  # fmt: skip

    def _not_behind(
        self, run: RunObject, indexed: tuple[PodView, ...], confirmed: tuple[PodView, ...]
    ) -> tuple[PodView, ...]:
        """The run's pods, none shown less far along than a tick saw it: a pod read from the
        API server (the index did not show it yet) stands in for the index's view of it until
        the index shows it as far along (bound, started, ended: a pod never goes back). Under
        load the pod watch trails by seconds; without this, the tick after a pod was read
        Running saw it Pending again, wrote the expert back to Pending (and Running once more)
        and took its GPUs for given back."""
        ahead = self._ahead.setdefault(run.key, {})
        for view in confirmed:
            ahead[view.name] = view
        pods: list[PodView] = []
        for view in indexed:
            newer = ahead.get(view.name)
            if newer is not None and _progress(newer) > _progress(view):
                pods.append(newer)
                continue
            ahead.pop(view.name, None)  # the index caught up
            pods.append(view)
        shown = {view.name for view in indexed}
        pods += [view for view in confirmed if view.name not in shown]
        for name in ahead.keys() - shown - {view.name for view in confirmed}:
            del ahead[name]  # neither the index nor the API server shows it now
        return tuple(pods)

    @staticmethod
    def _read_island_pod(islands: Islands, run: RunObject, name: str, island: str) -> PodView | None:
        """A stage pod straight from its island's API server (as last seen while it cannot be reached)."""
        fleet = islands.registry.fleet(island)
        if fleet is None:
            return None
        last_seen = next((p for p in islands.registry.pods_of(run.namespace, run.name) if p.name == name), None)
        if fleet.disconnected_since is not None:
            return last_seen  # its last probe failed: no request that would wait out a timeout each tick
        try:
            body = islands.get_pod(island, fleet.namespace, name)
        except Exception:  # unreachable now: the island's pods as last seen stand
            return last_seen
        return island_pod_view(island, body) if body is not None else None


def _not_shown(
    previous: DDMRunStatus, experts: Mapping[int, DDMExpertStatus], pods: tuple[PodView, ...]
) -> dict[str, str]:
    """The pods a stage's status names, or the run's usage holds GPUs with, that `pods` (the
    index) does not show: pod name → the node (island-qualified) it was last known on."""
    missing: dict[str, str] = {}
    for job, status in stage_statuses(previous, experts):
        if status.attempt == 0 or status.phase not in ("Pending", "Running") or not status.pod:
            continue
        if any(p.stage == job.stage and p.expert == job.expert and p.attempt >= status.attempt for p in pods):
            continue
        missing[str(status.pod)] = status.node or ""
    seen = {p.name for p in pods}
    for held in previous.usage.holding if previous.usage is not None else ():
        if held.pod not in seen:
            missing.setdefault(held.pod, held.node)
    return missing


def _progress(pod: PodView) -> int:
    """How far along a pod is, in the order a pod only ever moves: created, bound, started, ended."""
    if pod.finished:
        return 3
    if pod.started_at is not None or pod.phase == "Running":
        return 2
    return 1 if pod.node is not None else 0
