"""`atoll island add` against two real control planes: the home one (CRDs, operator namespace) and an
island with charts/atoll-island installed. Least-privilege credentials register the island; too
little, or an unreachable server, creates nothing anywhere.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from atoll.cli import main as atoll_main
from atoll.operator.islands.access import needed
from atoll.operator.islands.kubeconfig import client_for
from tests.env.cluster import ControlPlane
from tests.env.process import free_port
from tests.operator.islands import ISLAND_NAMESPACE, MEAGRE, RELEASE, Island

pytestmark = pytest.mark.cluster


@pytest.fixture
def island_name(atoll_crds: ControlPlane) -> Iterator[str]:
    """A fresh island name; its ComputeIsland (cluster-scoped, so not removed with the namespace) is deleted after."""
    name = f"lab-{uuid.uuid4().hex[:6]}"
    yield name
    atoll_crds.kubectl("delete", "computeisland", name, "--ignore-not-found", "--wait=false")


def _add(home: ControlPlane, namespace: str, name: str, kubeconfig: Path, *extra: str) -> int:
    return atoll_main([
        "island", "add", name, "--kubeconfig", str(kubeconfig), "--namespace", ISLAND_NAMESPACE,
        "--home-kubeconfig", str(home.kubeconfig), "--operator-namespace", namespace, *extra,
    ])  # fmt: skip


def _islands(home: ControlPlane) -> list[str]:
    return [item["metadata"]["name"] for item in home.kubectl_json("get", "computeislands")["items"]]


def _secrets(home: ControlPlane, namespace: str) -> list[str]:
    items = home.kubectl_json("get", "secrets", "-n", namespace, "-l", "atoll.dev/island")["items"]
    return [item["metadata"]["name"] for item in items]


def test_least_privilege_credentials_register_the_island(
    atoll_crds: ControlPlane, island: Island, namespace: str, island_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    kubeconfig = island.kubeconfig(RELEASE, "least")

    assert _add(atoll_crds, namespace, island_name, kubeconfig, "--store-endpoint", "127.0.0.1:9000") == 0
    out, err = capsys.readouterr()
    assert f"computeisland.atoll.dev/{island_name} created" in out
    assert "warning" not in err, err  # the chart grants nothing beyond what the operator needs

    found = atoll_crds.kubectl_json("get", "computeisland", island_name)
    assert found["spec"] == {
        "kubeconfigSecretRef": {"name": f"atoll-island-{island_name}", "key": "kubeconfig"},
        "namespace": ISLAND_NAMESPACE, "storeEndpoint": "127.0.0.1:9000", "costPerGpuHour": {}, "cordoned": False,
    }  # fmt: skip
    secret = atoll_crds.kubectl_json("get", "secret", f"atoll-island-{island_name}", "-n", namespace)
    assert secret["metadata"]["ownerReferences"][0]["uid"] == found["metadata"]["uid"]
    stored = base64.b64decode(secret["data"]["kubeconfig"]).decode()
    document = yaml.safe_load(stored)
    assert [c["name"] for c in document["contexts"]] == ["least"]
    assert "certificate-authority" not in document["clusters"][0]["cluster"]  # inlined: the operator has no files
    from kubernetes import client

    # The stored kubeconfig alone reaches the island, as the ServiceAccount.
    nodes = client.CoreV1Api(client_for(stored)).list_node()
    assert nodes.items is not None

    # Again: the island is configured (not duplicated), the Secret replaced.
    assert _add(atoll_crds, namespace, island_name, kubeconfig) == 0
    assert f"computeisland.atoll.dev/{island_name} configured" in capsys.readouterr().out
    assert _islands(atoll_crds).count(island_name) == 1


def test_too_little_access_lists_what_is_missing_and_creates_nothing(
    atoll_crds: ControlPlane, island: Island, namespace: str, island_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    kubeconfig = island.kubeconfig(MEAGRE, "meagre")

    assert _add(atoll_crds, namespace, island_name, kubeconfig) == 1
    err = capsys.readouterr().err
    missing = [line.strip() for line in err.splitlines() if line.startswith("  ")]
    granted = {f"{verb} pods in namespace {ISLAND_NAMESPACE}" for verb in ("get", "list", "watch")}
    assert missing == [str(request) for request in needed(ISLAND_NAMESPACE) if str(request) not in granted]
    assert "nothing was created" in err
    assert island_name not in _islands(atoll_crds)
    assert _secrets(atoll_crds, namespace) == []


def test_admin_credentials_work_but_are_flagged_as_broader(
    atoll_crds: ControlPlane, island: Island, namespace: str, island_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # kwokctl's admin kubeconfig names its client certificate and key by file: both are inlined.
    assert _add(atoll_crds, namespace, island_name, island.plane.kubeconfig) == 0
    err = capsys.readouterr().err
    assert "warning: the credentials may also list secrets (cluster-wide)" in err
    secret = atoll_crds.kubectl_json("get", "secret", f"atoll-island-{island_name}", "-n", namespace)
    user = yaml.safe_load(base64.b64decode(secret["data"]["kubeconfig"]))["users"][0]["user"]
    assert {"client-certificate-data", "client-key-data"} <= set(user)
    assert not {"client-certificate", "client-key"} & set(user)


def test_unreachable_island_creates_nothing(
    atoll_crds: ControlPlane, island: Island, namespace: str, island_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    document: dict[str, Any] = yaml.safe_load(island.kubeconfig(RELEASE, "gone").read_text())
    document["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{free_port()}"
    document["clusters"][0]["cluster"]["certificate-authority"] = str(island.directory / "gone" / "ca.crt")
    path = island.directory / "gone" / "unreachable.json"
    path.write_text(json.dumps(document))

    assert _add(atoll_crds, namespace, island_name, path) == 1
    err = capsys.readouterr().err
    assert "cannot reach the island's API server" in err
    token = document["users"][0]["user"]["token"]
    assert token not in err
    assert island_name not in _islands(atoll_crds)
    assert _secrets(atoll_crds, namespace) == []


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"metadata": {"name": "home"}}, "metadata.name"),
        ({"spec": {"costPerGpuHour": {"NVIDIA L4": 1}}}, "spec.costPerGpuHour"),
        ({"spec": {"namespace": "Not_A_Label"}}, "spec.namespace"),
        ({"spec": {"storeEndpoint": "http://minio:9000"}}, "spec.storeEndpoint"),
    ],
    ids=["reserved-name", "cost-product", "namespace", "endpoint"],
)
def test_the_api_server_refuses_bad_islands_naming_the_field(
    atoll_crds: ControlPlane, island_name: str, change: dict[str, Any], field: str
) -> None:
    document: dict[str, Any] = {
        "apiVersion": "atoll.dev/v1alpha1", "kind": "ComputeIsland", "metadata": {"name": island_name},
        "spec": {"kubeconfigSecretRef": {"name": "s"}},
    }  # fmt: skip
    for section, values in change.items():
        document[section].update(values)
    result = atoll_crds.kubectl("apply", "-f", "-", input=json.dumps(document), check=False)
    assert result.returncode != 0
    assert field in result.stderr, result.stderr
