"""Keeps every ComputeIsland's status current: probes each island, patches its status, posts an
Event when Connected or Ready changes.

A loop on a thread of its own, next to kopf (`atoll operator --island-namespace NS`): each
tick lists the islands and reads each one's kubeconfig Secret from NS; it probes an island
when a probe is due (always while connected; after nextRetryTime while disconnected), when
its spec changed, or when its Secret changed (a rotation is used at the next tick, backoff
or not). With a registry it also records what each probe saw (the island's nodes and pods:
placement and the reconciler read them there), removes the orphans of deleted runs from
each island it reached and, with `watches`, keeps a pod watch on each island it reached
(atoll.operator.islands.watch: seeded with the probe's list, stopped when the island is
removed or its kubeconfig Secret changes), which feeds the island's pods from then on. Only
the leader replica probes. It never logs, stores or posts a kubeconfig or token.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from atoll.api.island import ComputeIslandSpec, ComputeIslandStatus
from atoll.api.spec import API_GROUP, API_GROUP_VERSION, API_VERSION
from atoll.log import get_logger
from atoll.operator.crd import ISLAND, RUN
from atoll.operator.islands.fleet import accepts_experts
from atoll.operator.islands.probe import probe as probe_island
from atoll.operator.islands.probe import read_kubeconfig
from atoll.operator.islands.registry import IslandRegistry
from atoll.operator.islands.remote import Islands
from atoll.operator.islands.status import Outcome, Reached, Unreached, changed, due, next_status
from atoll.operator.islands.watch import IslandWatches, PodCache
from atoll.operator.periodic import PeriodicTask

log = get_logger(__name__)
EVENT_NAMESPACE = "default"
"""Events about a cluster-scoped object live in `default` (where kubectl describe looks)."""


class IslandMonitor:
    """Probes the islands every `interval_seconds` and writes what it saw into their status."""

    def __init__(
        self,
        api_client: Any,
        namespace: str,
        *,
        interval_seconds: float = 10.0,
        acting: Callable[[], bool] = lambda: True,
        probe: Callable[[str, str], Outcome] = probe_island,
        islands: Islands | None = None,
        watches: IslandWatches | None = None,
    ) -> None:
        from kubernetes import client

        self.islands = islands
        self.registry: IslandRegistry | None = None if islands is None else islands.registry
        self.namespace = namespace
        self.interval_seconds = interval_seconds
        self.acting = acting
        self.probe = probe
        self.watches = watches if self.registry is not None else None
        self.custom: Any = client.CustomObjectsApi(api_client)  # dict bodies, dict answers
        self.core: Any = client.CoreV1Api(api_client)
        self._secret_versions: dict[str, str] = {}
        self._loop: PeriodicTask | None = None

    # --- one tick -------------------------------------------------------------------------

    def tick(self, now: datetime | None = None) -> None:
        """Probe every island that needs it and patch its status."""
        islands = self.custom.list_cluster_custom_object(API_GROUP, API_VERSION, ISLAND.plural)["items"]
        names = {island["metadata"]["name"] for island in islands}
        self._secret_versions = {name: v for name, v in self._secret_versions.items() if name in names}
        if self.registry is not None:
            self.registry.keep_only(names)
        if self.watches is not None:
            self.watches.keep_only(names)
        for island in islands:
            self.reconcile(island, now or datetime.now(UTC))
        if self.registry is not None:
            self.registry.mark_synced()

    def reconcile(self, island: dict[str, Any], now: datetime) -> None:
        name = island["metadata"]["name"]
        generation = island["metadata"].get("generation")
        try:
            spec = ComputeIslandSpec.model_validate(island.get("spec") or {})
            previous = ComputeIslandStatus.model_validate(island.get("status") or {})
        except ValidationError as error:
            log.warning("island skipped: unreadable spec or status", island=name, errors=error.error_count())
            return
        secret = read_kubeconfig(self.core, self.namespace, spec.kubeconfig_secret_ref)
        version = secret[1] if isinstance(secret, tuple) else ""
        rotated = self._secret_versions.get(name) != version
        if not (due(previous, now) or rotated or previous.observed_generation != generation):
            return
        outcome = secret if isinstance(secret, Unreached) else self.probe(secret[0], spec.namespace)
        current = next_status(previous, outcome, spec=spec, now=now, generation=generation)
        body = {"status": current.model_dump(by_alias=True, mode="json")}
        self.custom.patch_cluster_custom_object_status(API_GROUP, API_VERSION, ISLAND.plural, name, body)
        self._secret_versions[name] = version
        if isinstance(outcome, Reached) and not isinstance(secret, Unreached):
            self._reached(name, spec, secret[0], version, outcome, accepts_experts(spec, current))
        elif self.registry is not None:
            self.registry.unreached(name, spec, since=current.disconnected_since or now)
            if self.watches is not None:  # a watch with the credentials of a Secret that changed stops
                self.watches.retire(name, unless_version=version)
        for condition in changed(previous, current):
            self._event(island, condition.status == "True", condition.reason, f"{condition.type}: {condition.message}")
        log.info(
            "island probed",
            island=name,
            connected=current.conditions[0].status,
            reason=current.conditions[0].reason,
            ready=current.conditions[1].status,
            gpus=current.gpus,
            failed_attempts=current.failed_attempts,
        )

    def _reached(  # noqa: PLR0917 - what one successful probe saw
        self, name: str, spec: ComputeIslandSpec, kubeconfig: str, version: str, outcome: Reached, accepts: bool
    ) -> None:
        """Record the island's nodes and pods, watch its pods, then remove the orphans of deleted runs there."""
        if self.registry is None or self.islands is None:
            return
        self.registry.reached(
            name, spec, kubeconfig=kubeconfig, version=version, nodes=outcome.nodes, pods=outcome.pods,
            accepts=accepts,
        )  # fmt: skip
        if self.watches is not None:
            try:
                seed = PodCache.listed(outcome.pods, outcome.pods_version)
                self.watches.ensure(name, namespace=spec.namespace, kubeconfig=kubeconfig, version=version, seed=seed)
            except Exception as error:  # the probes' lists stand in; tried again next probe
                log.warning("island pod watch not started", island=name, error=type(error).__name__)
        try:
            self.islands.collect_orphans(name, self._live_runs)
        except Exception as error:  # an island that fails now is tried again at the next probe
            log.warning("orphans not collected, tried again next probe", island=name, error=type(error).__name__)

    def _live_runs(self) -> set[str]:
        """The UIDs of every DDMRun at home."""
        runs = self.custom.list_cluster_custom_object(API_GROUP, API_VERSION, RUN.plural)["items"]
        return {str(run["metadata"]["uid"]) for run in runs}

    def _event(self, island: dict[str, Any], normal: bool, reason: str, message: str) -> None:
        from kubernetes.client.exceptions import ApiException

        now = datetime.now(UTC).isoformat()
        body = {
            "metadata": {"generateName": f"{island['metadata']['name']}.", "namespace": EVENT_NAMESPACE},
            "involvedObject": {
                "apiVersion": API_GROUP_VERSION, "kind": ISLAND.kind,
                "name": island["metadata"]["name"], "uid": island["metadata"]["uid"],
            },
            "reason": reason, "message": message[:1024], "type": "Normal" if normal else "Warning",
            "source": {"component": "atoll-operator"}, "firstTimestamp": now, "lastTimestamp": now, "count": 1,
        }  # fmt: skip
        try:
            self.core.create_namespaced_event(EVENT_NAMESPACE, body)
        except ApiException as error:
            log.warning("event not posted", island=island["metadata"]["name"], status=error.status)

    # --- the loop -------------------------------------------------------------------------

    def start(self) -> IslandMonitor:
        """Tick every `interval_seconds` on a thread of its own while acting, until stop()."""
        self._loop = PeriodicTask(
            "islands",
            self.tick,
            self.interval_seconds,
            failed="island tick failed, retried next tick",
            when=self.acting,
        )
        self._loop.start()
        return self

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.stop()
        if self.watches is not None:
            self.watches.stop_all()
