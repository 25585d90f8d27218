"""Starts and stops the pod process runtime (tests/env/podruntime.py) as its own process,
and reads what it leaves in its work directory: per-pod logs and state (pid, command).

Used by the pytest fixtures and by `make dev-up`; it never signals processes it did not start.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.env.fleet import EXECUTE_LABEL
from tests.env.process import group_alive, start_group, stop_group, wait_until

REPO_ROOT = Path(__file__).resolve().parents[2]


class PodRuntimeProcess:
    """`python -m tests.env.podruntime` for one cluster, with its work directory."""

    def __init__(self, kubeconfig: Path, workdir: Path, *, node_selector: str = f"{EXECUTE_LABEL}=true"):
        self.kubeconfig = Path(kubeconfig)
        self.workdir = Path(workdir)
        self.node_selector = node_selector
        self.log_file = self.workdir / "runtime.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, *, timeout: float = 60.0) -> PodRuntimeProcess:
        """Start the runtime and wait until it has listed the marked nodes and their pods."""
        if self.running:
            return self
        self.workdir.mkdir(parents=True, exist_ok=True)
        ready = self.workdir / "ready"
        ready.unlink(missing_ok=True)
        command = [
            sys.executable, "-m", "tests.env.podruntime",
            "--kubeconfig", str(self.kubeconfig), "--workdir", str(self.workdir),
            "--node-selector", self.node_selector,
        ]  # fmt: skip
        proc = self._proc = start_group(command, log=self.log_file, cwd=REPO_ROOT)
        wait_until(
            ready.exists,
            timeout=timeout,
            what="pod process runtime",
            alive=lambda: None if proc.poll() is None else f"exited with {proc.returncode}; see {self.log_file}",
        )
        return self

    def stop(self, *, grace: float = 15.0) -> None:
        """SIGTERM the runtime (it stops every pod process it started), SIGKILL after grace."""
        if self._proc is not None:
            stop_group(self._proc.pid, grace=grace, proc=self._proc)
        self._proc = None

    # --- what the runtime recorded -------------------------------------------------------

    def state(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The newest start of pod namespace/name: uid, pid, pgid, log, command, workingDir, node, restarts."""
        path = self.workdir / "pods" / namespace / f"{name}.json"
        try:
            state: dict[str, Any] = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return state

    def pod_pid(self, namespace: str, name: str) -> int | None:
        """The pid (= process group id) of the pod's process, once it was started."""
        state = self.state(namespace, name)
        return int(state["pid"]) if state else None

    def log_path(self, namespace: str, name: str) -> Path | None:
        """The log file (stdout + stderr) of the newest pod called namespace/name, if it ever started."""
        state = self.state(namespace, name)
        return Path(state["log"]) if state else None

    def logs(self, namespace: str, name: str) -> str:
        """The pod's log so far ("" if it never started)."""
        path = self.log_path(namespace, name)
        if path is None or not path.exists():
            return ""
        return path.read_text(errors="replace")

    def process_alive(self, namespace: str, name: str) -> bool:
        """Whether any process of the pod's process group is still running."""
        pid = self.pod_pid(namespace, name)
        return pid is not None and group_alive(pid)
