"""What the home operator knows of its islands now: each island's nodes (qualified by its name),
the atoll pods there, the GPUs pods hold there, and a client to reach it.

The island monitor writes it after each probe (atoll.operator.islands.monitor: nodes, the
GPUs pods hold) and each island's pod watch whenever its pods change
(atoll.operator.islands.watch: the atoll pods there, from then on instead of the probes'
lists); the reconciler's threads read it (placement over the union of fleets, the run's pods
on islands) and dispatch through it. A change of a run's pods there calls `on_pod_change`.
Every method holds one lock. An island that stops answering keeps its last known nodes,
marked unschedulable (no new expert goes there, running ones are not taken for lost) and its
last known pods. Never logs or returns a kubeconfig.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from atoll.api.island import ComputeIslandSpec
from atoll.operator.islands.dispatch import island_pod_view
from atoll.operator.islands.fleet import IslandFleet, island_nodes, priced, qualified
from atoll.operator.islands.kubeconfig import client_for
from atoll.operator.ledger import GpuHolder, pod_holder
from atoll.operator.views import PodView


def holder_key(island: str, namespace: str, name: str) -> str:
    """A pod on an island in the GPU ledger (home pods are namespace/name)."""
    return f"{island}:{namespace}/{name}"


@dataclass(frozen=True, slots=True)
class _Island:
    fleet: IslandFleet
    pods: tuple[PodView, ...]
    holders: Mapping[str, GpuHolder]
    kubeconfig: str
    version: str
    watched: bool = False
    """Its pods come from its pod watch, no longer from the probes' lists."""


def _views(island: str, pods: Iterable[Mapping[str, Any]]) -> tuple[PodView, ...]:
    found = (island_pod_view(island, body) for body in pods)
    return tuple(view for view in found if view is not None)


def _runs_changed(old: Iterable[PodView], new: Iterable[PodView]) -> set[tuple[str, str]]:
    """(home namespace, run) of every pod that appeared, changed or went."""
    before, after = {p.name: p for p in old}, {p.name: p for p in new}
    changed = set()
    for name in before.keys() | after.keys():
        if before.get(name) != after.get(name):
            pod = after.get(name) or before[name]
            changed.add((pod.origin_namespace or pod.namespace, pod.run))
    return changed


def _holders(island: str, namespace: str, pods: Iterable[Mapping[str, Any]]) -> dict[str, GpuHolder]:
    """What the island's bound pods hold (GPUs, CPU, memory), at their qualified node names."""
    held: dict[str, GpuHolder] = {}
    for pod in pods:
        holder = pod_holder(pod)
        if holder is None or not (pod.get("spec") or {}).get("nodeName"):
            continue
        name = (pod.get("metadata") or {})["name"]
        held[holder_key(island, namespace, name)] = replace(holder, node=qualified(island, holder.node))
    return held


class IslandRegistry:
    """The islands as last seen, shared by the island monitor and the reconciler."""

    def __init__(self, connect: Callable[[str], Any] = client_for) -> None:
        self._lock = threading.Lock()
        self._islands: dict[str, _Island] = {}
        self._clients: dict[str, tuple[str, Any]] = {}
        self._connect = connect
        self._synced = False
        self.on_pod_change: Callable[[str, str], None] | None = None
        """Called (home namespace, run) from a watch's thread when that run's pods on an island change."""

    def reached(
        self,
        name: str,
        spec: ComputeIslandSpec,
        *,
        kubeconfig: str,
        version: str,
        nodes: Iterable[Mapping[str, Any]],
        pods: Iterable[Mapping[str, Any]],
        accepts: bool,
    ) -> None:
        """An island answered: its nodes (unschedulable unless it `accepts` experts) and pods (its
        atoll pods kept as they are once its pod watch feeds them)."""
        pod_list = list(pods)
        views = priced(island_nodes(name, nodes), spec.cost_per_gpu_hour)
        if not accepts:
            views = tuple(replace(view, unschedulable=True) for view in views)
        fleet = IslandFleet(name=name, namespace=spec.namespace, store_endpoint=spec.store_endpoint, nodes=views)
        island = _Island(
            fleet=fleet,
            pods=_views(name, pod_list),
            holders=_holders(name, spec.namespace, pod_list),
            kubeconfig=kubeconfig,
            version=version,
        )
        with self._lock:
            previous = self._islands.get(name)
            if previous is not None and previous.watched:
                island = replace(island, pods=previous.pods, watched=True)
            self._islands[name] = island

    def watched(self, name: str, pods: Iterable[Mapping[str, Any]]) -> None:
        """The island's atoll pods as its pod watch sees them now (every one of them): from now on
        they replace what probes list; the runs whose pods changed are told `on_pod_change`."""
        views = _views(name, pods)
        with self._lock:
            island = self._islands.get(name)
            if island is None:
                return  # removed meanwhile
            changed = _runs_changed(island.pods, views)
            self._islands[name] = replace(island, pods=views, watched=True)
            listener = self.on_pod_change
        if listener is not None:
            for namespace, run in sorted(changed):
                listener(namespace, run)

    def unreached(self, name: str, spec: ComputeIslandSpec, *, since: datetime) -> None:
        """An island did not answer (since `since`, its status.disconnectedSince): no new experts
        there; what was seen of it stays. An island never reached since this operator started
        is known from now on, with no nodes or pods, so the decision can tell that it is
        unreachable (and, after failurePolicy.islandLostSeconds, lost)."""
        with self._lock:
            island = self._islands.get(name)
            if island is None:
                fleet = IslandFleet(
                    name=name, namespace=spec.namespace, store_endpoint=spec.store_endpoint, nodes=(),
                    disconnected_since=since,
                )  # fmt: skip
                self._islands[name] = _Island(fleet=fleet, pods=(), holders={}, kubeconfig="", version="")
                return
            nodes = tuple(replace(view, unschedulable=True) for view in island.fleet.nodes)
            fleet = replace(island.fleet, nodes=nodes, disconnected_since=since)
            self._islands[name] = replace(island, fleet=fleet)

    def mark_synced(self) -> None:
        """The island monitor has looked at every island once (reached or not)."""
        with self._lock:
            self._synced = True

    @property
    def synced(self) -> bool:
        """Whether every island was looked at since this operator started: until then an island
        missing here may just not be probed yet."""
        with self._lock:
            return self._synced

    def keep_only(self, names: Iterable[str]) -> None:
        """Forget the islands whose ComputeIsland is gone."""
        kept = set(names)
        with self._lock:
            for name in [n for n in self._islands if n not in kept]:
                del self._islands[name]
                self._clients.pop(name, None)

    def fleets(self) -> tuple[IslandFleet, ...]:
        with self._lock:
            return tuple(island.fleet for _, island in sorted(self._islands.items()))

    def pods_of(self, namespace: str, run: str) -> tuple[PodView, ...]:
        """The pods of the run `namespace/run` on every island."""
        with self._lock:
            islands = list(self._islands.values())
        return tuple(p for i in islands for p in i.pods if p.origin_namespace == namespace and p.run == run)

    def holders(self) -> dict[str, GpuHolder]:
        """Every pod holding GPUs on an island (keys: holder_key)."""
        with self._lock:
            return {key: holder for island in self._islands.values() for key, holder in island.holders.items()}

    def fleet(self, name: str) -> IslandFleet | None:
        with self._lock:
            island = self._islands.get(name)
        return None if island is None else island.fleet

    def core(self, name: str) -> Any:
        """A CoreV1Api for the island (built again when its kubeconfig Secret changed)."""
        from kubernetes import client

        with self._lock:
            island = self._islands.get(name)
            if island is None:
                raise LookupError(f"island {name} is not known (not probed yet, or deleted)")
            if not island.kubeconfig:
                raise LookupError(f"island {name} was not reached since the operator started")
            cached = self._clients.get(name)
            if cached is None or cached[0] != island.version:
                cached = (island.version, self._connect(island.kubeconfig))
                self._clients[name] = cached
            return client.CoreV1Api(cached[1])
