"""The control plane is the real thing, built from our pins, and nothing else: every
component runs a pinned local binary, the API server reports the pinned version, the pod
process runtime rides out an API server restart, and a restart never races the components
it stopped for their ports."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.env import fleet as fleet_builders
from tests.env import kube
from tests.env.cluster import KUBE_VERSION, KWOK_POD_WORKERS, ControlPlane, ControlPlaneError
from tests.env.process import ephemeral_ports
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


def test_kwok_plays_pod_stages_with_the_configured_workers(control_plane: ControlPlane) -> None:
    # kwok's default of 4 workers for every simulated kubelet was the queue at 1000 nodes.
    pid = control_plane.pids()["kwok-controller"]
    time.sleep(1)  # a controller that refuses its configuration exits right after starting
    assert Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z", "kwok-controller exited"
    argv = Path(f"/proc/{pid}/cmdline").read_text().split("\0")
    config = Path(next(arg for arg in argv if arg.startswith("--config=")).removeprefix("--config="))
    documents = [doc for doc in yaml.safe_load_all(config.read_text()) if doc]
    kwok = [doc for doc in documents if doc["kind"] == "KwokConfiguration"]
    assert len(kwok) == 1, [doc["kind"] for doc in documents]
    options = kwok[0]["options"]
    assert options["podPlayStageParallelism"] == KWOK_POD_WORKERS == control_plane.kwok_pod_workers
    assert KWOK_POD_WORKERS > 4
    assert options["nodeLeaseParallelism"] == 4, "kwok's defaults are spelled out: kwokctl does not apply them"


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


def test_server_ports_are_outside_the_ephemeral_range(control_plane: ControlPlane) -> None:
    # Ports from bind(0) can be taken by any outgoing connection while their server restarts.
    low, high = ephemeral_ports()
    ports = list(control_plane.ports.values())
    assert len(set(ports)) == len(ports) == 6
    assert all(not low <= port <= high for port in ports), (ports, low, high)


class PortHolder(threading.Thread):
    """Listens on `port` the moment it is free and keeps it for hold_s seconds: an etcd that
    `kwokctl stop` SIGKILLed but that has not finished exiting yet (an fsync under load)."""

    def __init__(self, port: int, hold_s: float) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.hold_s = hold_s
        self.held = threading.Event()
        self.released = threading.Event()
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    sock.bind(("127.0.0.1", self.port))
                except OSError:
                    time.sleep(0.001)
                    continue
                sock.listen()
                self.held.set()
                self.done.wait(self.hold_s)
            self.released.set()
            return


def test_restart_waits_for_a_port_the_stopped_component_still_holds(tmp_path: Path) -> None:
    with ControlPlane(tmp_path / "cluster") as cluster:
        holder = PortHolder(cluster.ports["etcdPort"], hold_s=3.0)
        holder.start()
        try:
            cluster.restart(timeout=90)
        finally:
            holder.done.set()
        assert holder.held.is_set(), "the port was never free after the stop"
        assert holder.released.is_set()
        assert cluster.kubectl("get", "--raw", "/readyz").stdout.strip() == "ok"
        assert cluster.kubectl("get", "namespace", "default", "-o", "name").stdout.strip() == "namespace/default"


def test_restart_names_the_port_that_never_comes_free(tmp_path: Path) -> None:
    with ControlPlane(tmp_path / "cluster") as cluster:
        port = cluster.ports["etcdPort"]
        holder = PortHolder(port, hold_s=120.0)
        holder.start()
        started = time.monotonic()
        try:
            with pytest.raises(ControlPlaneError, match=rf"ports still in use \[{port}\]"):
                cluster.restart(timeout=15)
        finally:
            holder.done.set()
            holder.join(timeout=10)
        assert time.monotonic() - started < 60
