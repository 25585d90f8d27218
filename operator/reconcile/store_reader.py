"""The store part of the observe step: each run's store client, and what a tick reads of the store.

The run's Secret opens the client (reopened when the Secret changes); spec.json is read until
the run has it in status.storeUri; then, throttled to store_poll_seconds, the heartbeats of
the attempts holding each stage's claim, the claims, done markers, new checkpoints and the
cluster sizes; and at once, the done marker of a stage whose newest pod exited 0.
Credentials go into the store client only. Never writes anything.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime

from atoll.api.spec import DDMRunSpec
from atoll.api.status import DDMExpertStatus, DDMRunStatus, StageStatus
from atoll.log import get_logger
from atoll.operator import storage
from atoll.operator.kube import Kube
from atoll.operator.reconcile.observation import RunObject, StoreProblem, StoreSnapshot
from atoll.operator.settings import OperatorSettings
from atoll.operator.views import PodView
from atoll.stages import StageJob, current_progress
from atoll.store import Store, StoreError

log = get_logger("atoll.operator.reconcile")

FINAL = ("Succeeded", "Failed")


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


class StoreReader:
    """Reads one run's store for a tick, through the run's cached client."""

    def __init__(self, kube: Kube, settings: OperatorSettings, stores: RunStores) -> None:
        self.kube = kube
        self.settings = settings
        self.stores = stores

    def read(
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
        for job, status in stage_statuses(previous, experts):
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


def stage_statuses(
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
    for job, status in stage_statuses(previous, experts):
        if status.phase in FINAL:
            continue
        if job.expert is not None or ready[job.stage] or status.attempt > 0:
            jobs.append(job)
    return jobs


def run_owner(run: RunObject) -> storage.RunOwner | None:
    """The owner record of the run's prefix (None for a run object without a uid)."""
    return storage.RunOwner(run.namespace, run.name, run.uid) if run.uid else None
