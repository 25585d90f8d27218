"""A DDMRun that prefers a compute island trains its experts there, against two real control
planes: the home operator plans over the island's nodes, creates each expert's pod and store
Secret in the island's namespace (through the island's least-privilege credentials) and mirrors
the pods into the DDMExperts at home. Then the island goes dark (its API server killed, its pods'
processes frozen): after failurePolicy.islandLostSeconds the experts resume at home from the
checkpoints the island committed, nothing being deleted there meanwhile; the island comes back,
its stale attempts are fenced and their pods removed, and the run Succeeds. A ComputeIsland with
a broken kubeconfig next to it is Connected=False and harms nothing; no credential is logged.
The island's own pod runtime executes its pods; the checkpoints land in the one shared MinIO.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from atoll.operator.islands.dispatch import LABEL_ORIGIN_RUN_UID, store_secret_name
from atoll.operator.islands.kubeconfig import standalone
from atoll.operator.islands.register import island_manifest, kubeconfig_secret, secret_name
from tests.env import fleet as fleet_builders
from tests.env import kube
from tests.env.cluster import ControlPlane
from tests.env.minio import MinioServer
from tests.env.process import signal_group
from tests.env.runtime_process import PodRuntimeProcess
from tests.operator.conftest import SECRET, OperatorProcess, apply, phase, pods, wait_run
from tests.operator.islands import ISLAND_NAMESPACE, RELEASE, Island

# One run through every phase (on the island, lost, at home, the island back): setup 88 s and
# call 468 s at a load average of 12-21 on the 2 shared cores; with 200 expert steps at a load
# of 21 it reached the suite's default limit of 900 s.
pytestmark = [pytest.mark.cluster, pytest.mark.minio, pytest.mark.e2e, pytest.mark.timeout(1500)]

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
            # Enough steps that the island is lost between the first checkpoint and the end.
            "expert": {"preset": "tiny", "steps": 100, "globalBatchSize": 8, "checkpointEvery": 10},
            "router": {"preset": "tiny", "steps": 10, "globalBatchSize": 8},
            "sampling": {"steps": 2},
            "evaluation": {"samples": 4, "strategies": ["top-1"]},
            # T4s, on the island first (home has T4 nodes as fast: the preferred plan is as good).
            "placement": {"islands": {"prefer": [island]}, "gpu": {"products": ["Tesla-T4"]}},
            "failurePolicy": {"maxRestarts": 2, "backoffSeconds": 1, "maxBackoffSeconds": 2, "islandLostSeconds": 10},
        },
    }


def island_objects(island: Island, kind: str, uid: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = island.plane.kubectl_json(
        "get", kind, "-n", ISLAND_NAMESPACE, "-l", f"{LABEL_ORIGIN_RUN_UID}={uid}"
    )["items"]
    return items


def experts(home: ControlPlane, namespace: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = home.kubectl_json("get", "ddmexperts", "-n", namespace)["items"]
    return sorted(items, key=lambda e: e["spec"]["expert"])


def island_column(home: ControlPlane, namespace: str) -> list[str]:
    header, *rows = home.kubectl("get", "ddmx", "-n", namespace).stdout.split("\n")
    column = header.split().index("ISLAND")
    return [row.split()[column] for row in rows if row.strip()]


@pytest.fixture
def broken(atoll_crds: ControlPlane, namespace: str) -> Iterator[str]:
    """A ComputeIsland whose kubeconfig Secret is not a kubeconfig."""
    name = f"broken-{uuid.uuid4().hex[:6]}"
    atoll_crds.kubectl("apply", "-f", "-", input=json.dumps(island_manifest(name, namespace=ISLAND_NAMESPACE)))
    secret = {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": secret_name(name), "namespace": namespace},
        "stringData": {"kubeconfig": "not: [yaml"},
    }  # fmt: skip
    atoll_crds.kubectl("apply", "-f", "-", input=json.dumps(secret))
    yield name
    atoll_crds.kubectl("delete", "computeisland", name, "--ignore-not-found", "--wait=false")


def commits(minio_client: Any, bucket: str, prefix: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """An expert's claim (attempt.json) and the manifests of its committed checkpoints."""
    claim = json.loads(minio_client.get_object(bucket, f"{prefix}attempt.json").read())
    keys = [o.object_name for o in minio_client.list_objects(bucket, prefix=f"{prefix}checkpoints/", recursive=True)]
    manifests = [json.loads(minio_client.get_object(bucket, k).read()) for k in keys if k.endswith("/manifest.json")]
    return claim, manifests


def test_a_run_on_an_island_trains_there_and_survives_losing_it(  # noqa: PLR0917 - one run, every phase
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
    broken: str,
    start_operator: Callable[..., OperatorProcess],
) -> None:
    operator = start_operator(
        "--default-store", store_secret, "--default-store-secret", SECRET, "--max-gpus-per-pod", "1",
        "--island-namespace", namespace, "--island-interval", "1",
    )  # fmt: skip
    name = "on-island"
    apply(control_plane, namespace, small_run(name, lab))

    # Both experts train on the island, past a checkpoint; home shows where.
    def training_on_lab() -> bool:
        found = experts(control_plane, namespace)
        return len(found) == 2 and all(
            (e.get("status") or {}).get("island") == lab and (e["status"].get("lastCheckpoint") or {}).get("step")
            for e in found
        )

    wait_run(control_plane, namespace, name, lambda _: training_on_lab(), timeout=900, what="experts on the island")
    uid = run_object_uid(control_plane, namespace, name)
    for expert in experts(control_plane, namespace):
        assert expert["status"]["node"].startswith(f"{lab}/{POOL_NAME}-"), expert["status"]
    assert island_column(control_plane, namespace) == [lab, lab]
    remote = island_objects(island, "pods", uid)
    assert sorted(p["metadata"]["labels"]["atoll.dev/expert"] for p in remote) == ["0", "1"]
    for pod in remote:
        assert "ownerReferences" not in pod["metadata"]
        assert island_fleet.logs(ISLAND_NAMESPACE, pod["metadata"]["name"]), "executed on the island"
    (secret,) = island_objects(island, "secrets", uid)
    assert secret["metadata"]["name"] == store_secret_name(uid)
    endpoint = base64.b64decode(secret["data"]["endpoint"]).decode()
    assert endpoint == f"localhost:{minio.endpoint.rsplit(':', 1)[1]}", "the island's storeEndpoint"
    bad = atoll_crds.kubectl_json("get", "computeisland", broken)["status"]["conditions"][0]
    assert (bad["type"], bad["status"], bad["reason"]) == ("Connected", "False", "InvalidKubeconfig")

    # The island goes dark: its API server killed, its pods' processes frozen (they come back later).
    stale = {p["metadata"]["name"]: island_fleet.pod_pid(ISLAND_NAMESPACE, p["metadata"]["name"]) for p in remote}
    for pgid in stale.values():
        assert pgid is not None
        assert signal_group(pgid, signal.SIGSTOP)
    os.kill(island.plane.pids()["kube-apiserver"], signal.SIGKILL)
    lost_at = time.monotonic()
    try:

        def moved_home() -> bool:
            return all((e["status"].get("island"), e["status"].get("attempt", 0) >= 2) == ("home", True)
                       for e in experts(control_plane, namespace))  # fmt: skip

        wait_run(control_plane, namespace, name, lambda _: moved_home(), timeout=240, what="experts placed at home")
        assert time.monotonic() - lost_at >= 10, "not before failurePolicy.islandLostSeconds"
        for expert in experts(control_plane, namespace):
            assert "failurePolicy.islandLostSeconds" in expert["status"]["lastFailure"], expert["status"]
        down = atoll_crds.kubectl_json("get", "computeisland", lab)["status"]
        assert down["disconnectedSince"]
        assert down["conditions"][0]["status"] == "False"
        deleting = [line for line in operator.output().splitlines() if "deleting pod" in line]
        assert not [line for line in deleting if any(pod in line for pod in stale)], "nothing deleted while down"
    finally:
        try:
            island.plane.restart()
        finally:
            for pgid in stale.values():
                signal_group(pgid, signal.SIGCONT)

    done = wait_run(control_plane, namespace, name, lambda r: phase(r) == "Succeeded", timeout=900, what="Succeeded")
    assert island_column(control_plane, namespace) == ["home", "home"]
    home_stages = {p["metadata"]["labels"]["atoll.dev/stage"] for p in pods(control_plane, namespace, name)}
    assert {"partition", "expert", "router", "assemble", "evaluate"} <= home_stages

    # The island answers again: the pods of the attempts it lost are removed there.
    kube.wait_for(lambda: not island_objects(island, "pods", uid), timeout=240, what="the lost attempts' pods removed")

    # Each expert resumed at home from the island's checkpoints; the stale attempts committed nothing after.
    bucket, root = store_secret.removeprefix("s3://").split("/", 1)
    for expert in experts(control_plane, namespace):
        k, status = expert["spec"]["expert"], expert["status"]
        assert "resumed" in pod_runtime.logs(namespace, status["pod"]), f"expert {k} started from scratch"
        claim, manifests = commits(minio_client, bucket, f"{root}/{namespace}/{name}/experts/{k}/")
        assert claim["attempt"] == status["attempt"] >= 2
        inherited = {(c["step"], c["attempt"]) for c in claim["inherited"]}
        assert any(attempt < claim["attempt"] for _, attempt in inherited), "the island's checkpoints inherited"
        for manifest in manifests:
            step, attempt = manifest["step"], manifest["attempt"]
            assert attempt >= claim["attempt"] or (step, attempt) in inherited, f"expert {k}: stale commit {step}"
    assert done["status"]["modelUri"].endswith(f"/{namespace}/{name}/model")

    # Credentials appear in no log line, status or Event.
    tokens = [island_token(atoll_crds, namespace, lab)]
    events = atoll_crds.kubectl_json("get", "events", "-n", "default")["items"]
    islands = [atoll_crds.kubectl_json("get", "computeisland", n).get("status") for n in (lab, broken)]
    seen = operator.output() + json.dumps(islands) + json.dumps(events)
    for token in tokens:
        assert token not in seen
        for part in token.split(".")[1:]:
            assert part[:20] not in seen

    # The run deleted at home: its Secret on the island is collected.
    control_plane.kubectl("delete", "ddmrun", name, "-n", namespace, "--timeout=60s")
    kube.wait_for(
        lambda: not island_objects(island, "pods", uid) and not island_objects(island, "secrets", uid),
        timeout=60,
        what="the island's orphans removed",
    )
    assert operator.alive, operator.output()[-3000:]


def run_object_uid(home: ControlPlane, namespace: str, name: str) -> str:
    return str(home.kubectl_json("get", "ddmrun", name, "-n", namespace)["metadata"]["uid"])


def island_token(home: ControlPlane, namespace: str, island: str) -> str:
    """The bearer token in the island's kubeconfig Secret at home."""
    secret = home.kubectl_json("get", "secret", secret_name(island), "-n", namespace)
    text = base64.b64decode(secret["data"]["kubeconfig"]).decode()
    return str(yaml.safe_load(text)["users"][0]["user"]["token"])
