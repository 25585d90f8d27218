"""A real Kubernetes control plane on loopback, started by kwokctl's `binary` runtime from
the pinned local binaries only: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler and the kwok controller. Nothing is downloaded and nothing touches ~/.kwok
or ~/.kube: the kwokctl work directory and the kubeconfig live in a directory of ours.
(One class for a control plane's whole life — start, restart, stop, kubectl, audit log —
so a little over 400 lines.)
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
from tests.env.process import free_port, port_bindable

KUBE_VERSION = "v1.36.3"
ETCD_VERSION = "v3.6.8"
KWOK_VERSION = "v0.8.0"

# kwok simulates only the nodes carrying this annotation and not this label; the GPU nodes
# that the pod process runtime executes are left to it (see tests/env/fleet.py). Karpenter's
# kwok provider annotates every Node it creates: a NodePool whose template carries the label
# gets nodes that the runtime executes and kwok leaves alone (it never marks their pods Running).
KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"
KWOK_NODE_SELECTOR = f"{KWOK_NODE_ANNOTATION}=fake"
KWOK_NODE_LABEL_SELECTOR = "atoll.dev/execute!=true"
"""fleet.EXECUTE_LABEL (fleet imports this module, so it is spelled out here)."""

KWOK_POD_WORKERS = 32
"""Pods kwok plays stages for at once (kwok's `podPlayStageParallelism`, 4 by default). kwok
simulates the kubelet of every node it manages with one shared pool of workers, each waiting
on one API call at a time; 1000 real kubelets start their pods independently. With 4, kwok
took ~20 s (median) from binding 1024 pods to marking them Running in bench/operator_scale.py:
the simulated kubelets, not the cluster, were the queue (docs/benchmarks.md, "Operator scale")."""

KWOK_DEFAULT_OPTIONS: dict[str, Any] = {
    "cidr": "10.0.0.0/24",
    "manageAllNodes": False,
    "enableDebuggingHandlers": True,
    "enableContentionProfiling": False,
    "enableProfilingHandler": True,
    "podPlayStageParallelism": 4,
    "nodePlayStageParallelism": 4,
    "nodeLeaseParallelism": 4,
    "podsOnNodeSyncParallelism": 1,
    "enablePodsOnNodeSyncListPager": True,
    "enablePodsOnNodeSyncStreamWatch": False,
}
"""kwok v0.8.0's defaults of its KwokConfiguration options (pkg/apis/config/v1alpha1)."""

_BINARY_OPTIONS = {
    "kubeApiserverBinary": "kube-apiserver",
    "kubeControllerManagerBinary": "kube-controller-manager",
    "kubeSchedulerBinary": "kube-scheduler",
    "kubectlBinary": "kubectl",
    "etcdBinary": "etcd",
    "kwokControllerBinary": "kwok",
}


class KubectlError(subprocess.CalledProcessError):
    """A kubectl command failed; unlike CalledProcessError its message ends with kubectl's stderr."""

    def __str__(self) -> str:
        return f"{super().__str__()}\n{(self.stderr or '').strip()[-2000:]}"


class ControlPlaneError(RuntimeError):
    """kwokctl could not create, start or delete the cluster; the message carries its output."""


AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    # Every request a ServiceAccount makes (an operator in cluster, a pod's token), nothing else.
    "rules": [{"level": "Metadata", "userGroups": ["system:serviceaccounts"]}, {"level": "None"}],
}
ADMISSION_PLUGINS = "OwnerReferencesPermissionEnforcement"
"""Besides the defaults: blockOwnerDeletion needs `update` on the owner's finalizers, as on hardened clusters."""

_PORT_OPTIONS = (
    "kubeApiserverPort",
    "etcdPort",
    "etcdPeerPort",
    "kubeControllerManagerPort",
    "kubeSchedulerPort",
    "kwokControllerPort",
)
_COMPONENT_BINARIES = {
    "etcd": "etcd",
    "kube-apiserver": "kube-apiserver",
    "kube-controller-manager": "kube-controller-manager",
    "kube-scheduler": "kube-scheduler",
    "kwok-controller": "kwok",
}


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
        kwok_pod_workers: int = KWOK_POD_WORKERS,
        controller_manager_qps: int | None = None,
    ):
        self._owns_directory = directory is None
        self.node_monitor_period_s = node_monitor_period_s
        """How often the node lifecycle controller checks nodes (kwokctl's default is 25 s, which
        delays lifting the not-ready taint of a node that just became Ready)."""
        self.node_monitor_grace_s = node_monitor_grace_s
        """How long a node may miss heartbeats before it is NotReady (None: kwokctl's 200 s)."""
        self.kwok_pod_workers = kwok_pod_workers
        """Pods the kwok controller plays stages for at once (see KWOK_POD_WORKERS)."""
        self.controller_manager_qps = controller_manager_qps
        """Requests per second the kube-controller-manager may make (its burst: twice that; None:
        its default, 20). At 20 it takes minutes to settle 1000 new nodes: it lifts each node's
        not-ready taint, adds its beta labels and its TTL annotation, one request each."""
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
            for option in _PORT_OPTIONS:
                self.ports[option] = free_port(taken=set(self.ports.values()))
        options: dict[str, Any] = {
            "runtime": "binary",
            "kubeVersion": KUBE_VERSION,
            "etcdVersion": ETCD_VERSION,
            "kwokVersion": KWOK_VERSION,
            "bindAddress": "127.0.0.1",
            "cacheDir": str(self.directory / "kwok-cache"),
            "quietPull": True,
            "kubeControllerManagerNodeMonitorPeriodMilliseconds": int(self.node_monitor_period_s * 1000),
            "kubeAuditPolicy": str(self.directory / "audit-policy.yaml"),
            **self.ports,
            **{option: str(self.paths[name]) for option, name in _BINARY_OPTIONS.items()},
        }
        if self.node_monitor_grace_s is not None:
            options["kubeControllerManagerNodeMonitorGracePeriodMilliseconds"] = int(self.node_monitor_grace_s * 1000)
        patches: list[dict[str, Any]] = []
        if self.controller_manager_qps is not None:
            qps = self.controller_manager_qps
            limits = [{"key": "kube-api-qps", "value": str(qps)}, {"key": "kube-api-burst", "value": str(2 * qps)}]
            patches.append({"name": "kube-controller-manager", "extraArgs": limits})
        return {
            "apiVersion": "config.kwok.x-k8s.io/v1alpha1",
            "kind": "KwokctlConfiguration",
            "options": options,
            "componentsPatches": [
                {
                    "name": "kube-apiserver",
                    "extraArgs": [{"key": "enable-admission-plugins", "value": ADMISSION_PLUGINS}],
                },
                {
                    "name": "kwok-controller",
                    "extraArgs": [
                        {"key": "manage-all-nodes", "value": "false", "override": True},
                        {"key": "manage-nodes-with-annotation-selector", "value": KWOK_NODE_SELECTOR},
                        {"key": "manage-nodes-with-label-selector", "value": KWOK_NODE_LABEL_SELECTOR},
                    ],
                },
                *patches,
            ],
        }

    def kwok_configuration(self) -> dict[str, Any]:
        """The kwok controller's own settings (a KwokConfiguration document next to the
        KwokctlConfiguration: kwokctl hands it to the controller in its --config file).

        Every option kwok v0.8.0 defaults is spelled out with its default: kwokctl saves the
        document without applying them, and the controller then refuses zero workers (it
        exits on "node leases parallelism must be greater than 0")."""
        return {
            "apiVersion": "config.kwok.x-k8s.io/v1alpha1",
            "kind": "KwokConfiguration",
            "options": {
                **KWOK_DEFAULT_OPTIONS,
                "podPlayStageParallelism": self.kwok_pod_workers,
            },
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
        config.write_text(yaml.safe_dump_all([self.configuration(), self.kwok_configuration()], sort_keys=False))
        (self.directory / "audit-policy.yaml").write_text(yaml.safe_dump(AUDIT_POLICY, sort_keys=False))
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
        """Stop every component and start them again (etcd keeps its data): an API server outage.

        `kwokctl stop` SIGKILLs the components and returns without waiting for them to exit. A
        component still exiting (a thread in an fsync or a page fault on a loaded machine) still
        holds its port, the new one that `kwokctl start` launches dies on "bind: address already
        in use", and kwokctl never notices: it waits two minutes for an API server that cannot
        come up. So the old processes must be gone and every port free before the start, and a
        component that dies after it fails the restart at once, with its log.
        """
        deadline = time.monotonic() + timeout
        before = self.pids()
        result = self._kwokctl("stop", "cluster", timeout=timeout)
        if result.returncode != 0:
            raise ControlPlaneError(f"kwokctl stop cluster {self.name} failed:\n{result.stderr[-2000:]}")
        self._wait_released(before, deadline)
        old = set(before.values())
        self._start_watched(deadline, old)
        while self.kubectl("get", "--raw", "/readyz", check=False).returncode != 0:
            self._check_running(old)
            if time.monotonic() > deadline:
                raise ControlPlaneError(f"the API server is not ready {timeout:.0f}s after a restart:\n{self._tails()}")
            time.sleep(0.3)

    def _wait_released(self, before: dict[str, int], deadline: float) -> None:
        """Until every process of the stopped cluster has exited and every one of its ports is free."""
        while True:
            alive = {name: pid for name, pid in before.items() if _running(pid)}
            busy = [port for port in self.ports.values() if not port_bindable(port)]
            if not alive and not busy:
                return
            if time.monotonic() > deadline:
                raise ControlPlaneError(
                    f"after kwokctl stop cluster {self.name}: still running {alive}, ports still in use {busy}"
                )
            time.sleep(0.05)

    def _start_watched(self, deadline: float, old: set[int]) -> None:
        """kwokctl start cluster, stopped early (with the log of the culprit) when a component dies
        (`old`: the pids of the stopped components, whose pid files kwokctl has not replaced yet)."""
        command = [str(self.paths["kwokctl"]), "--name", self.name, "start", "cluster"]
        with subprocess.Popen(command, env=self._env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as start:
            try:
                while start.poll() is None:
                    self._check_running(old)
                    if time.monotonic() > deadline:
                        raise ControlPlaneError(f"kwokctl start cluster {self.name} did not finish:\n{self._tails()}")
                    time.sleep(0.2)
            finally:
                if start.poll() is None:
                    start.kill()
                output = start.communicate()[0].decode(errors="replace")
        if start.returncode != 0:
            raise ControlPlaneError(f"kwokctl start cluster {self.name} failed:\n{output[-2000:]}")

    def _check_running(self, old: set[int]) -> None:
        """ControlPlaneError with its log when a component kwokctl started has exited (a pid in
        `old` is one it stopped: a component that died before the restart, such as a scheduler
        that lost its lease to an API server outage, is not restarted yet)."""
        for component, pid in self.pids().items():
            if pid not in old and not _running(pid):
                raise ControlPlaneError(
                    f"{component} (pid {pid}) exited after the restart of {self.name}; its log ends:\n"
                    + _tail(self.log_path(component))
                )

    def _tails(self) -> str:
        return "\n".join(f"--- {c}:\n{_tail(self.log_path(c))}" for c in _COMPONENT_BINARIES)

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

    def audit_events(self, username: str | None = None) -> list[dict[str, Any]]:
        """The API server's audit events (every ServiceAccount request, metadata only), of one user if given."""
        path = self.log_path("audit")
        lines = path.read_text(errors="replace").splitlines() if path.exists() else []
        events = [json.loads(line) for line in lines if line.strip()]
        return [e for e in events if username is None or e.get("user", {}).get("username") == username]

    def pids(self) -> dict[str, int]:
        """component → pid, from kwokctl's pid files (for tests that check nothing is left). A
        file kwokctl is writing or removing at that instant (empty during a start) is left out."""
        pid_dir = self.cluster_dir / "pids"
        if not pid_dir.is_dir():
            return {}
        found = {}
        for path in pid_dir.glob("*.pid"):
            try:
                text = path.read_text().strip()
            except FileNotFoundError:  # removed since the listing
                continue
            if text.isdigit():
                found[path.stem] = int(text)
        return found

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run the pinned kubectl against this cluster; KubectlError (a CalledProcessError whose
        message shows kubectl's stderr) if check fails."""
        command = [str(self.paths["kubectl"]), "--kubeconfig", str(self.kubeconfig), *args]
        result = subprocess.run(command, input=input, capture_output=True, text=True, timeout=timeout, check=False)
        if check and result.returncode != 0:
            raise KubectlError(result.returncode, command, result.stdout, result.stderr)
        return result

    def kubectl_json(self, *args: str) -> Any:
        return json.loads(self.kubectl(*args, "-o", "json").stdout)

    def api_client(self) -> Any:
        """A fresh `kubernetes.client.ApiClient` for this cluster (one per thread)."""
        from kubernetes import config

        new_client: Any = config.new_client_from_config
        return new_client(config_file=str(self.kubeconfig))


def _running(pid: int) -> bool:
    """Whether process pid exists and is not a zombie (an exited child not yet reaped)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
