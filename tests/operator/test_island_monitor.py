"""The operator keeps a ComputeIsland's status current against a real second control plane: a
Role that is too small, a rotated Secret, a broken kubeconfig; credentials appear nowhere."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml

from atoll.operator.islands.kubeconfig import standalone
from atoll.operator.islands.register import island_manifest, kubeconfig_secret, secret_name
from tests.env import fleet as fleet_builders
from tests.env import kube
from tests.env.cluster import ControlPlane
from tests.operator.conftest import OperatorProcess
from tests.operator.islands import ISLAND_NAMESPACE, MEAGRE, RELEASE, Island

pytestmark = pytest.mark.cluster

POOL = fleet_builders.Pool("island-l4", 2, fleet_builders.L4, 4, cpu=48, memory_gib=192, execute=False)


@pytest.fixture
def island_name(atoll_crds: ControlPlane) -> Iterator[str]:
    name = f"lab-{uuid.uuid4().hex[:6]}"
    yield name
    atoll_crds.kubectl("delete", "computeisland", name, "--ignore-not-found", "--wait=false")


def _status(home: ControlPlane, name: str) -> dict[str, Any]:
    status: dict[str, Any] = home.kubectl_json("get", "computeisland", name).get("status") or {}
    return status


def _condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions", []) if c["type"] == kind), {})


def _wait(home: ControlPlane, name: str, check: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
    found: dict[str, Any] = {}

    def ready() -> bool:
        found.clear()
        found.update(_status(home, name))
        return check(found)

    kube.wait_for(ready, timeout=60, what=what)
    return found


def _store(home: ControlPlane, namespace: str, name: str, kubeconfig: str, uid: str) -> None:
    secret = kubeconfig_secret(name, namespace=namespace, kubeconfig=kubeconfig, owner_uid=uid)
    home.kubectl("apply", "-f", "-", input=json.dumps(secret))


def test_status_follows_access_rotation_and_a_broken_kubeconfig(
    atoll_crds: ControlPlane, island: Island, namespace: str, island_name: str,
    start_operator: Callable[..., OperatorProcess],
) -> None:  # fmt: skip
    from kubernetes import client

    fleet_builders.apply(client.CoreV1Api(island.plane.api_client()), fleet_builders.nodes([POOL]))
    meagre_file, least_file = island.kubeconfig(MEAGRE, "meagre"), island.kubeconfig(RELEASE, "least")
    meagre = standalone(meagre_file.read_text(), base=meagre_file.parent)
    least = standalone(least_file.read_text(), base=least_file.parent)
    tokens = [yaml.safe_load(text)["users"][0]["user"]["token"] for text in (meagre, least)]
    atoll_crds.kubectl("apply", "-f", "-", input=json.dumps(island_manifest(island_name, namespace=ISLAND_NAMESPACE)))
    uid = atoll_crds.kubectl_json("get", "computeisland", island_name)["metadata"]["uid"]
    _store(atoll_crds, namespace, island_name, meagre, uid)
    operator = start_operator("--island-namespace", namespace, "--island-interval", "1")

    # Too little access: not connected, and the retries back off without moving disconnectedSince.
    first = _wait(atoll_crds, island_name, lambda s: s.get("failedAttempts", 0) >= 1, "a failed probe")
    assert (_condition(first, "Connected")["status"], _condition(first, "Connected")["reason"]) == (
        "False",
        "Forbidden",
    )
    assert "list nodes" in _condition(first, "Connected")["message"]
    again = _wait(atoll_crds, island_name, lambda s: s.get("failedAttempts", 0) >= 2, "a second failed probe")
    assert again["disconnectedSince"] == first["disconnectedSince"]
    assert again["nextRetryTime"] > again["lastProbeTime"]

    # The Secret rotated to least-privilege credentials: picked up without a restart.
    _store(atoll_crds, namespace, island_name, least, uid)
    up = _wait(atoll_crds, island_name, lambda s: _condition(s, "Connected").get("status") == "True", "Connected")
    assert _condition(up, "Ready")["status"] == "True"
    assert up["inventory"] == [{"product": "NVIDIA-L4", "nodes": 2, "gpus": 8, "free": 8}]
    assert (up["failedAttempts"], up.get("disconnectedSince")) == (0, None)
    columns = atoll_crds.kubectl("get", "island", island_name).stdout
    assert "True" in columns
    assert " 8 " in columns

    # A broken kubeconfig: a reason, and the operator carries on.
    broken = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": secret_name(island_name), "namespace": namespace},
        "stringData": {"kubeconfig": "not: [yaml"},
    }
    atoll_crds.kubectl("apply", "-f", "-", input=json.dumps(broken))
    bad = _wait(
        atoll_crds, island_name, lambda s: _condition(s, "Connected").get("reason") == "InvalidKubeconfig", "the reason"
    )
    assert bad["failedAttempts"] == 1
    assert operator.alive, operator.output()[-2000:]

    # Credentials appear in no log line, status or Event.
    events = atoll_crds.kubectl_json("get", "events", "-n", "default", "--field-selector",
                                     f"involvedObject.name={island_name}")["items"]  # fmt: skip
    assert {e["reason"] for e in events} >= {"Forbidden", "Connected", "Ready", "InvalidKubeconfig"}
    seen = operator.output() + json.dumps(_status(atoll_crds, island_name)) + json.dumps(events)
    assert "island probed" in operator.output()
    for token in tokens:  # a JWT: no piece of its claims or signature either (a message may be cut short)
        assert token not in seen
        for part in token.split(".")[1:]:
            assert part[:20] not in seen
    assert "BEGIN CERTIFICATE" not in seen
