"""The control plane is the real thing, built from our pins, and nothing else: every
component runs a pinned local binary, the API server reports the pinned version, and the
pod process runtime rides out an API server restart."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.env import fleet as fleet_builders
from tests.env import kube
from tests.env.cluster import KUBE_VERSION, ControlPlane
from tests.env.runtime_process import PodRuntimeProcess

pytestmark = pytest.mark.cluster


def test_components_are_the_pinned_local_binaries(control_plane: ControlPlane) -> None:
    control_plane.verify_local_binaries()
    version = json.loads(control_plane.kubectl("version", "-o", "json").stdout)
    assert version["serverVersion"]["gitVersion"] == KUBE_VERSION
    assert version["clientVersion"]["gitVersion"] == KUBE_VERSION
    assert set(control_plane.pids()) == {
        "etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok-controller",
    }  # fmt: skip
    assert control_plane.workdir.is_relative_to(control_plane.directory)  # never ~/.kwok
    assert control_plane.server.startswith("https://127.0.0.1:")


def heartbeat_ready(core: Any) -> bool:
    node = json.loads(core.read_node("solo-0", _preload_content=False).data)
    return any(c["type"] == "Ready" and c["status"] == "True" for c in node["status"].get("conditions") or [])


def test_pod_runtime_survives_an_api_server_restart(tmp_path: Path) -> None:
    from kubernetes import client

    with ControlPlane(tmp_path / "cluster") as cluster:
        runtime = PodRuntimeProcess(cluster.kubeconfig, tmp_path / "runtime").start()
        try:
            core: Any = client.CoreV1Api(cluster.api_client())
            pool = fleet_builders.Pool("solo", 1, fleet_builders.L4, 1, cpu=4, memory_gib=16, execute=True)
            fleet_builders.apply(core, fleet_builders.nodes([pool]))
            kube.wait_for(lambda: heartbeat_ready(core), timeout=60, what="node solo-0 reported Ready")

            cluster.restart()

            # Bound directly (no scheduler): the runtime must have re-listed and re-watched.
            pod = {
                "metadata": {"name": "after-restart"},
                "spec": {
                    "nodeName": "solo-0",
                    "restartPolicy": "Never",
                    "containers": [{"name": "main", "image": "atoll", "command": ["python", "-c", "print('back')"]}],
                },
            }
            core.create_namespaced_pod("default", pod)
            done = kube.wait_for_pod(core, "default", "after-restart", timeout=90)
            assert done["status"]["phase"] == "Succeeded"
            assert runtime.logs("default", "after-restart").strip() == "back"
        finally:
            runtime.stop()
