"""The observe step: everything one tick of a run decides from, read once into an `Observation`.

It takes a copy of the kopf indexes (made by the handler in the event loop, so nothing
mutates them meanwhile), the run's body and the memory of earlier ticks, and reads what
the indexes cannot show: the run's Secret and store (spec.json until it is stored; then
heartbeats, claims, done markers, checkpoints and cluster sizes, throttled to
store_poll_seconds) and, from the API server, a pod the index may not show yet. The GPU
usage is read by the reconciler under the GPU ledger's lock, right before deciding. Credentials go into the
store client only: never into logs, status or Events. Never writes anything.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from atoll.api.placement import HOME_ISLAND
from atoll.api.spec import DDMRunSpec
from atoll.api.status import DDMExpertStatus, DDMRunStatus, StageStatus
from atoll.log import get_logger
from atoll.operator import storage
from atoll.operator.islands.dispatch import island_pod_view
from atoll.operator.islands.fleet import IslandFleet, split_node
from atoll.operator.islands.remote import Islands
from atoll.operator.kube import Kube
from atoll.operator.ledger import GpuHolder
from atoll.operator.placement.pools import GrowablePool
from atoll.operator.reconcile.context import own_objects, parse_status
from atoll.operator.reconcile.observation import Observation, RunMemory, RunObject, StoreProblem, StoreSnapshot
from atoll.operator.settings import OperatorSettings
from atoll.operator.views import ExpertView, NodeView, PodView
from atoll.stages import StageJob, current_progress
from atoll.store import Store, StoreError

log = get_logger("atoll.operator.reconcile")

FINAL = ("Succeeded", "Failed")


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


GpuHolders = Callable[[], Mapping[str, GpuHolder]]
"""A fresh copy of every pod that holds GPUs (atoll's or not), by namespace/name."""


@dataclass
class _RunStore:
    """One run's store client and the last snapshot read from it."""

    store: Store | None = None
    identity: tuple[str, str | None, str | None] | None = None
    last_poll: float = -math.inf
    snapshot: StoreSnapshot = field(default_factory=StoreSnapshot)
    down_since: datetime | None = None


class RunStores:
    """The store client of every run (opened with its Secret, reopened when that changes)."""

    def __init__(self) -> None:
        self._runs: dict[tuple[str, str, str], _RunStore] = {}

    def of(self, run: RunObject) -> _RunStore:
        return self._runs.setdefault((run.namespace, run.name, run.uid), _RunStore())

    def store(self, run: RunObject) -> Store | None:
        """The run's store client, if one was opened."""
        return self.of(run).store

    def forget(self, run: RunObject) -> None:
        self._runs.pop((run.namespace, run.name, run.uid), None)


class Observer:
    """Builds one run's Observation per tick."""

    def __init__(
        self, kube: Kube, settings: OperatorSettings, stores: RunStores, islands: Islands | None = None
    ) -> None:
        self.kube = kube
        self.settings = settings
        self.stores = stores
        self.islands = islands
        self._ahead: dict[tuple[str, str, str], dict[str, PodView]] = {}
        """Per run, pods read from the API server that the index showed less far along."""

    def forget(self, run: RunObject) -> None:
        """The run is gone: drop what was read of its pods."""
        self._ahead.pop((run.namespace, run.name, run.uid), None)

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
        confirmed = self._confirm_missing(run, previous, experts, own_pods)
        store = self._read_store(run, spec, previous, experts, own_pods + confirmed, monotonic=monotonic, now=now)
        return replace(observation, pods=self._not_behind(run, indexes.pods, confirmed), store=store)

    # --- pods -----------------------------------------------------------------------------

    def _confirm_missing(
        self,
        run: RunObject,
        previous: DDMRunStatus,
        experts: Mapping[int, DDMExpertStatus],
        pods: tuple[PodView, ...],
    ) -> tuple[PodView, ...]:
        """Pods the index may not show (created a moment ago, or trailing in the watch), from the
        API server, before the decision calls them lost: a pod a stage's status names, and a pod
        the run's usage holds GPUs with (else one tick that missed it counted its attempt ended
        and posted CapacityReleased while it ran on)."""
        missing: dict[str, str] = {}
        """Pod name → the node (island-qualified) it was last known on."""
        for job, status in _stage_statuses(previous, experts):
            if status.attempt == 0 or status.phase not in ("Pending", "Running") or not status.pod:
                continue
            if any(p.stage == job.stage and p.expert == job.expert and p.attempt >= status.attempt for p in pods):
                continue
            missing[str(status.pod)] = status.node or ""
        seen = {p.name for p in pods}
        for held in previous.usage.holding if previous.usage is not None else ():
            if held.pod not in seen:
                missing.setdefault(held.pod, held.node)
        home: set[str] = set()
        found: list[PodView] = []
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

    def _not_behind(
        self, run: RunObject, indexed: tuple[PodView, ...], confirmed: tuple[PodView, ...]
    ) -> tuple[PodView, ...]:
        """The run's pods, none shown less far along than a tick saw it: a pod read from the
        API server (the index did not show it yet) stands in for the index's view of it until
        the index shows it as far along (bound, started, ended: a pod never goes back). Under
        load the pod watch trails by seconds; without this, the tick after a pod was read
        Running saw it Pending again, wrote the expert back to Pending (and Running once more)
        and took its GPUs for given back."""
        ahead = self._ahead.setdefault((run.namespace, run.name, run.uid), {})
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

    # --- the store ------------------------------------------------------------------------

    def _read_store(
        self,
        run: RunObject,
        spec: DDMRunSpec,
        previous: DDMRunStatus,
        experts: Mapping[int, DDMExpertStatus],
        pods: tuple[PodView, ...],
        *,
        monotonic: float,
        now: datetime,
    ) -> StoreSnapshot:
        cache = self.stores.of(run)
        try:
            target = storage.store_target(spec, run.namespace, run.name, self.settings)
            store = self._open(cache, target, run.namespace)
        except storage.RunSetupError as error:
            return StoreSnapshot(setup=StoreProblem(reason=error.reason, message=error.message, permanent=True))
        snapshot = replace(
            cache.snapshot,
            run_uri=target.run_uri,
            spec_uri=target.spec_uri,
            secret=target.secret if target.s3 else None,
            setup=None,
        )
        if not previous.store_uri:
            snapshot = self._read_spec(store, spec, target, snapshot, run_owner(run))
            if snapshot.spec != "stored":
                cache.snapshot = snapshot
                return snapshot
        if monotonic - cache.last_poll >= self.settings.store_poll_seconds:
            cache.last_poll = monotonic
            snapshot = self._poll(
                cache=cache, store=store, target=target, previous=previous, experts=experts, snapshot=snapshot, now=now
            )
        snapshot = self._finished_pods(store, pods, previous, experts, snapshot)
        cache.snapshot = snapshot
        return snapshot

    def _open(self, cache: _RunStore, target: storage.StoreTarget, namespace: str) -> Store:
        env, secret_version = None, None
        if target.s3 and target.secret:
            secret = self.kube.get_secret(namespace, target.secret)
            env = storage.credentials(secret, target.secret, namespace)
            secret_version = (secret or {}).get("metadata", {}).get("resourceVersion")
        identity = (target.run_uri, target.secret, secret_version)
        if cache.store is None or cache.identity != identity:
            cache.store = storage.open_run_store(target, env)
            cache.identity = identity
        return cache.store

    def _read_spec(
        self,
        store: Store,
        spec: DDMRunSpec,
        target: storage.StoreTarget,
        snapshot: StoreSnapshot,
        owner: storage.RunOwner | None,
    ) -> StoreSnapshot:
        """Whether spec.json is there, and the prefix this run's (read until the run has it in
        status.storeUri)."""
        try:
            stored = storage.stored_spec(store, spec, owner=owner)
        except storage.RunSetupError as error:
            return replace(snapshot, setup=StoreProblem(reason=error.reason, message=error.message, permanent=True))
        except StoreError as error:
            problem = storage.classify_store_error(error, target)
            setup = StoreProblem(reason=problem.reason, message=problem.message, permanent=problem.permanent)
            return replace(snapshot, setup=setup, spec="unknown")
        return replace(snapshot, spec="stored" if stored else "absent")

    def _poll(
        self,
        *,
        cache: _RunStore,
        store: Store,
        target: storage.StoreTarget,
        previous: DDMRunStatus,
        experts: Mapping[int, DDMExpertStatus],
        snapshot: StoreSnapshot,
        now: datetime,
    ) -> StoreSnapshot:
        """Heartbeats (only those of the attempt holding the claim), claims, done markers of
        finished-looking stages, new checkpoints and the cluster sizes."""
        progress = dict(snapshot.progress)
        claims = dict(snapshot.claims)
        done = dict(snapshot.done)
        checkpoints = dict(snapshot.checkpoints)
        sizes = snapshot.cluster_sizes
        try:
            for job in _poll_jobs(previous, experts):
                claims[job.slug] = storage.claimed_attempt(store, job.stage, job.expert)
                heartbeat = current_progress(storage.read_progress(store, job.stage, job.expert), claims[job.slug])
                if heartbeat is None:
                    progress.pop(job.slug, None)
                else:
                    progress[job.slug] = heartbeat
                if heartbeat is not None and heartbeat.state == "done" and not done.get(job.slug):
                    done[job.slug] = store.exists(job.done_marker)
                newest = heartbeat.last_checkpoint if heartbeat is not None and job.trains else None
                known = checkpoints.get(job.slug)
                if newest is not None and (known is None or known.step != newest.step):
                    found = storage.last_checkpoint(store, job.stage, job.expert)
                    if found is not None:
                        checkpoints[job.slug] = found
            partition_done = previous.stages.partition.phase == "Succeeded" or done.get("partition")
            if not previous.cluster_sizes and not sizes and partition_done:
                found_sizes = storage.cluster_sizes(store)
                sizes = tuple(found_sizes) if found_sizes else None
        except StoreError as error:
            since = cache.down_since or now
            cache.down_since = since
            outage = f"{target.root} unreachable since {since.isoformat(timespec='seconds')}: {error}"
            return replace(snapshot, outage=outage)
        if cache.down_since is not None:
            log.info("store reachable again", uri=target.run_uri)
        cache.down_since = None
        snapshot = replace(snapshot, outage=None, cluster_sizes=sizes)
        return replace(snapshot, progress=progress, claims=claims, done=done, checkpoints=checkpoints)

    def _finished_pods(
        self,
        store: Store,
        pods: tuple[PodView, ...],
        previous: DDMRunStatus,
        experts: Mapping[int, DDMExpertStatus],
        snapshot: StoreSnapshot,
    ) -> StoreSnapshot:
        """A stage whose newest pod exited 0 is done once its marker exists: look now, not at the next poll."""
        if snapshot.outage is not None:
            return snapshot
        done = dict(snapshot.done)
        for job, status in _stage_statuses(previous, experts):
            if status.phase in FINAL or done.get(job.slug):
                continue
            mine = [p for p in pods if p.stage == job.stage and p.expert == job.expert]
            latest = max(mine, key=lambda p: p.attempt, default=None)
            if latest is None or latest.phase != "Succeeded":
                continue
            try:
                done[job.slug] = store.exists(job.done_marker)
            except StoreError:
                return snapshot  # the next poll says it
        return replace(snapshot, done=done)


def _progress(pod: PodView) -> int:
    """How far along a pod is, in the order a pod only ever moves: created, bound, started, ended."""
    if pod.finished:
        return 3
    if pod.started_at is not None or pod.phase == "Running":
        return 2
    return 1 if pod.node is not None else 0


def _stage_statuses(
    previous: DDMRunStatus, experts: Mapping[int, DDMExpertStatus]
) -> list[tuple[StageJob, StageStatus]]:
    """Every stage of the run with its status at the end of the last tick."""
    stages: list[tuple[StageJob, StageStatus]] = [
        (StageJob(name), getattr(previous.stages, name)) for name in ("partition", "router", "assemble", "evaluate")
    ]
    stages += [(StageJob("expert", k), status) for k, status in sorted(experts.items())]
    return stages


def _poll_jobs(previous: DDMRunStatus, experts: Mapping[int, DDMExpertStatus]) -> list[StageJob]:
    """Stages whose heartbeat is worth reading now: not final, and started or ready."""
    stages = previous.stages
    experts_done = bool(experts) and all(s.phase == "Succeeded" for s in experts.values())
    ready = {
        "partition": True,
        "router": stages.partition.phase == "Succeeded",
        "assemble": experts_done and stages.router.phase == "Succeeded",
        "evaluate": stages.assemble.phase == "Succeeded",
    }
    jobs = []
    for job, status in _stage_statuses(previous, experts):
        if status.phase in FINAL:
            continue
        if job.expert is not None or ready[job.stage] or status.attempt > 0:
            jobs.append(job)
    return jobs


def run_owner(run: RunObject) -> storage.RunOwner | None:
    """The owner record of the run's prefix (None for a run object without a uid)."""
    return storage.RunOwner(run.namespace, run.name, run.uid) if run.uid else None
