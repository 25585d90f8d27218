"""The kopf wiring: indexes of what the operator watches, one worker per DDMRun, a finalizer.

Each run has a daemon that reconciles it (atoll.operator.reconcile: observe → decide →
act, on a worker thread) every `interval_seconds`, and at once when one of its pods changes
(the pod index wakes it; on an island, the island's pod watch), so a DDMExpert shows Running
as soon as its pod does; the tick's Events are posted from the event loop. The indexes are copied in the
event loop, where kopf updates them, so a reconciliation on its worker thread never reads
an index while it changes. Level-based: every tick looks at the whole observed state, so
missed events and operator restarts cost nothing. With several replicas only the one that
holds the leader Lease ticks (atoll.operator.leader); the others keep their indexes warm and
start from a fresh memory the moment they lead. Each tick feeds the metrics and the
readiness probe (atoll.operator.metrics, atoll.operator.probes). Everything here is the glue
kopf needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, cast

import kopf

from atoll.api.spec import API_GROUP, API_VERSION, DDMRunSpec
from atoll.log import get_logger
from atoll.operator import storage
from atoll.operator.crd import EXPERT, RUN
from atoll.operator.islands.fleet import union_nodes
from atoll.operator.islands.registry import IslandRegistry
from atoll.operator.islands.remote import Islands
from atoll.operator.kube import Kube, connection_info
from atoll.operator.leader import AlwaysLeader, Leadership
from atoll.operator.ledger import GpuHolder, pod_holder
from atoll.operator.metrics import OperatorMetrics
from atoll.operator.placement.pools import GrowablePool
from atoll.operator.probes import Health
from atoll.operator.reconcile import Event, IndexSnapshot, Reconciler, RunMemory
from atoll.operator.reconcile.observer import GpuHolders
from atoll.operator.settings import OperatorSettings
from atoll.operator.views import LABEL_RUN, ExpertView, NodeView, PodView
from atoll.store import StoreError

log = get_logger(__name__)

FINALIZER = f"{API_GROUP}/cleanup"
PAUSE_SECONDS = 0.25
"""Least time between two ticks of one run: a burst of pod events makes one tick, not many."""
STANDBY_POLL_SECONDS = 1.0
"""How often a standby replica's run workers look whether it leads now."""
BEAT_SECONDS = 2.0
"""How often the event loop tells the liveness probe it is alive (and measures its own lag)."""


@dataclass(frozen=True)
class Replica:
    """This replica's place among the operator's replicas: whether it may act, and what it reports."""

    leadership: Leadership = field(default_factory=AlwaysLeader)
    metrics: OperatorMetrics = field(default_factory=lambda: OperatorMetrics(AlwaysLeader()))
    health: Health = field(default_factory=lambda: Health(AlwaysLeader()))


def kopf_settings(settings: OperatorSettings) -> kopf.OperatorSettings:
    """kopf's own settings: our finalizer and annotation prefix, no log lines as Events."""
    config = kopf.OperatorSettings()
    config.persistence.finalizer = FINALIZER
    config.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=API_GROUP)
    config.persistence.diffbase_storage = RunsOnlyDiffBase(prefix=API_GROUP, key="last-handled-configuration")
    # Handler log lines are not Events (they would flood them); the reconciler posts its
    # own Events on every transition. Errors of kopf itself still become Events.
    config.posting.level = logging.ERROR
    config.execution.max_workers = 16
    # The namespaces are given by name (or all) and the CRDs exist before the operator starts
    # (the chart installs them): no need to list and watch namespaces and CRDs at runtime,
    # which would need RBAC on both (and, without it, costs 9 failed retries at startup).
    config.scanning.disabled = True
    config.watching.server_timeout = 300
    config.watching.client_timeout = 330
    config.networking.request_timeout = 60
    return config


INDEXED_ONLY = frozenset({"Pod", "Node", EXPERT.kind})
"""Kinds the operator only indexes: no change handler or daemon looks at their diffs."""


class RunsOnlyDiffBase(kopf.AnnotationsDiffBaseStorage):
    """kopf's diff base ("essence": a deep copy of the object without its status), built only
    for the kinds that have change handlers or daemons (DDMRuns). kopf builds one for every
    watch event of every watched kind, and pods, nodes and DDMExperts have none of those
    handlers: at 1000 nodes and 2000 pods those deep copies were a fifth of the event loop's
    time, which delays the indexes the reconciler reads."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        if body.get("kind") in INDEXED_ONLY:
            return cast(kopf.BodyEssence, {})
        return super().build(body=body, extra_fields=extra_fields)


def post_event(event: Event) -> None:
    """Queue an Event for kopf's poster (call it in a kopf handler's context)."""
    kopf.event(kopf.Body(cast(Any, event.target)), type=event.type, reason=event.reason, message=event.message)


def snapshot(
    key: tuple[str, str],
    indexes: Mapping[str, Any],
    islands: IslandRegistry | None = None,
    node_pools: tuple[GrowablePool, ...] = (),
) -> IndexSnapshot:
    """What the indexes show for one run, copied at once (call it in the event loop), and what
    the island registry knows: the islands' nodes next to home's, the run's pods there; and the
    cluster's NodePools as last listed."""
    home = tuple(view for values in indexes["gpu_nodes"].values() for view in values)
    pods = tuple(indexes["run_pods"].get(key, ()))
    experts = tuple(indexes["run_experts"].get(key, ()))
    if islands is None:
        return IndexSnapshot(pods=pods, experts=experts, nodes=home, node_pools=node_pools)
    fleets = islands.fleets()
    return IndexSnapshot(
        pods=pods + islands.pods_of(*key),
        experts=experts,
        nodes=union_nodes(home, fleets),
        islands=fleets,
        node_pools=node_pools,
        islands_synced=islands.synced,
    )


def gpu_holders(index: Mapping[str, Any]) -> dict[str, GpuHolder]:
    """Every GPU holder the index shows, copied at once (call it in the event loop)."""
    return {pod: holder for pod, values in index.items() for holder in values}


def holders_from(
    loop: asyncio.AbstractEventLoop, index: Mapping[str, Any], islands: IslandRegistry | None = None
) -> GpuHolders:
    """For a worker thread: a copy of the GPU holders, made in the event loop when called (and
    the pods holding GPUs on islands, as the island registry last saw them)."""

    async def copy_now() -> dict[str, GpuHolder]:
        return gpu_holders(index)

    def read() -> dict[str, GpuHolder]:
        held = asyncio.run_coroutine_threadsafe(copy_now(), loop).result(timeout=60)
        return held if islands is None else {**held, **islands.holders()}

    return read


def build_registry(
    reconciler: Reconciler, kube: Kube, settings: OperatorSettings, replica: Replica | None = None
) -> kopf.OperatorRegistry:
    """Every handler of the operator, on a registry of its own."""
    registry = kopf.OperatorRegistry()
    workers = ThreadPoolExecutor(max_workers=16, thread_name_prefix="reconcile")
    wakes: dict[tuple[str, str], asyncio.Event] = {}
    replica = replica or Replica()
    _register_probes(registry, replica)

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        """The cluster and credentials the client was configured with (service account or kubeconfig)."""
        info: kopf.ConnectionInfo = connection_info(kube.configuration)
        return info

    # The index handlers are async: cheap and pure, they run in the event loop itself instead
    # of a worker thread per watch event (thousands of pod events at scale).

    @kopf.index("pods", labels={LABEL_RUN: kopf.PRESENT}, id="run_pods", registry=registry)
    async def run_pods(body: kopf.Body, **_: Any) -> dict[Any, PodView]:
        """A run's pods, by (namespace, run); a change wakes the run's reconciler at once."""
        view = PodView.from_body(body)
        if view is None:
            return {}
        if (woken := wakes.get((view.namespace, view.run))) is not None:
            woken.set()
        return {(view.namespace, view.run): view}

    @kopf.index("pods", id="gpu_pods", registry=registry)
    async def gpu_pods(body: kopf.Body, **_: Any) -> dict[Any, GpuHolder]:
        """Every non-terminal pod that holds GPUs, CPU or memory of a node (atoll's or not), by
        namespace/name: its node (pinned node while unbound), GPUs and CPU/memory requests."""
        holder = pod_holder(body)
        return {} if holder is None else {f"{body.metadata.namespace}/{body.metadata.name}": holder}

    @kopf.index("nodes", id="gpu_nodes", registry=registry)
    async def gpu_nodes(body: kopf.Body, **_: Any) -> dict[Any, NodeView]:
        return {body["metadata"]["name"]: NodeView.from_body(body)}

    @kopf.index(API_GROUP, API_VERSION, EXPERT.plural, id="run_experts", registry=registry)
    async def run_experts(body: kopf.Body, **_: Any) -> dict[Any, ExpertView]:
        view = ExpertView.from_body(body)
        return {(view.namespace, view.run): view} if view is not None else {}

    if reconciler.islands is not None:
        _wake_on_island_pods(registry, reconciler.islands.registry, wakes)

    @kopf.daemon(
        API_GROUP, API_VERSION, RUN.plural, id="reconcile", cancellation_backoff=30, cancellation_timeout=10,
        registry=registry,
    )  # fmt: skip
    async def reconcile_run(*, body: kopf.Body, stopped: kopf.DaemonStopped, **kwargs: Any) -> None:
        key = (body.metadata.namespace or "default", body.metadata.name or "")
        woken = wakes.setdefault(key, asyncio.Event())
        replica.health.run_started()
        try:
            await _reconcile_until_stopped(reconciler, workers, body, kwargs, woken, stopped, settings, replica)
        finally:
            replica.health.run_stopped()
            replica.metrics.runs.forget(key)
            if wakes.get(key) is woken:
                del wakes[key]

    @kopf.on.delete(API_GROUP, API_VERSION, RUN.plural, id="cleanup", registry=registry)
    def cleanup(*, body: kopf.Body, name: str, namespace: str | None, **_: Any) -> None:
        """Stop the run's pods; delete its store data only when reclaimPolicy is Delete (the leader alone)."""
        if not replica.leadership.acting():
            raise kopf.TemporaryError("not the leader: the leader replica cleans up", delay=STANDBY_POLL_SECONDS * 5)
        namespace = namespace or "default"
        remaining = kube.run_pods(namespace, name)
        for pod in remaining:
            if pod["metadata"].get("deletionTimestamp") is None:
                kube.delete_pod(namespace, pod["metadata"]["name"])
        if remaining:
            raise kopf.TemporaryError(f"waiting for {len(remaining)} pod(s) of {name} to stop", delay=2)
        if reconciler.islands is not None:
            _stop_island_pods(reconciler.islands, namespace, name)
        _reclaim(body, name, namespace, kube, settings)
        reconciler.forget(body)

    return registry


def _wake_on_island_pods(
    registry: kopf.OperatorRegistry, islands: IslandRegistry, wakes: dict[tuple[str, str], asyncio.Event]
) -> None:
    """A run's pods changing on an island wake its reconciler, as its pods at home do (the
    island's pod watch calls from a thread of its own: the wake is handed to the event loop)."""

    @kopf.on.startup(registry=registry)
    async def wake_on_island_pods(**_: Any) -> None:
        islands.on_pod_change = island_waker(asyncio.get_running_loop(), wakes)


def island_waker(
    loop: asyncio.AbstractEventLoop, wakes: Mapping[tuple[str, str], asyncio.Event]
) -> Callable[[str, str], None]:
    """For any thread: wake the reconciler of the run (namespace, run), in `loop`."""

    def wake(namespace: str, run: str) -> None:
        if (woken := wakes.get((namespace, run))) is not None:
            woken.set()

    def from_thread(namespace: str, run: str) -> None:
        with contextlib.suppress(RuntimeError):  # the event loop has closed: the operator is stopping
            loop.call_soon_threadsafe(wake, namespace, run)

    return from_thread


def _register_probes(registry: kopf.OperatorRegistry, replica: Replica) -> None:
    """kopf is up once its startup handlers ran; from then on the event loop beats for liveness."""
    beats: list[asyncio.Task[None]] = []

    @kopf.on.startup(registry=registry)
    async def started(**_: Any) -> None:
        async def beat() -> None:
            loop = asyncio.get_running_loop()
            while True:
                replica.health.beat()
                due = loop.time() + BEAT_SECONDS
                await asyncio.sleep(BEAT_SECONDS)
                replica.metrics.event_loop_lag.observe(max(0.0, loop.time() - due))

        beats.append(asyncio.create_task(beat()))
        replica.health.started()

    @kopf.on.cleanup(registry=registry)
    async def stopping(**_: Any) -> None:
        for task in beats:
            task.cancel()


async def _reconcile_until_stopped(  # noqa: PLR0917 - the daemon's pieces, passed through
    reconciler: Reconciler,
    workers: ThreadPoolExecutor,
    body: kopf.Body,
    indexes: Mapping[str, Any],
    woken: asyncio.Event,
    stopped: kopf.DaemonStopped,
    settings: OperatorSettings,
    replica: Replica,
) -> None:
    """One run's ticks, each on a worker thread, until kopf stops the daemon. Only while this
    replica leads; a new term starts from a fresh memory (another leader acted meanwhile)."""
    key = (body.metadata.namespace or "default", body.metadata.name or "")
    memory = RunMemory()
    term: int | None = None
    loop = asyncio.get_running_loop()
    islands = None if reconciler.islands is None else reconciler.islands.registry
    holders = holders_from(loop, indexes["gpu_pods"], islands)
    leadership, metrics = replica.leadership, replica.metrics
    while not stopped:
        woken.clear()
        if not leadership.acting():
            if term is not None:
                memory, term = RunMemory(), None
                metrics.runs.forget(key)
                reconciler.stand_by(body)
            await _pause(woken, stopped, STANDBY_POLL_SECONDS)
            continue
        if term != leadership.term:
            memory, term = RunMemory(), leadership.term
        raw = copy.deepcopy(dict(body))  # the live body changes under us as events arrive
        pools = reconciler.node_pools.current() if reconciler.node_pools is not None else ()
        copied = snapshot(key, indexes, islands, pools)
        started = time.perf_counter()
        try:
            memory, events = await loop.run_in_executor(workers, reconciler.tick, raw, copied, holders, memory)
        except Exception:
            metrics.errors.inc()
            log.exception("reconciliation failed; retried at the next tick", run=key[1], namespace=key[0])
        else:
            metrics.reconcile_seconds.observe(time.perf_counter() - started)
            metrics.record_run(key, memory.status, memory.experts, raw.get("spec") or {})
            replica.health.ticked()
            if leadership.acting():
                for event in events:
                    post_event(event)  # from the event loop: straight onto kopf's posting queue
        await _pause(woken, stopped, settings.interval_seconds)


async def _pause(woken: asyncio.Event, stopped: kopf.DaemonStopped, seconds: float) -> None:
    """Until the next tick: `seconds`, or sooner when a pod of the run changed; at once when stopped."""
    loop = asyncio.get_running_loop()
    await asyncio.sleep(PAUSE_SECONDS)
    deadline = loop.time() + max(0.0, seconds - PAUSE_SECONDS)
    while not stopped and not woken.is_set() and loop.time() < deadline:
        try:
            await asyncio.wait_for(woken.wait(), timeout=min(0.5, max(0.0, deadline - loop.time())))
        except TimeoutError:
            continue


def _stop_island_pods(islands: Islands, namespace: str, run: str) -> None:
    """Delete the run's active pods on islands, best effort: an island that cannot be reached
    now does not hold the run's deletion up (the island monitor collects them later)."""
    for pod in islands.registry.pods_of(namespace, run):
        if not pod.active:
            continue
        try:
            islands.delete_pod(pod.island, pod.namespace, pod.name)
        except Exception as error:  # collected as an orphan once the island answers
            log.warning("island pod of a deleted run left to orphan collection", island=pod.island, pod=pod.name,
                        error=type(error).__name__)  # fmt: skip


def _reclaim(body: kopf.Body, name: str, namespace: str, kube: Kube, settings: OperatorSettings) -> None:
    """Delete the run's store prefix if its spec asks for it and owner.json names this DDMRun's
    UID (best effort; a refusal or a failure is said in a Warning Event and the data is kept)."""
    try:
        spec = DDMRunSpec.model_validate(body.get("spec") or {})
    except ValueError as error:
        if (body.get("spec") or {}).get("storage", {}).get("reclaimPolicy") == "Delete":
            message = f"store data kept: the spec is not valid, so its store prefix is not trusted: {error}"
            kopf.event(body, type="Warning", reason="ReclaimRefused", message=message[:1000])
        return
    if spec.storage.reclaim_policy != "Delete":
        return
    try:
        target = storage.store_target(spec, namespace, name, settings)
        env = None
        if target.s3 and target.secret:
            env = storage.credentials(kube.get_secret(namespace, target.secret), target.secret, namespace)
        store = storage.open_run_store(target, env)
        storage.reclaim(store, str(body.metadata.uid or ""))
    except (storage.RunSetupError, StoreError) as error:
        reason = "ReclaimRefused" if getattr(error, "reason", None) == "ReclaimRefused" else "ReclaimFailed"
        kopf.event(body, type="Warning", reason=reason, message=f"store data kept: {error}")
        log.warning("store data of a deleted run kept", run=name, namespace=namespace, reason=reason, error=str(error))
        return
    log.info("store data of a deleted run removed", run=name, namespace=namespace, uri=target.run_uri)
