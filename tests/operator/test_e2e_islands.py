"""A DDMRun restricted to a compute island trains its experts there, against two real control
planes: the home operator plans over the island's nodes, creates each expert's pod and store
Secret in the island's namespace (through the island's least-privilege credentials), mirrors
the pods into the DDMExperts at home, and collects them once the run is deleted. The island's
own pod runtime executes the pods; the checkpoints land in the one shared MinIO.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from atoll.operator.islands.dispatch import LABEL_ORIGIN_RUN_UID, store_secret_name
from atoll.operator.islands.kubeconfig import standalone
from atoll.operator.islands.register import island_manifest, kubeconfig_secret
from tests.env import fleet as fleet_builders
from tests.env import kube
from tests.env.cluster import ControlPlane
from tests.env.minio import MinioServer
from tests.env.runtime_process import PodRuntimeProcess
from tests.operator.conftest import SECRET, OperatorProcess, apply, phase, pods, wait_run
from tests.operator.islands import ISLAND_NAMESPACE, RELEASE, Island

pytestmark = [pytest.mark.cluster, pytest.mark.minio, pytest.mark.e2e]

POOL_NAME = "lab-t4"


@pytest.fixture
def island_fleet(island: Island, tmp_path: Path) -> Iterator[PodRuntimeProcess]:
    """Two T4 nodes on the island, run by a pod runtime of the island's own; removed afterwards."""
    from kubernetes import client

    core = client.CoreV1Api(island.plane.api_client())
    pool = fleet_builders.Pool(POOL_NAME, 2, fleet_builders.T4, 4, cpu=48, memory_gib=192, execute=True)
    names = fleet_builders.apply(core, fleet_builders.nodes([pool]))
    runtime = PodRuntimeProcess(island.plane.kubeconfig, tmp_path / "island-runtime").start()
    try:
        kube.wait_nodes_ready(core, names, timeout=60)
        yield runtime
    finally:
        runtime.stop()
        for name in names:
            island.plane.kubectl("delete", "node", name, "--ignore-not-found", "--wait=false")


@pytest.fixture
def lab(atoll_crds: ControlPlane, island: Island, namespace: str, minio: MinioServer) -> Iterator[str]:
    """A ComputeIsland at home for the island, with least-privilege credentials in `namespace`."""
    name = f"lab-{uuid.uuid4().hex[:6]}"
    path = island.kubeconfig(RELEASE, name)
    text = standalone(path.read_text(), base=path.parent)
    # The same MinIO at another address of this machine: what the island's pods must be given.
    host, port = minio.endpoint.rsplit(":", 1)
    assert host == "127.0.0.1"
    manifest = island_manifest(name, namespace=ISLAND_NAMESPACE, store_endpoint=f"localhost:{port}")
    atoll_crds.kubectl("apply", "-f", "-", input=json.dumps(manifest))
    uid = atoll_crds.kubectl_json("get", "computeisland", name)["metadata"]["uid"]
    secret = kubeconfig_secret(name, namespace=namespace, kubeconfig=text, owner_uid=uid)
    atoll_crds.kubectl("apply", "-f", "-", input=json.dumps(secret))
    yield name
    atoll_crds.kubectl("delete", "computeisland", name, "--ignore-not-found", "--wait=false")


def small_run(name: str, island: str) -> dict[str, Any]:
    return {
        "apiVersion": "atoll.dev/v1alpha1",
        "kind": "DDMRun",
        "metadata": {"name": name},
        "spec": {
            "dataset": {"uri": "builtin://digits", "resolution": 8, "maxExamples": 64},
            "partition": {"clusters": 2, "features": "pixels", "fineClusters": 8, "sampleSize": 64},
            "expert": {"preset": "tiny", "steps": 10, "globalBatchSize": 8, "checkpointEvery": 5},
            "router": {"preset": "tiny", "steps": 10, "globalBatchSize": 8},
            "sampling": {"steps": 2},
            "evaluation": {"samples": 4, "strategies": ["top-1"]},
            # The island's T4 nodes: its other (simulated) nodes never execute a pod.
            "placement": {"islands": {"restrict": [island]}, "gpu": {"products": ["Tesla-T4"]}},
            "failurePolicy": {"maxRestarts": 2, "backoffSeconds": 1, "maxBackoffSeconds": 2},
        },
    }


def island_objects(island: Island, kind: str, uid: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = island.plane.kubectl_json(
        "get", kind, "-n", ISLAND_NAMESPACE, "-l", f"{LABEL_ORIGIN_RUN_UID}={uid}"
    )["items"]
    return items


def test_a_run_restricted_to_an_island_trains_its_experts_there(  # noqa: PLR0917 - fixtures
    control_plane: ControlPlane,
    atoll_crds: ControlPlane,
    fleet: fleet_builders.Fleet,
    pod_runtime: PodRuntimeProcess,
    minio: MinioServer,
    minio_client: Any,
    minio_bucket: str,
    namespace: str,
    store_secret: str,
    island: Island,
    island_fleet: PodRuntimeProcess,
    lab: str,
    start_operator: Callable[..., OperatorProcess],
) -> None:
    operator = start_operator(
        "--default-store", store_secret, "--default-store-secret", SECRET, "--max-gpus-per-pod", "1",
        "--island-namespace", namespace, "--island-interval", "1",
    )  # fmt: skip
    name = "on-island"
    apply(control_plane, namespace, small_run(name, lab))
    done = wait_run(control_plane, namespace, name, lambda r: phase(r) == "Succeeded", timeout=600, what="Succeeded")
    uid = done["metadata"]["uid"]

    # Each expert ran on the island, and home shows where.
    experts = control_plane.kubectl_json("get", "ddmexperts", "-n", namespace)["items"]
    assert len(experts) == 2
    for expert in experts:
        status = expert["status"]
        assert status["phase"] == "Succeeded", status
        assert status["island"] == lab
        assert status["node"].startswith(f"{lab}/{POOL_NAME}-"), status["node"]
    header, *rows = control_plane.kubectl("get", "ddmx", "-n", namespace).stdout.split("\n")
    column = header.split().index("ISLAND")
    assert [row.split()[column] for row in rows if row.strip()] == [lab, lab], rows
    home_stages = {p["metadata"]["labels"]["atoll.dev/stage"] for p in pods(control_plane, namespace, name)}
    assert "expert" not in home_stages, "no expert pod at home"
    assert {"partition", "router", "assemble", "evaluate"} <= home_stages, "the short stages stay at home"

    # On the island: the expert pods (origin-labelled, no owner there), run by the island's runtime.
    remote = island_objects(island, "pods", uid)
    assert sorted(p["metadata"]["labels"]["atoll.dev/expert"] for p in remote) == ["0", "1"]
    for pod in remote:
        assert pod["status"]["phase"] == "Succeeded"
        assert "ownerReferences" not in pod["metadata"]
        assert island_fleet.logs(ISLAND_NAMESPACE, pod["metadata"]["name"]), "executed on the island"
    (secret,) = island_objects(island, "secrets", uid)
    assert secret["metadata"]["name"] == store_secret_name(uid)
    endpoint = base64.b64decode(secret["data"]["endpoint"]).decode()
    assert endpoint == f"localhost:{minio.endpoint.rsplit(':', 1)[1]}", "the island's storeEndpoint"

    # Their checkpoints are in the shared store, read back at home by the router and assembly.
    bucket, root = store_secret.removeprefix("s3://").split("/", 1)
    for k in (0, 1):
        prefix = f"{root}/{namespace}/{name}/experts/{k}/"
        keys = {o.object_name for o in minio_client.list_objects(bucket, prefix=prefix, recursive=True)}
        assert f"{prefix}done.json" in keys
        assert any(key.endswith("manifest.json") for key in keys), "a committed checkpoint"
    assert done["status"]["modelUri"].endswith(f"/{namespace}/{name}/model")

    # The run deleted at home: its pods and Secret on the island are collected.
    control_plane.kubectl("delete", "ddmrun", name, "-n", namespace, "--timeout=60s")
    kube.wait_for(
        lambda: not island_objects(island, "pods", uid) and not island_objects(island, "secrets", uid),
        timeout=60,
        what="the island's orphans removed",
    )
    assert operator.alive, operator.output()[-3000:]
