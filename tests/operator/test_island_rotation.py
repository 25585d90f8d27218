"""A rotated kubeconfig Secret is picked up without a restart: the island monitor re-reads the
Secret at every tick and probes at once when its resourceVersion changed, even while a
disconnected island waits out its backoff; the registry then builds the island's client from
the new kubeconfig. The home API server is a fake here (plain dicts in, calls recorded)."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

from atoll.operator.islands.monitor import IslandMonitor
from atoll.operator.islands.registry import IslandRegistry
from atoll.operator.islands.remote import Islands
from atoll.operator.islands.status import Outcome, Reached, Unreached

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
NAMESPACE = "atoll-system"


class Home:
    """The home cluster: one ComputeIsland `lab`, its kubeconfig Secret, no DDMRuns."""

    def __init__(self) -> None:
        self.island: dict[str, Any] = {
            "metadata": {"name": "lab", "uid": "lab-uid", "generation": 1},
            "spec": {"kubeconfigSecretRef": {"name": "atoll-island-lab"}, "namespace": "atoll"},
            "status": {},
        }
        self.kubeconfig, self.version = "first", "1"

    def rotate(self, kubeconfig: str) -> None:
        self.kubeconfig, self.version = kubeconfig, str(int(self.version) + 1)

    # CustomObjectsApi
    def list_cluster_custom_object(self, group: str, version: str, plural: str) -> dict[str, Any]:
        return {"items": [self.island] if plural == "computeislands" else []}

    def patch_cluster_custom_object_status(self, *args: Any) -> None:
        self.island = {**self.island, "status": args[-1]["status"]}

    # CoreV1Api
    def read_namespaced_secret(self, name: str, namespace: str, **_: Any) -> Any:
        assert (name, namespace) == ("atoll-island-lab", NAMESPACE)
        data = {"kubeconfig": base64.b64encode(self.kubeconfig.encode()).decode()}
        return SimpleNamespace(data=data, metadata=SimpleNamespace(resource_version=self.version))

    def create_namespaced_event(self, namespace: str, body: Any) -> None:
        pass


class Island:
    """The island's API server as the probe sees it: it accepts only `accepted` kubeconfigs."""

    def __init__(self, accepted: str) -> None:
        self.accepted = accepted
        self.probed: list[str] = []

    def probe(self, kubeconfig: str, namespace: str) -> Outcome:
        self.probed.append(kubeconfig)
        if kubeconfig != self.accepted:
            return Unreached(
                reason="Unauthorized", message="the API server at https://lab:6443 refused the credentials"
            )
        return Reached(version="v1.36.3", nodes=(), used_gpus={})


def _monitor(home: Home, island: Island, connected: list[str]) -> IslandMonitor:
    def connect(kubeconfig: str) -> str:
        connected.append(kubeconfig)
        return kubeconfig

    islands = Islands(IslandRegistry(connect=connect), kube=None)  # type: ignore[arg-type]
    monitor = IslandMonitor(None, NAMESPACE, probe=island.probe, islands=islands)
    monitor.custom, monitor.core = home, home
    return monitor


def test_a_rotated_secret_is_probed_at_once_during_backoff_and_used_for_the_islands_client() -> None:
    home, island = Home(), Island(accepted="second")
    connected: list[str] = []
    monitor = _monitor(home, island, connected)

    monitor.tick(T0)
    assert island.probed == ["first"]
    status = home.island["status"]
    assert status["failedAttempts"] == 1
    assert status["nextRetryTime"] > T0.isoformat(), "backing off"

    monitor.tick(T0 + timedelta(seconds=1))
    assert island.probed == ["first"], "the same Secret waits out the backoff"

    home.rotate("second")
    monitor.tick(T0 + timedelta(seconds=2))
    assert island.probed == ["first", "second"], "a new resourceVersion is probed at once"
    assert home.island["status"]["failedAttempts"] == 0
    assert home.island["status"]["conditions"][0]["status"] == "True"
    assert monitor.registry is not None
    monitor.registry.core("lab")
    assert connected[-1] == "second", "the island's client is built from the rotated kubeconfig"

    island.accepted = "third"
    home.rotate("third")
    monitor.tick(T0 + timedelta(seconds=3))
    monitor.registry.core("lab")
    assert connected[-1] == "third", "rotated again while connected: a new client, no restart"
