"""Fixtures for the operator's tests on the real control plane: the CRDs installed, the
operator as a real subprocess (`python -m atoll operator`, so killing it is real), a store
Secret for MinIO, and small helpers to read runs, experts and pods.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.env.cluster import ControlPlane
from tests.env.minio import MinioServer
from tests.env.process import kill_group, start_group
from tests.operator.islands import Island, start_island

REPO = Path(__file__).resolve().parents[2]
CRDS = REPO / "crds"
SECRET = "minio-credentials"


def install_crds(plane: ControlPlane, *, timeout: float = 120) -> None:
    """Apply crds/ and wait until every CRD is Established.

    `kubectl wait --for=condition=Established` on a CRD created a moment ago, before the API
    server has given it any status, fails at once ("status.conditions accessor error") instead
    of waiting: asked again until the deadline.
    """
    plane.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRDS))
    deadline = time.monotonic() + timeout
    while True:
        result = plane.kubectl(
            "wait", "--for=condition=Established", f"--timeout={timeout:.0f}s",
            "crd/ddmruns.atoll.dev", "crd/ddmexperts.atoll.dev", "crd/computeislands.atoll.dev", check=False,
        )  # fmt: skip
        if result.returncode == 0:
            return
        if "accessor error" not in result.stderr or time.monotonic() > deadline:
            raise AssertionError(f"the CRDs were not established: {result.stderr.strip()}")
        time.sleep(0.5)


@pytest.fixture(scope="session")
def atoll_crds(control_plane: ControlPlane) -> ControlPlane:
    """The DDMRun, DDMExpert and ComputeIsland CRDs from crds/, established in the session's API server."""
    install_crds(control_plane)
    return control_plane


class OperatorProcess:
    """`python -m atoll operator` watching one namespace, with its own log file."""

    def __init__(self, kubeconfig: Path, namespace: str, log: Path, args: list[str]) -> None:
        self.kubeconfig = kubeconfig
        self.namespace = namespace
        self.log = log
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "atoll", "operator", "--kubeconfig", str(self.kubeconfig),
            "--namespace", self.namespace, "--interval", "1", "--store-poll", "1", *self.args,
        ]  # fmt: skip

    def start(self) -> OperatorProcess:
        self.proc = start_group(self.command(), log=self.log, cwd=REPO)
        self.starts += 1
        return self

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no shutdown handlers, exactly like a crashed or evicted operator."""
        if self.proc is not None:
            kill_group(self.proc.pid, proc=self.proc)
            self.proc.wait(timeout=30)
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()
        self.proc = None

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@pytest.fixture
def start_operator(
    atoll_crds: ControlPlane, namespace: str, tmp_path: Path
) -> Iterator[Callable[..., OperatorProcess]]:
    """Start the operator for this test's namespace (stopped at the end; it must not have crashed)."""
    started: list[OperatorProcess] = []

    def start(*args: str) -> OperatorProcess:
        process = OperatorProcess(atoll_crds.kubeconfig, namespace, tmp_path / "operator.log", list(args))
        started.append(process.start())
        return process

    yield start
    for process in started:
        crashed = process.proc is not None and process.proc.poll() is not None
        process.stop()
        assert not crashed, f"the operator exited on its own:\n{process.output()[-3000:]}"


@pytest.fixture
def store_secret(control_plane: ControlPlane, namespace: str, minio: MinioServer, minio_bucket: str) -> str:
    """A Secret `minio-credentials` for the session's MinIO in the test namespace; returns s3://<bucket>/runs."""
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": SECRET, "namespace": namespace},
        "stringData": {"accessKey": minio.access_key, "secretKey": minio.secret_key, "endpoint": minio.endpoint},
    }
    control_plane.kubectl("apply", "-f", "-", input=json.dumps(secret))
    return f"s3://{minio_bucket}/runs"


def apply(control_plane: ControlPlane, namespace: str, document: dict[str, Any]) -> None:
    control_plane.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(document))


def run_object(control_plane: ControlPlane, namespace: str, name: str) -> dict[str, Any]:
    result: dict[str, Any] = control_plane.kubectl_json("get", "ddmrun", name, "-n", namespace)
    return result


def pods(control_plane: ControlPlane, namespace: str, run: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = control_plane.kubectl_json(
        "get", "pods", "-n", namespace, "-l", f"atoll.dev/run={run}"
    )["items"]
    return items


def wait_run(
    control_plane: ControlPlane,
    namespace: str,
    name: str,
    condition: Callable[[dict[str, Any]], bool],
    *,
    timeout: float,
    what: str,
    during: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Poll the DDMRun until condition(run) holds; fail with its status otherwise (also on Failed)."""
    deadline = time.monotonic() + timeout
    run: dict[str, Any] = {}
    while time.monotonic() < deadline:
        run = run_object(control_plane, namespace, name)
        if condition(run):
            return run
        status = run.get("status") or {}
        if status.get("phase") == "Failed" and "Failed" not in what:
            pytest.fail(f"{name} failed while waiting for {what}: {status.get('reason')}: {status.get('message')}")
        if during is not None:
            during()
        time.sleep(1)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}; status: {json.dumps(run.get('status'))[:3000]}")


def phase(run: dict[str, Any]) -> str | None:
    return (run.get("status") or {}).get("phase")


def condition(run: dict[str, Any], kind: str) -> dict[str, Any]:
    for item in (run.get("status") or {}).get("conditions") or []:
        if item["type"] == kind:
            return dict(item)
    return {}


def holder_pod(
    name: str, node: str, resources: dict[str, str], *, affinity: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A pod bound to `node` (no scheduler) holding `resources`: a sleeping process under the pod runtime."""
    spec: dict[str, Any] = {
        "nodeName": node,
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": 0,
        "containers": [
            {
                "name": "holder",
                "image": "busybox",
                "command": ["python", "-c", "import time; time.sleep(3600)"],
                "resources": {"requests": dict(resources), "limits": dict(resources)},
            }
        ],
    }
    if affinity is not None:
        spec["affinity"] = affinity
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


@pytest.fixture(scope="session")
def island(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Island]:
    """A second control plane standing in for a compute island (charts/atoll-island installed)."""
    yield from start_island(tmp_path_factory.mktemp("island"))
