"""A DDMRun that prefers two compute islands trains one expert on each, against three real
control planes (home and two islands with different GPU mixes, one T4 free on each): the home
operator plans over the union of the fleets, creates each expert's pod and store Secret in its
island's namespace (through that island's least-privilege credentials), watches the islands'
pods and mirrors them into the DDMExperts at home (`kubectl get ddmx` names each one's island).
Then the first island goes dark (its API server killed, its pod's process frozen): after
failurePolicy.islandLostSeconds its expert resumes elsewhere (at home) from the checkpoints it
committed there, nothing being deleted there meanwhile, while the other island's expert trains
on; the island comes back, its stale attempt is fenced and its pod removed, and the run Succeeds. A
ComputeIsland with a broken kubeconfig next to them is Connected=False and harms nothing; no
credential is logged. Each island's own pod runtime executes its pods; the checkpoints land in
the one shared MinIO.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from minio.error import S3Error

from atoll.operator.islands.dispatch import LABEL_ORIGIN_RUN_UID, store_secret_name
from atoll.operator.islands.kubeconfig import standalone
from atoll.operator.islands.register import island_manifest, kubeconfig_secret, secret_name
from atoll.stages import done_marker
from tests.env import fleet as fleet_builders
from tests.env import kube
from tests.env.cluster import ControlPlane
from tests.env.minio import MinioServer
from tests.env.process import signal_group
from tests.env.runtime_process import PodRuntimeProcess
from tests.operator.conftest import SECRET, OperatorProcess, apply, phase, pods, wait_run
from tests.operator.islands import ISLAND_NAMESPACE, RELEASE, Island, start_island

# One run through every phase (on two islands, one lost, its expert at home, the island back):
# setup 68 s (home, MinIO, the third control plane; the first island's was up already) and call
# 419 s under nice 19 at a load average of 7-11 on the 2 shared cores (alone: setup 112 s, call
# 274 s at a load of 6-10). With one island: setup 88 s
# and call 468 s at a load of 12-21; with 200 expert steps at a load of 21 it reached the
# suite's default limit of 900 s.
pytestmark = [pytest.mark.cluster, pytest.mark.minio, pytest.mark.e2e, pytest.mark.timeout(1500)]

LAB_POOL = fleet_builders.Pool("lab-t4", 1, fleet_builders.T4, 1, cpu=48, memory_gib=192, execute=True)
REEF_POOLS = (
    fleet_builders.Pool("reef-t4", 1, fleet_builders.T4, 1, cpu=48, memory_gib=192, execute=True),
    fleet_builders.Pool("reef-4090", 1, fleet_builders.RTX_4090, 4, cpu=64, memory_gib=256, execute=False),
)
"""Two islands of different GPU mixes, one T4 on each: neither takes both experts at once."""


@pytest.fixture(scope="module")
def second_island(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Island]:
    """A third control plane, set up as an island like `island`; stopped after this module."""
    yield from start_island(tmp_path_factory.mktemp("second-island"))


def run_fleet(island: Island, pools: Sequence[fleet_builders.Pool], workdir: Path) -> Iterator[PodRuntimeProcess]:
    """`pools` on the island, their executed nodes run by a pod runtime of the island's own; removed afterwards."""
    from kubernetes import client

    core = client.CoreV1Api(island.plane.api_client())
    names = fleet_builders.apply(core, fleet_builders.nodes(pools))
    runtime = PodRuntimeProcess(island.plane.kubeconfig, workdir).start()
    try:
        kube.wait_nodes_ready(core, names, timeout=60)
        yield runtime
    finally:
        runtime.stop()
        for name in names:
            island.plane.kubectl("delete", "node", name, "--ignore-not-found", "--wait=false")


@pytest.fixture
def lab_fleet(island: Island, tmp_path: Path) -> Iterator[PodRuntimeProcess]:
    yield from run_fleet(island, [LAB_POOL], tmp_path / "lab-runtime")


@pytest.fixture
def reef_fleet(second_island: Island, tmp_path: Path) -> Iterator[PodRuntimeProcess]:
    yield from run_fleet(second_island, REEF_POOLS, tmp_path / "reef-runtime")


def register(home: ControlPlane, island: Island, namespace: str, prefix: str, store_endpoint: str | None) -> str:
    """A ComputeIsland at home for the island, with least-privilege credentials in `namespace`."""
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    path = island.kubeconfig(RELEASE, name)
    text = standalone(path.read_text(), base=path.parent)
    manifest = island_manifest(name, namespace=ISLAND_NAMESPACE, store_endpoint=store_endpoint)
    home.kubectl("apply", "-f", "-", input=json.dumps(manifest))
    uid = home.kubectl_json("get", "computeisland", name)["metadata"]["uid"]
    secret = kubeconfig_secret(name, namespace=namespace, kubeconfig=text, owner_uid=uid)
    home.kubectl("apply", "-f", "-", input=json.dumps(secret))
    return name


@pytest.fixture
def lab(atoll_crds: ControlPlane, island: Island, namespace: str, minio: MinioServer) -> Iterator[str]:
    """The first island, reaching the same MinIO at another address of this machine (its storeEndpoint)."""
    host, port = minio.endpoint.rsplit(":", 1)
    assert host == "127.0.0.1"
    name = register(atoll_crds, island, namespace, "lab", f"localhost:{port}")
    yield name
    atoll_crds.kubectl("delete", "computeisland", name, "--ignore-not-found", "--wait=false")


@pytest.fixture
def reef(atoll_crds: ControlPlane, second_island: Island, namespace: str) -> Iterator[str]:
    """The second island, reaching MinIO at the run's store Secret's own endpoint."""
    name = register(atoll_crds, second_island, namespace, "reef", None)
    yield name
    atoll_crds.kubectl("delete", "computeisland", name, "--ignore-not-found", "--wait=false")


def small_run(name: str, islands: list[str]) -> dict[str, Any]:
    return {
        "apiVersion": "atoll.dev/v1alpha1",
        "kind": "DDMRun",
        "metadata": {"name": name},
        "spec": {
            "dataset": {"uri": "builtin://digits", "resolution": 8, "maxExamples": 64},
            "partition": {"clusters": 2, "features": "pixels", "fineClusters": 8, "sampleSize": 64},
            # Enough steps that the test freezes the island's expert between its first checkpoint
            # and its end (a hundred take about 4 s of training on a quiet machine).
            "expert": {"preset": "tiny", "steps": 300, "globalBatchSize": 8, "checkpointEvery": 10},
            "router": {"preset": "tiny", "steps": 10, "globalBatchSize": 8},
            "sampling": {"steps": 2},
            "evaluation": {"samples": 4, "strategies": ["top-1"]},
            # T4s on the islands first: neither alone finishes as early as the plan over every node
            # (one T4 each), both together do (home's T4s are no faster), so the planner takes them.
            "placement": {"islands": {"prefer": islands}, "gpu": {"products": ["Tesla-T4"]}},
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


def no_stale_commits(minio_client: Any, bucket: str, prefix: str, status: dict[str, Any]) -> set[tuple[int, int]]:
    """Check that the expert's claim is its last attempt's and that every committed checkpoint is
    that attempt's or one it inherited; the inherited (step, attempt) pairs."""
    claim, manifests = commits(minio_client, bucket, prefix)
    assert claim["attempt"] == status["attempt"]
    inherited = {(c["step"], c["attempt"]) for c in claim["inherited"]}
    for manifest in manifests:
        step, attempt = manifest["step"], manifest["attempt"]
        assert attempt >= claim["attempt"] or (step, attempt) in inherited, f"{prefix}: stale commit {step}"
    return inherited


def test_a_run_on_two_islands_trains_there_and_survives_losing_one(  # noqa: PLR0917 - one run, every phase
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
    second_island: Island,
    lab_fleet: PodRuntimeProcess,
    reef_fleet: PodRuntimeProcess,
    lab: str,
    reef: str,
    broken: str,
    start_operator: Callable[..., OperatorProcess],
) -> None:
    operator = start_operator(
        "--default-store", store_secret, "--default-store-secret", SECRET, "--max-gpus-per-pod", "1",
        "--island-namespace", namespace, "--island-interval", "1",
    )  # fmt: skip
    name = "on-islands"
    apply(control_plane, namespace, small_run(name, [lab, reef]))
    planes = {lab: island, reef: second_island}
    runtimes = {lab: lab_fleet, reef: reef_fleet}

    # The expert on the first island is frozen as soon as its heartbeat names a committed
    # checkpoint (before home's status shows it, which can be after the expert is done).
    bucket, root = store_secret.removeprefix("s3://").split("/", 1)
    stale = freeze_after_first_checkpoint(island, lab_fleet, minio_client, bucket, f"{root}/{namespace}/{name}")

    # One expert trains on each island at once, past a checkpoint; home shows where.
    def training_on_both() -> bool:
        found = experts(control_plane, namespace)
        return len(found) == 2 and sorted((e.get("status") or {}).get("island") or "" for e in found) == sorted(
            [lab, reef]
        ) and all((e["status"].get("lastCheckpoint") or {}).get("step") for e in found)  # fmt: skip

    wait_run(control_plane, namespace, name, lambda _: training_on_both(), timeout=900, what="an expert per island")
    uid = run_object_uid(control_plane, namespace, name)
    placed = {e["status"]["island"]: e for e in experts(control_plane, namespace)}
    assert placed[lab]["status"]["node"].startswith(f"{lab}/{LAB_POOL.name}-"), placed[lab]["status"]
    assert placed[reef]["status"]["node"].startswith(f"{reef}/{REEF_POOLS[0].name}-"), placed[reef]["status"]
    assert island_column(control_plane, namespace) == [e["status"]["island"] for e in experts(control_plane, namespace)]
    for where, plane in planes.items():
        (remote,) = island_objects(plane, "pods", uid)
        assert remote["metadata"]["labels"]["atoll.dev/expert"] == str(placed[where]["spec"]["expert"])
        assert "ownerReferences" not in remote["metadata"]
        assert runtimes[where].logs(ISLAND_NAMESPACE, remote["metadata"]["name"]), f"executed on {where}"
        (secret,) = island_objects(plane, "secrets", uid)
        assert secret["metadata"]["name"] == store_secret_name(uid)
    endpoints = {
        where: base64.b64decode(island_objects(plane, "secrets", uid)[0]["data"]["endpoint"]).decode()
        for where, plane in planes.items()
    }
    assert endpoints == {lab: f"localhost:{minio.endpoint.rsplit(':', 1)[1]}", reef: minio.endpoint}, "storeEndpoint"
    assert operator.output().count("watching the island's pods") >= 2, "a pod watch per island"
    bad = atoll_crds.kubectl_json("get", "computeisland", broken)["status"]["conditions"][0]
    assert (bad["type"], bad["status"], bad["reason"]) == ("Connected", "False", "InvalidKubeconfig")

    # The first island goes dark: its API server killed, its pod's process frozen since its
    # first checkpoint (both come back later).
    lost = placed[lab]["spec"]["expert"]
    (remote,) = island_objects(island, "pods", uid)
    assert set(stale) == {remote["metadata"]["name"]}
    os.kill(island.plane.pids()["kube-apiserver"], signal.SIGKILL)
    lost_at = time.monotonic()
    try:
        # Elsewhere: home, whose T4s are free (or the other island, should its expert be done by then).
        def moved() -> bool:
            (expert,) = [e for e in experts(control_plane, namespace) if e["spec"]["expert"] == lost]
            return expert["status"].get("island") in ("home", reef) and expert["status"].get("attempt", 0) >= 2

        try:
            wait_run(control_plane, namespace, name, lambda _: moved(), timeout=240, what="the lost expert elsewhere")
        except pytest.fail.Exception as failure:  # say what the operator saw of the island, for the next reader
            seen = atoll_crds.kubectl_json("get", "computeisland", lab).get("status")
            lines = operator.output().splitlines()
            said = [line for line in lines if lab in line and "island probed" not in line][-15:]
            probed = [line for line in lines if "island probed" in line][-4:]
            troubles = [line for line in lines if "Traceback" in line or "error" in line.lower()][-10:]
            statuses = {e["spec"]["expert"]: e.get("status") for e in experts(control_plane, namespace)}
            pytest.fail(
                f"{failure}\noperator, troubles:\n" + "\n".join(troubles) + "\noperator, on the island:\n"
                + "\n".join(said + probed) + f"\nComputeIsland {lab} status: {json.dumps(seen)}"
                + f"\nDDMExpert statuses: {json.dumps(statuses)[:2500]}"
            )  # fmt: skip
        assert time.monotonic() - lost_at >= 10, "not before failurePolicy.islandLostSeconds"
        for expert in experts(control_plane, namespace):
            if expert["spec"]["expert"] == lost:
                assert "failurePolicy.islandLostSeconds" in expert["status"]["lastFailure"], expert["status"]
            else:
                assert (expert["status"]["island"], expert["status"]["attempt"]) == (reef, 1), "the other went on"
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
    finished = {e["spec"]["expert"]: e["status"] for e in experts(control_plane, namespace)}
    assert island_column(control_plane, namespace) == [finished[k]["island"] for k in sorted(finished)]
    resumed_on = finished[lost]["island"]
    assert {k: s["island"] for k, s in finished.items()} == {lost: resumed_on, 1 - lost: reef}
    home_stages = {p["metadata"]["labels"]["atoll.dev/stage"] for p in pods(control_plane, namespace, name)}
    assert {"partition", "router", "assemble", "evaluate"} <= home_stages

    # The island answers again: the pod of the attempt it lost is removed there.
    kube.wait_for(lambda: not island_objects(island, "pods", uid), timeout=240, what="the lost attempt's pod removed")

    # The lost expert resumed from the island's checkpoints; its stale attempt committed nothing after.
    for k, status in finished.items():
        inherited = no_stale_commits(minio_client, bucket, f"{root}/{namespace}/{name}/experts/{k}/", status)
        if k == lost:
            assert status["attempt"] >= 2
            runtime, where = (pod_runtime, namespace) if resumed_on == "home" else (reef_fleet, ISLAND_NAMESPACE)
            assert "resumed" in runtime.logs(where, status["pod"]), f"expert {k} started from scratch"
            assert any(attempt < status["attempt"] for _, attempt in inherited), "the island's checkpoints inherited"
    assert done["status"]["modelUri"].endswith(f"/{namespace}/{name}/model")

    # Credentials appear in no log line, status or Event.
    tokens = [island_token(atoll_crds, namespace, where) for where in (lab, reef)]
    events = atoll_crds.kubectl_json("get", "events", "-n", "default")["items"]
    islands = [atoll_crds.kubectl_json("get", "computeisland", n).get("status") for n in (lab, reef, broken)]
    seen = operator.output() + json.dumps(islands) + json.dumps(events)
    for token in tokens:
        assert token not in seen
        for part in token.split(".")[1:]:
            assert part[:20] not in seen

    # The run deleted at home: its pods and Secrets on both islands are collected.
    control_plane.kubectl("delete", "ddmrun", name, "-n", namespace, "--timeout=60s")
    kube.wait_for(
        lambda: not any(island_objects(p, kind, uid) for p in planes.values() for kind in ("pods", "secrets")),
        timeout=60,
        what="the islands' orphans removed",
    )
    assert operator.alive, operator.output()[-3000:]


def freeze_after_first_checkpoint(
    island: Island, runtime: PodRuntimeProcess, minio_client: Any, bucket: str, run_prefix: str
) -> dict[str, int]:
    """Stop the process group of the run's expert pod on `island` once its heartbeat names a
    committed checkpoint, polling fast; the frozen pod → its pid. Fails if the expert is done
    by then (the test could no longer lose it mid-training)."""
    frozen: dict[str, int] = {}

    def frozen_after_a_checkpoint() -> bool:
        found = island.plane.kubectl_json("get", "pods", "-n", ISLAND_NAMESPACE, "-l", "atoll.dev/stage=expert")
        for pod in found["items"]:
            pid = runtime.pod_pid(ISLAND_NAMESPACE, pod["metadata"]["name"])
            expert = pod["metadata"]["labels"]["atoll.dev/expert"]
            prefix = f"{run_prefix}/experts/{expert}/"
            try:
                beat = json.loads(minio_client.get_object(bucket, f"{prefix}progress.json").read())
            except S3Error as error:  # not written yet
                if error.code == "NoSuchKey":
                    continue
                raise
            if pid is None or not beat.get("lastCheckpoint"):
                continue
            assert signal_group(pid, signal.SIGSTOP)
            frozen[pod["metadata"]["name"]] = pid
            marker = f"{run_prefix}/{done_marker('expert', int(expert))}"
            late = f"expert {expert} finished before it could be frozen: {beat}"
            assert beat["state"] != "done", late
            assert not list(minio_client.list_objects(bucket, prefix=marker)), late
            return True
        return False

    kube.wait_for(frozen_after_a_checkpoint, timeout=900, interval=0.2, what="the island's first checkpoint")
    return frozen


def run_object_uid(home: ControlPlane, namespace: str, name: str) -> str:
    return str(home.kubectl_json("get", "ddmrun", name, "-n", namespace)["metadata"]["uid"])


def island_token(home: ControlPlane, namespace: str, island: str) -> str:
    """The bearer token in the island's kubeconfig Secret at home."""
    secret = home.kubectl_json("get", "secret", secret_name(island), "-n", namespace)
    text = base64.b64decode(secret["data"]["kubeconfig"]).decode()
    return str(yaml.safe_load(text)["users"][0]["user"]["token"])
