"""An island's pod watch against a real kube-apiserver (the `island` control plane, through the
least-privilege credentials of charts/atoll-island): seeded with what a real probe listed, it
brings a pod created, changed and deleted on the island into the registry within seconds,
with no probe in between (there is no island monitor here at all), and wakes the pod's run.
The seconds each took are printed."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from atoll.api.island import ComputeIslandSpec
from atoll.operator.islands.dispatch import LABEL_ORIGIN_NAMESPACE, LABEL_ORIGIN_OWNER_UID, LABEL_ORIGIN_RUN_UID
from atoll.operator.islands.kubeconfig import standalone
from atoll.operator.islands.probe import probe
from atoll.operator.islands.registry import IslandRegistry
from atoll.operator.islands.status import Reached
from atoll.operator.islands.watch import IslandWatches, PodCache
from atoll.operator.views import PodView
from tests.env import kube
from tests.operator.islands import ISLAND_NAMESPACE, RELEASE, Island

pytestmark = pytest.mark.cluster

ARRIVES_WITHIN_SECONDS = 10.0
"""A bound for a loaded machine; there is no probe here at all, so only the watch can bring it."""


def expert_pod(name: str, run: str) -> dict[str, Any]:
    """An expert pod as the home operator creates it on an island: atoll's labels and its origin."""
    labels = {
        "atoll.dev/run": run, "atoll.dev/stage": "expert", "atoll.dev/expert": "0", "atoll.dev/attempt": "1",
        LABEL_ORIGIN_NAMESPACE: "home-ns", LABEL_ORIGIN_RUN_UID: f"{run}-uid", LABEL_ORIGIN_OWNER_UID: "expert-uid",
    }  # fmt: skip
    container = {"name": "expert", "image": "busybox", "command": ["sleep", "3600"]}
    spec = {"containers": [container], "nodeSelector": {"atoll.dev/no-such-node": "true"}}  # stays Pending
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels}, "spec": spec}


@pytest.fixture
def watched(island: Island) -> Iterator[tuple[IslandRegistry, list[tuple[str, str]]]]:
    """A registry whose island `lab` is watched as the island monitor would watch it."""
    path = island.kubeconfig(RELEASE, f"watch-{uuid.uuid4().hex[:6]}")
    kubeconfig = standalone(path.read_text(), base=path.parent)
    spec = ComputeIslandSpec.model_validate({"kubeconfigSecretRef": {"name": "s"}, "namespace": ISLAND_NAMESPACE})
    outcome = probe(kubeconfig, ISLAND_NAMESPACE)
    assert isinstance(outcome, Reached), outcome
    assert outcome.pods_version, "the probe's list says where a watch starts"
    registry = IslandRegistry()
    woken: list[tuple[str, str]] = []
    registry.on_pod_change = lambda namespace, run: woken.append((namespace, run))
    registry.reached("lab", spec, kubeconfig=kubeconfig, version="1", nodes=outcome.nodes, pods=outcome.pods,
                     accepts=True)  # fmt: skip
    watches = IslandWatches(registry.watched)
    seed = PodCache.listed(outcome.pods, outcome.pods_version)
    watches.ensure("lab", namespace=ISLAND_NAMESPACE, kubeconfig=kubeconfig, version="1", seed=seed)
    try:
        yield registry, woken
    finally:
        watches.stop_all()


def arrives(registry: IslandRegistry, run: str, check: Any, what: str) -> float:
    """Seconds until check(the run's pods on the island) holds."""
    started = time.monotonic()
    kube.wait_for(lambda: check(registry.pods_of("home-ns", run)), timeout=ARRIVES_WITHIN_SECONDS, what=what,
                  interval=0.05)  # fmt: skip
    return time.monotonic() - started


def test_a_pod_change_on_the_island_reaches_the_registry_without_a_probe(
    island: Island, watched: tuple[IslandRegistry, list[tuple[str, str]]]
) -> None:
    registry, woken = watched
    run = f"w{uuid.uuid4().hex[:6]}"
    name = f"{run}-expert-0-a1"
    created = time.monotonic()
    island.plane.kubectl("apply", "-n", ISLAND_NAMESPACE, "-f", "-", input=json.dumps(expert_pod(name, run)))
    try:

        def pending(pods: tuple[PodView, ...]) -> bool:
            return [(p.name, p.island, p.phase) for p in pods] == [(name, "lab", "Pending")]

        seen = arrives(registry, run, pending, "the new pod in the registry")
        assert ("home-ns", run) in woken, "the run's reconciler is woken"
        total = time.monotonic() - created
        print(f"pod created -> in the registry: {total:.2f} s after kubectl began, {seen:.2f} s after it returned")
        island.plane.kubectl("label", "pod", name, "-n", ISLAND_NAMESPACE, "atoll.dev/attempt=2", "--overwrite")
        changed = arrives(registry, run, lambda pods: pods and pods[0].attempt == 2, "the pod's change")
        print(f"pod changed -> in the registry: {changed:.2f} s")
    finally:
        island.plane.kubectl("delete", "pod", name, "-n", ISLAND_NAMESPACE, "--grace-period=0", "--wait=false")
    gone = arrives(registry, run, lambda pods: pods == (), "the deleted pod gone from the registry")
    print(f"pod deleted -> gone from the registry: {gone:.2f} s")
