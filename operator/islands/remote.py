"""The home operator's calls to islands: create an expert's store Secret and pod there, read and
delete its pods, and collect the orphans of runs that no longer exist at home.

Every call goes through the island's client from the registry (atoll.operator.islands.registry)
and is confined to the island's namespace (all the remote Role allows). Creates are
create-if-absent, deletes ignore NotFound; any other API error is raised to the caller
(the executor records it, the next tick tries again). Never logs a Secret's data or a kubeconfig.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Any

from atoll.log import get_logger
from atoll.operator import api_json
from atoll.operator.islands.dispatch import LABEL_ORIGIN_RUN_UID, island_store_secret, orphans
from atoll.operator.islands.registry import IslandRegistry
from atoll.operator.kube import Kube

log = get_logger(__name__)
REQUEST_TIMEOUT_SECONDS = 10.0


def _status(error: Exception) -> int:
    return int(getattr(error, "status", 0) or 0)


class Islands:
    """Dispatch to the islands the registry knows."""

    def __init__(self, registry: IslandRegistry, kube: Kube, *, acting: Callable[[], bool] = lambda: True) -> None:
        self.registry = registry
        self.kube = kube
        self.acting = acting
        """The leader's fence: every write is refused unless this replica acts (as FencedKube at home)."""

    def _fence(self, what: str) -> None:
        if not self.acting():
            from kubernetes.client.exceptions import ApiException

            raise ApiException(status=0, reason=f"not the leader: {what} refused")

    def create_pod(
        self,
        island: str,
        manifest: Mapping[str, Any],
        *,
        origin_namespace: str,
        run: str,
        run_uid: str,
        home_secret: str | None,
    ) -> bool:
        """The pod on the island (False: it exists already), after its store Secret there."""
        from kubernetes.client.exceptions import ApiException

        self._fence("pod creation on an island")
        core = self.registry.core(island)
        fleet = self.registry.fleet(island)
        namespace = manifest["metadata"]["namespace"]
        if home_secret is not None:
            body = self.kube.get_secret(origin_namespace, home_secret)
            if body is None:
                raise LookupError(
                    f"Secret {origin_namespace}/{home_secret} (the run's store credentials) does not exist"
                )
            secret = island_store_secret(
                body, island_namespace=namespace, origin_namespace=origin_namespace, run=run, run_uid=run_uid,
                endpoint=None if fleet is None else fleet.store_endpoint,
            )  # fmt: skip
            try:
                core.create_namespaced_secret(namespace, secret, _request_timeout=REQUEST_TIMEOUT_SECONDS)
            except ApiException as error:
                if _status(error) != 409:
                    raise
                name = secret["metadata"]["name"]  # a rotated home Secret reaches the island with the next pod
                core.replace_namespaced_secret(name, namespace, secret, _request_timeout=REQUEST_TIMEOUT_SECONDS)
        try:
            core.create_namespaced_pod(namespace, dict(manifest), _request_timeout=REQUEST_TIMEOUT_SECONDS)
        except ApiException as error:
            if _status(error) == 409:
                return False
            raise
        log.info("pod created on island", island=island, pod=manifest["metadata"]["name"], namespace=namespace)
        return True

    def get_pod(self, island: str, namespace: str, name: str) -> dict[str, Any] | None:
        from kubernetes.client.exceptions import ApiException

        try:
            response = self.registry.core(island).read_namespaced_pod(
                name, namespace, _preload_content=False, _request_timeout=REQUEST_TIMEOUT_SECONDS
            )
        except ApiException as error:
            if _status(error) == 404:
                return None
            raise
        body: dict[str, Any] = api_json.loads(response.data)
        return body

    def delete_pod(self, island: str, namespace: str, name: str, *, grace_seconds: int | None = None) -> None:
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        self._fence("pod deletion on an island")
        options = client.V1DeleteOptions(grace_period_seconds=grace_seconds, propagation_policy="Background")
        try:
            self.registry.core(island).delete_namespaced_pod(
                name, namespace, body=options, _request_timeout=REQUEST_TIMEOUT_SECONDS
            )
        except ApiException as error:
            if _status(error) != 404:
                raise

    def collect_orphans(self, island: str, live_runs: Callable[[], Collection[str]]) -> list[str]:
        """Delete the pods and store Secrets on a reachable island whose origin run is not among
        `live_runs()` (the UIDs of every DDMRun at home, read after the island's objects, so a
        run created meanwhile is never taken for gone); the objects deleted."""
        fleet = self.registry.fleet(island)
        if fleet is None:
            return []
        core = self.registry.core(island)
        listed = {
            kind: api_json.loads(
                call(
                    fleet.namespace, label_selector=LABEL_ORIGIN_RUN_UID, _preload_content=False,
                    _request_timeout=REQUEST_TIMEOUT_SECONDS,
                ).data
            )["items"]
            for kind, call in (("pod", core.list_namespaced_pod), ("secret", core.list_namespaced_secret))
        }  # fmt: skip
        live = set(live_runs())
        deleted = []
        for name in orphans(listed["pod"], live):
            self.delete_pod(island, fleet.namespace, name)
            deleted.append(f"pod/{name}")
        for name in orphans(listed["secret"], live):
            self._fence("Secret deletion on an island")
            self._delete_secret(core, fleet.namespace, name)
            deleted.append(f"secret/{name}")
        if deleted:
            log.info("orphans of deleted runs removed from island", island=island, objects=deleted)
        return deleted

    @staticmethod
    def _delete_secret(core: Any, namespace: str, name: str) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            core.delete_namespaced_secret(name, namespace, _request_timeout=REQUEST_TIMEOUT_SECONDS)
        except ApiException as error:
            if _status(error) != 404:
                raise
