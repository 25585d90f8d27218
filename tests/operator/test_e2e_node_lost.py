"""A node that stops answering (its kubelet frozen, so its heartbeats stop) gets its experts
restarted elsewhere from their last checkpoint once it has been NotReady for
failurePolicy.nodeLostSeconds, without waiting for the 300 s taint eviction and whatever the
pods tolerate. A dedicated control plane (the node grace period shortened to 25 s), two GPU
nodes each executed by its own pod process runtime, MinIO, the operator as a subprocess.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.env import fleet as fleet_builders
from tests.env import kube
from tests.env.cluster import ControlPlane
from tests.env.minio import MinioServer
from tests.env.runtime_process import PodRuntimeProcess
from tests.operator.conftest import CRDS, SECRET, OperatorProcess, apply

pytestmark = [pytest.mark.cluster, pytest.mark.minio, pytest.mark.e2e]

RUNTIME_LABEL = "atoll.test/runtime"
POOL = fleet_builders.Pool("a100-40gb", 2, fleet_builders.A100_40GB, 8, cpu=96, memory_gib=1152, execute=True)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[ControlPlane]:
    plane = ControlPlane(tmp_path / "cluster", node_monitor_grace_s=25).start()
    try:
        plane.kubectl("apply", "--server-side", "-f", str(CRDS))
        plane.kubectl(
            "wait", "--for=condition=Established", "--timeout=120s",
            "crd/ddmruns.atoll.dev", "crd/ddmexperts.atoll.dev",
        )  # fmt: skip
        yield plane
    finally:
        plane.close()


def test_experts_on_a_lost_node_restart_elsewhere_before_the_taint_eviction(
    cluster: ControlPlane, minio: MinioServer, minio_bucket: str, tmp_path: Path
) -> None:
    from kubernetes import client

    core = client.CoreV1Api(cluster.api_client())
    nodes = []
    for index in range(POOL.nodes):
        manifest = fleet_builders.node(POOL, index)
        manifest["metadata"]["labels"][RUNTIME_LABEL] = str(index)
        nodes.append(manifest)
    runtimes = {
        manifest["metadata"]["name"]: PodRuntimeProcess(
            cluster.kubeconfig, tmp_path / f"runtime-{index}", node_selector=f"{RUNTIME_LABEL}={index}"
        ).start()
        for index, manifest in enumerate(nodes)
    }
    frozen: int | None = None
    operator = None
    try:
        kube.wait_nodes_ready(core, fleet_builders.apply(core, nodes), timeout=120)
        namespace = "lost"
        core.create_namespace({"metadata": {"name": namespace}})
        secret = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": SECRET, "namespace": namespace},
            "stringData": {"accessKey": minio.access_key, "secretKey": minio.secret_key, "endpoint": minio.endpoint},
        }
        cluster.kubectl("apply", "-f", "-", input=json.dumps(secret))
        operator = OperatorProcess(
            cluster.kubeconfig,
            namespace,
            tmp_path / "operator.log",
            ["--default-store", f"s3://{minio_bucket}/runs", "--default-store-secret", SECRET],
        ).start()
        run = {
            "apiVersion": "atoll.dev/v1alpha1",
            "kind": "DDMRun",
            "metadata": {"name": "lost"},
            "spec": {
                "dataset": {"uri": "builtin://digits", "resolution": 8},
                "partition": {"clusters": 2, "features": "pixels", "fineClusters": 4, "sampleSize": 64},
                "expert": {"preset": "tiny", "steps": 100000, "globalBatchSize": 8, "checkpointEvery": 20},
                "router": {"preset": "tiny", "steps": 100000, "globalBatchSize": 8},
                "placement": {"gpu": {"maxPerExpert": 1}},
                "failurePolicy": {"maxRestarts": 3, "nodeLostSeconds": 10},
            },
        }
        apply(cluster, namespace, run)

        def experts() -> list[dict[str, Any]]:
            items: list[dict[str, Any]] = cluster.kubectl_json("get", "ddmexperts", "-n", namespace)["items"]
            return items

        deadline = time.monotonic() + 600
        victim = None
        while victim is None:
            assert time.monotonic() < deadline, f"no expert ran with a checkpoint: {json.dumps(experts())[:3000]}"
            for item in experts():
                status = item.get("status") or {}
                if status.get("phase") == "Running" and status.get("lastCheckpoint") and status.get("node"):
                    victim = item
            time.sleep(1)
        node = victim["status"]["node"]
        name = victim["metadata"]["name"]
        frozen = runtimes[node].pid
        assert frozen is not None
        os.kill(frozen, signal.SIGSTOP)  # the kubelet hangs: heartbeats stop, its pod processes run on
        stopped = time.monotonic()

        moved = None
        while moved is None and time.monotonic() < stopped + 240:
            item = cluster.kubectl_json("get", "ddmexpert", name, "-n", namespace)
            status = item.get("status") or {}
            if status.get("attempt", 0) >= 2 and status.get("node") not in (None, node):
                moved = status
            time.sleep(1)
        waited = time.monotonic() - stopped
        assert moved is not None, f"{name} was not restarted off {node} within 240 s: {json.dumps(item)[:3000]}"
        assert waited < 200, f"restarted after {waited:.0f} s: no faster than the taint eviction"
        assert "NotReady" in (moved.get("lastFailure") or ""), moved
        assert operator.alive
    finally:
        if frozen is not None:
            os.kill(frozen, signal.SIGCONT)
        if operator is not None:
            operator.stop()
        for runtime in runtimes.values():
            runtime.stop()
