"""A real Kubernetes control plane on loopback, started by kwokctl's `binary` runtime from
the pinned local binaries only: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler and the kwok controller. Nothing is downloaded and nothing touches ~/.kwok
or ~/.kube: the kwokctl work directory and the kubeconfig live in a directory of ours.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import yaml

from tests.env import binaries
from tests.env.process import free_port

KUBE_VERSION = "v1.36.3"
ETCD_VERSION = "v3.6.8"
KWOK_VERSION = "v0.8.0"

# kwok simulates only the nodes carrying this annotation; the GPU nodes that the pod
# process runtime executes are left to it (see tests/env/fleet.py).
KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"
KWOK_NODE_SELECTOR = f"{KWOK_NODE_ANNOTATION}=fake"

_BINARY_OPTIONS = {
    "kubeApiserverBinary": "kube-apiserver",
    "kubeControllerManagerBinary": "kube-controller-manager",
    "kubeSchedulerBinary": "kube-scheduler",
    "kubectlBinary": "kubectl",
    "etcdBinary": "etcd",
    "kwokControllerBinary": "kwok",
}
_COMPONENT_BINARIES = {
    "etcd": "etcd",
    "kube-apiserver": "kube-apiserver",
    "kube-controller-manager": "kube-controller-manager",
    "kube-scheduler": "kube-scheduler",
    "kwok-controller": "kwok",
}


class ControlPlaneError(RuntimeError):
    """kwokctl could not create, start or delete the cluster; the message carries its output."""


class ControlPlane:
    """One kwokctl cluster with its own work directory, ports and kubeconfig."""

    def __init__(
        self,
        directory: Path | None = None,
        *,
        name: str | None = None,
        kubeconfig: Path | None = None,
        node_monitor_period_s: float = 2.0,
        node_monitor_grace_s: float | None = None,
    ):
        self._owns_directory = directory is None
        self.node_monitor_period_s = node_monitor_period_s
        """How often the node lifecycle controller checks nodes (kwokctl's default is 25 s, which
        delays lifting the not-ready taint of a node that just became Ready)."""
        self.node_monitor_grace_s = node_monitor_grace_s
        """How long a node may miss heartbeats before it is NotReady (None: kwokctl's 200 s)."""
        self.directory = Path(directory or tempfile.mkdtemp(prefix="atoll-cluster-"))
        self.name = name or f"atoll-{uuid.uuid4().hex[:8]}"
        self.workdir = self.directory / "kwok"
        self.kubeconfig = kubeconfig or self.directory / "kubeconfig"
        self.paths = binaries.binaries("kwokctl", *_BINARY_OPTIONS.values())
        self.ports: dict[str, int] = {}
        self.started = False

    # --- configuration ---------------------------------------------------------------

    def configuration(self) -> dict[str, Any]:
        """The KwokctlConfiguration: local binaries, loopback ports, kwok on annotated nodes only."""
        if not self.ports:
            self.ports = {
                "kubeApiserverPort": free_port(),
                "etcdPort": free_port(),
                "etcdPeerPort": free_port(),
                "kubeControllerManagerPort": free_port(),
                "kubeSchedulerPort": free_port(),
                "kwokControllerPort": free_port(),
            }
        options: dict[str, Any] = {
            "runtime": "binary",
            "kubeVersion": KUBE_VERSION,
            "etcdVersion": ETCD_VERSION,
            "kwokVersion": KWOK_VERSION,
            "bindAddress": "127.0.0.1",
            "cacheDir": str(self.directory / "kwok-cache"),
            "quietPull": True,
            "kubeControllerManagerNodeMonitorPeriodMilliseconds": int(self.node_monitor_period_s * 1000),
            **self.ports,
            **{option: str(self.paths[name]) for option, name in _BINARY_OPTIONS.items()},
        }
        if self.node_monitor_grace_s is not None:
            options["kubeControllerManagerNodeMonitorGracePeriodMilliseconds"] = int(self.node_monitor_grace_s * 1000)
        return {
            "apiVersion": "config.kwok.x-k8s.io/v1alpha1",
            "kind": "KwokctlConfiguration",
            "options": options,
            "componentsPatches": [
                {
                    "name": "kwok-controller",
                    "extraArgs": [
                        {"key": "manage-all-nodes", "value": "false", "override": True},
                        {"key": "manage-nodes-with-annotation-selector", "value": KWOK_NODE_SELECTOR},
                    ],
                }
            ],
        }

    def _env(self) -> dict[str, str]:
        return {**os.environ, "KWOK_WORKDIR": str(self.workdir)}

    def _kwokctl(self, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
        command = [str(self.paths["kwokctl"]), "--name", self.name, *args]
        return subprocess.run(command, env=self._env(), capture_output=True, text=True, timeout=timeout, check=False)

    # --- lifecycle -------------------------------------------------------------------

    @property
    def cluster_dir(self) -> Path:
        return self.workdir / "clusters" / self.name

    def start(self, *, timeout: float = 180.0) -> ControlPlane:
        """Create and start the cluster; return once the API server and controllers are ready."""
        if self.started:
            return self
        self.directory.mkdir(parents=True, exist_ok=True)
        config = self.directory / "kwokctl.yaml"
        config.write_text(yaml.safe_dump(self.configuration(), sort_keys=False))
        result = self._kwokctl(
            "create", "cluster", "--config", str(config), "--kubeconfig", str(self.kubeconfig),
            "--wait", f"{int(timeout)}s", "--timeout", f"{int(timeout)}s",
            timeout=timeout + 30,
        )  # fmt: skip
        self.started = True
        if result.returncode != 0:
            output = (result.stdout + result.stderr)[-4000:]
            self.stop()
            raise ControlPlaneError(f"kwokctl create cluster {self.name} failed:\n{output}")
        self.verify_local_binaries()
        self._wait_for_default_service_account(timeout)
        return self

    def stop(self) -> None:
        """Delete the cluster (stops every component kwokctl started)."""
        if not self.started:
            return
        result = self._kwokctl("delete", "cluster", "--kubeconfig", str(self.kubeconfig), timeout=120)
        self.started = False
        if result.returncode != 0:
            raise ControlPlaneError(f"kwokctl delete cluster {self.name} failed:\n{result.stderr[-2000:]}")

    def restart(self, *, timeout: float = 120.0) -> None:
        """Stop every component and start them again (etcd keeps its data): an API server outage."""
        for verb in ("stop", "start"):
            result = self._kwokctl(verb, "cluster", timeout=timeout)
            if result.returncode != 0:
                raise ControlPlaneError(f"kwokctl {verb} cluster {self.name} failed:\n{result.stderr[-2000:]}")
        deadline = time.monotonic() + timeout
        while self.kubectl("get", "--raw", "/readyz", check=False).returncode != 0:
            if time.monotonic() > deadline:
                raise ControlPlaneError(f"the API server is not ready {timeout:.0f}s after a restart")
            time.sleep(0.3)

    def close(self) -> None:
        """Stop and remove the directory if this control plane created it."""
        self.stop()
        if self._owns_directory:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def verify_local_binaries(self) -> None:
        """Every component runs one of our pinned binaries and kwokctl downloaded nothing."""
        for component, name in _COMPONENT_BINARIES.items():
            link = self.cluster_dir / "bin" / component
            if link.resolve() != self.paths[name].resolve():
                raise ControlPlaneError(f"{component} runs {link.resolve()}, not the pinned {self.paths[name]}")
        cache = self.directory / "kwok-cache"
        downloaded = [str(p) for p in cache.rglob("*") if p.is_file()] if cache.exists() else []
        if downloaded:
            raise ControlPlaneError(f"kwokctl downloaded files although every binary is local: {downloaded}")

    def _wait_for_default_service_account(self, timeout: float) -> None:
        # Pods need the `default` ServiceAccount, which the controller-manager creates a
        # moment after the API server is ready.
        deadline = time.monotonic() + timeout
        while self.kubectl("get", "serviceaccount", "default", "-n", "default", check=False).returncode != 0:
            if time.monotonic() > deadline:
                raise ControlPlaneError(
                    f"no default ServiceAccount after {timeout:.0f}s; see {self.log_path('kube-controller-manager')}"
                )
            time.sleep(0.5)

    # --- use -------------------------------------------------------------------------

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.ports['kubeApiserverPort']}"

    def log_path(self, component: str) -> Path:
        """The log file of one component (etcd, kube-apiserver, kube-scheduler, kwok-controller, …)."""
        return self.cluster_dir / "logs" / f"{component}.log"

    def pids(self) -> dict[str, int]:
        """component → pid, from kwokctl's pid files (for tests that check nothing is left)."""
        pid_dir = self.cluster_dir / "pids"
        if not pid_dir.is_dir():
            return {}
        return {path.stem: int(path.read_text().strip()) for path in pid_dir.glob("*.pid")}

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run the pinned kubectl against this cluster; CalledProcessError (with stderr) if check fails."""
        command = [str(self.paths["kubectl"]), "--kubeconfig", str(self.kubeconfig), *args]
        result = subprocess.run(command, input=input, capture_output=True, text=True, timeout=timeout, check=False)
        if check and result.returncode != 0:
            raise subprocess.CalledProcessError(result.returncode, command, result.stdout, result.stderr)
        return result

    def kubectl_json(self, *args: str) -> Any:
        return json.loads(self.kubectl(*args, "-o", "json").stdout)

    def api_client(self) -> Any:
        """A fresh `kubernetes.client.ApiClient` for this cluster (one per thread)."""
        from kubernetes import config

        new_client: Any = config.new_client_from_config
        return new_client(config_file=str(self.kubeconfig))
