"""The pod process runtime: a stand-in kubelet for the fake GPU nodes marked
`atoll.dev/execute: "true"`. It runs each bound pod's first container as a local process —
from the pod's image when that image is in Atoll's local container storage (as root, see
tests/env/imagepods.py), else its command on the host — reports Running / Succeeded /
Failed, and kills the process when the pod is deleted. It keeps the marked nodes Ready
(status + Lease heartbeats).

Run it as `python -m tests.env.podruntime --kubeconfig K --workdir D`; it never touches
pods on other nodes (kwok simulates those) and leaves no child process behind on exit.
(One loop over a pod's whole life, so one file of about 580 lines; what it decides from
is pure and lives in pods.py and containers.py, image containers in imagepods.py.)
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.env import pods
from tests.env.fleet import EXECUTE_LABEL
from tests.env.imagepods import ImagePods, Launch
from tests.env.nodeheartbeat import NodeHeartbeat
from tests.env.process import kill_group, signal_group
from tests.env.watching import Informer

MERGE_PATCH = "application/merge-patch+json"
COMPONENT = "atoll-pod-runtime"
PASS_ENV = (
    "HF_HOME",
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "HF_DATASETS_OFFLINE",
    "TOKENIZERS_PARALLELISM",
    "TMPDIR",
)
"""Host variables every pod also gets: no network here, so the model hubs must stay offline."""
RETRY_CONFIG_S = 2.0
API_RETRY_S = 1.0
BACKOFF_S = (1.0, 2.0, 4.0, 8.0)
"""Restart back-off (the kubelet's starts at 10 s; tests cannot wait that long)."""


@dataclass
class PodProcess:
    """What the runtime knows about one pod it runs."""

    pod: dict[str, Any]
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    started_at: str = ""
    restarts: int = 0
    last_state: dict[str, Any] | None = None
    retry_at: float | None = None
    """When to try starting the container again (config error, restart back-off)."""
    kill_at: float | None = None
    """After SIGTERM: when to send SIGKILL."""
    finished: bool = False
    unreported: dict[str, Any] | None = None
    """A status not yet accepted by the API server (it was unreachable); sent again on every tick."""
    delete_pending: bool = False
    api_retry_at: float = 0.0
    """No new try of an unreported status or a pending delete before this (API server away)."""
    warned: set[str] = field(default_factory=set)
    cleanup: Callable[[], None] | None = None
    """Undoes what starting the container made (an image container's root filesystem)."""

    @property
    def uid(self) -> str:
        return str(self.pod["metadata"]["uid"])

    @property
    def key(self) -> tuple[str, str]:
        return self.pod["metadata"]["namespace"], self.pod["metadata"]["name"]

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def _die_with_parent() -> None:
    # The kernel SIGKILLs the child when the runtime dies, even by SIGKILL (no orphans).
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class PodRuntime:
    """The runtime's state and its single-threaded reconcile loop (watches feed a queue)."""

    def __init__(
        self,
        kubeconfig: Path,
        workdir: Path,
        *,
        grace_cap_s: float = 30.0,
        pass_env: tuple[str, ...] = PASS_ENV,
        node_selector: str = f"{EXECUTE_LABEL}=true",
    ):
        from kubernetes import client, config

        # The generated client is only partly typed: keep it behind Any.
        self.client: Any = client
        new_client: Any = config.new_client_from_config
        self.kubeconfig = kubeconfig
        self.workdir = workdir
        self.grace_cap_s = grace_cap_s
        self.pass_env = pass_env
        self.node_selector = node_selector
        self._new_client: Callable[[], Any] = lambda: new_client(config_file=str(kubeconfig))
        self.core: Any = self.client.CoreV1Api(self._new_client())
        self.events: queue.Queue[tuple[str, str, Any]] = queue.Queue()
        self.stopping = threading.Event()
        self.nodes: dict[str, dict[str, Any]] = {}
        self.processes: dict[str, PodProcess] = {}
        self.pods: dict[str, dict[str, Any]] = {}
        """Every bound pod seen, by uid: a pod may arrive before the watch shows its node."""
        self.heartbeat = NodeHeartbeat(
            self.client.CoreV1Api(self._new_client()), self.client.CoordinationV1Api(self._new_client())
        )
        self.synced: set[str] = set()
        self.images = ImagePods(self.core, str(self.core.api_client.configuration.host), workdir)

    # --- main loop -----------------------------------------------------------------------

    def run(self) -> None:
        client = self.client
        for kind, lister, kwargs in (
            ("node", client.CoreV1Api(self._new_client()).list_node, {"label_selector": self.node_selector}),
            (
                "pod",
                client.CoreV1Api(self._new_client()).list_pod_for_all_namespaces,
                {"field_selector": "spec.nodeName!="},
            ),
        ):
            informer = Informer(kind, lister, kwargs, self.events, self.stopping)
            threading.Thread(target=informer.run, name=f"watch-{kind}", daemon=True).start()
        try:
            while not self.stopping.is_set():
                with contextlib.suppress(queue.Empty):
                    kind, event, obj = self.events.get(timeout=0.1)
                    self._handle(kind, event, obj)
                self._tick()
        finally:
            self.shutdown()

    def _handle(self, kind: str, event: str, obj: Any) -> None:
        if kind == "node":
            self._on_node(event, obj)
        else:
            self._on_pod(event, obj)
        if event == "SYNC":
            self.synced.add(kind)
            if self.synced == {"node", "pod"}:
                (self.workdir / "ready").write_text(str(os.getpid()))

    def _tick(self) -> None:
        moment = time.monotonic()
        for process in list(self.processes.values()):
            if process.proc is not None and process.proc.poll() is not None:
                self._on_exit(process)
            if process.kill_at is not None and moment >= process.kill_at and process.proc is not None:
                kill_group(process.proc.pid)
                process.kill_at = None
            if process.retry_at is not None and moment >= process.retry_at:
                process.retry_at = None
                self._start(process)
            if moment >= process.api_retry_at:
                if process.unreported is not None:
                    self._report(process, process.unreported)
                if process.delete_pending:
                    self._delete(process)
        self.heartbeat.tick(self.nodes)

    # --- nodes -------------------------------------------------------------------------

    def _on_node(self, event: str, obj: Any) -> None:
        if event == "SYNC":
            current = {node["metadata"]["name"]: node for node in obj}
            for name in set(self.nodes) - set(current):
                self._node_gone(name)
            added = set(current) - set(self.nodes)
            self.nodes = current
        elif event == "DELETED":
            self.nodes.pop(obj["metadata"]["name"], None)
            self._node_gone(obj["metadata"]["name"])
            return
        else:
            added = {obj["metadata"]["name"]} - set(self.nodes)
            self.nodes[obj["metadata"]["name"]] = obj
        for pod in list(self.pods.values()):
            if pod["spec"].get("nodeName") in added:
                self._sync(pod)

    def _node_gone(self, name: str) -> None:
        # The machine is gone: so are its processes. Pod GC deletes the pods later.
        for process in list(self.processes.values()):
            if process.pod["spec"].get("nodeName") == name:
                self._forget(process)

    # --- pods --------------------------------------------------------------------------

    def _on_pod(self, event: str, obj: Any) -> None:
        if event == "SYNC":
            self.pods = {pod["metadata"]["uid"]: pod for pod in obj}
            for uid in set(self.processes) - set(self.pods):
                self._forget(self.processes[uid])
            for pod in obj:
                self._sync(pod)
        elif event == "DELETED":
            self.pods.pop(obj["metadata"]["uid"], None)
            if (process := self.processes.get(obj["metadata"]["uid"])) is not None:
                self._forget(process)
        else:
            self.pods[obj["metadata"]["uid"]] = obj
            self._sync(obj)

    def _sync(self, pod: dict[str, Any]) -> None:
        uid = pod["metadata"]["uid"]
        process = self.processes.get(uid)
        if pod["spec"].get("nodeName") not in self.nodes:
            if process is not None:
                self._forget(process)
            return
        if process is not None:
            process.pod = pod
        if pod["metadata"].get("deletionTimestamp"):
            self._terminate(process or PodProcess(pod, self._log_path(pod)), pod)
            return
        phase = (pod.get("status") or {}).get("phase")
        if process is not None or phase in ("Succeeded", "Failed"):
            return
        process = PodProcess(pod, self._log_path(pod))
        self.processes[uid] = process
        statuses = (pod.get("status") or {}).get("containerStatuses") or []
        if phase == "Running" and statuses:
            # Started by an earlier runtime that is gone, and its process with it.
            process.restarts = int(statuses[0].get("restartCount", 0))
            process.started_at = pods.now()
            self._exited(process, 137, "the pod process runtime restarted; the process was lost")
            return
        self._start(process)

    def _terminate(self, process: PodProcess, pod: dict[str, Any]) -> None:
        """Graceful deletion: SIGTERM now, SIGKILL after the grace period, then delete for good."""
        self.processes.setdefault(process.uid, process)
        process.retry_at = None
        if process.alive and process.proc is not None:
            if process.kill_at is None:
                grace = pod["metadata"].get("deletionGracePeriodSeconds")
                if grace is None:
                    grace = pod["spec"].get("terminationGracePeriodSeconds", 30)
                signal_group(process.proc.pid, signal.SIGTERM)
                process.kill_at = time.monotonic() + min(float(grace), self.grace_cap_s)
            return
        process.delete_pending = True
        self._delete(process)

    def _log_path(self, pod: dict[str, Any]) -> Path:
        meta = pod["metadata"]
        return Path(self.workdir, "logs", meta["namespace"], meta["name"], f"{meta['uid']}.log")

    def _lookup(self, kind: str) -> pods.Lookup:
        from kubernetes.client.exceptions import ApiException

        def read(namespace: str, name: str) -> dict[str, str] | None:
            reader = self.core.read_namespaced_secret if kind == "secret" else self.core.read_namespaced_config_map
            try:
                response = reader(name, namespace, _preload_content=False, _request_timeout=10)
            except ApiException as error:
                if error.status == 404:
                    return None
                raise
            obj = json.loads(response.data)
            return pods.decode_secret(obj) if kind == "secret" else dict(obj.get("data") or {})

        return read

    def _base_env(self, pod: dict[str, Any]) -> dict[str, str]:
        venv_bin = str(Path(sys.executable).parent)
        env = {
            "PATH": os.pathsep.join([venv_bin, os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin")]),
            "HOME": os.environ.get("HOME", "/root"),
            "LANG": os.environ.get("LANG", "C.UTF-8"),
            "HOSTNAME": pod["metadata"]["name"],
            # Python block-buffers stdout into a file: unbuffered keeps stdout and stderr in order in the log.
            "PYTHONUNBUFFERED": "1",
        }
        env.update({name: os.environ[name] for name in self.pass_env if name in os.environ})
        return env

    def _start(self, process: PodProcess) -> None:
        pod = process.pod
        container = pod["spec"]["containers"][0]
        pod_dir = self.workdir / "pods" / process.key[0] / f"{process.key[1]}-{process.uid[:8]}"
        pod_dir.mkdir(parents=True, exist_ok=True)
        launch: Launch | None = None
        try:
            env = pods.resolve_env(pod, container, secret=self._lookup("secret"), config_map=self._lookup("configmap"))
            if (image := self.images.lookup(container.get("image"))) is not None:
                launch = self.images.prepare(pod, image, env, pod_dir)
            argv = launch.argv if launch is not None else pods.command_of(container, env)
        except pods.ContainerConfigError as error:
            self._config_error(process, str(error))
            return
        except Exception as error:  # the API server is unreachable: try again shortly
            process.retry_at = time.monotonic() + RETRY_CONFIG_S
            print(f"reading config of {process.key}: {error}", file=sys.stderr, flush=True)
            return
        working_dir = Path(container.get("workingDir") or "/nonexistent")
        if launch is not None or not working_dir.is_dir():
            working_dir = pod_dir
        process.cleanup = launch.cleanup if launch is not None else None
        # chroot_exec's own environment; the container's is in its spec
        host_env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
        process.log.parent.mkdir(parents=True, exist_ok=True)
        process.started_at = pods.now()
        try:
            with process.log.open("ab") as log:
                process.proc = subprocess.Popen(
                    argv,
                    env=host_env if launch is not None else {**self._base_env(pod), **env},
                    cwd=working_dir,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    preexec_fn=_die_with_parent,  # noqa: PLW1509 (only prctl; the loop thread forks)
                )
        except OSError as error:
            with process.log.open("a") as log:
                log.write(f"{COMPONENT}: cannot start {argv[0]!r}: {error}\n")
            self._release(process)
            self._finish(process, 128, f"cannot start {argv[0]!r}: {error}", reason="StartError")
            return
        self._write_state(process, argv, working_dir, launch)
        status = pods.running_status(
            pod,
            started_at=process.started_at,
            pid=process.proc.pid,
            restarts=process.restarts,
            last_state=process.last_state,
        )
        self._report(process, status)

    def _config_error(self, process: PodProcess, message: str) -> None:
        process.retry_at = time.monotonic() + RETRY_CONFIG_S
        phase = "Running" if process.restarts else "Pending"
        status = pods.waiting_status(
            process.pod,
            reason="CreateContainerConfigError",
            message=message,
            restarts=process.restarts,
            last_state=process.last_state,
            phase=phase,
        )
        if message not in process.warned:
            process.warned.add(message)
            self._report(process, status)
            self._event(process, "Failed", f"Error: {message}")

    def _on_exit(self, process: PodProcess) -> None:
        assert process.proc is not None
        code = process.proc.returncode
        kill_group(process.proc.pid)  # what the container left behind in its group goes with it
        self._release(process)
        if process.pod["metadata"].get("deletionTimestamp"):
            process.proc = None
            process.kill_at = None
            process.delete_pending = True
            self._delete(process)
            return
        self._exited(process, 128 - code if code < 0 else code)

    def _exited(self, process: PodProcess, exit_code: int, message: str | None = None) -> None:
        """The container ended: restart it (restartPolicy, with back-off) or report the pod finished."""
        policy = process.pod["spec"].get("restartPolicy", "Always")
        if policy == "Always" or (policy == "OnFailure" and exit_code != 0):
            pid = process.proc.pid if process.proc is not None else None
            state = pods.terminated_state(exit_code=exit_code, started_at=process.started_at, pid=pid, message=message)
            process.proc = None
            process.last_state = state
            delay = BACKOFF_S[min(process.restarts, len(BACKOFF_S) - 1)]
            process.restarts += 1
            process.retry_at = time.monotonic() + delay
            name = process.pod["spec"]["containers"][0]["name"]
            text = f"back-off {delay:.0f}s restarting failed container {name}"
            status = pods.waiting_status(
                process.pod, reason="CrashLoopBackOff", message=text, restarts=process.restarts, last_state=state,
                phase="Running",
            )  # fmt: skip
            self._report(process, status)
            self._event(process, "BackOff", text)
            return
        self._finish(process, exit_code, message)

    def _finish(self, process: PodProcess, exit_code: int, message: str | None, *, reason: str | None = None) -> None:
        pid = process.proc.pid if process.proc is not None else None
        container = process.pod["spec"]["containers"][0]
        if message is None and exit_code != 0 and container.get("terminationMessagePolicy") == "FallbackToLogsOnError":
            message = self._log_tail(process)
        state = pods.terminated_state(
            exit_code=exit_code, started_at=process.started_at, pid=pid, message=message, reason=reason
        )
        process.proc = None
        process.finished = True
        self._report(
            process,
            pods.finished_status(process.pod, state=state, restarts=process.restarts, last_state=process.last_state),
        )

    @staticmethod
    def _log_tail(process: PodProcess, limit: int = 2048) -> str | None:
        try:
            with process.log.open("rb") as log:
                log.seek(max(0, log.seek(0, os.SEEK_END) - limit))
                return log.read().decode("utf-8", errors="replace")
        except OSError:
            return None

    def _forget(self, process: PodProcess) -> None:
        """The pod is gone (or its node is): kill its process at once and stop tracking it."""
        if process.proc is not None:
            kill_group(process.proc.pid, process.proc)
        self._release(process)
        self.processes.pop(process.uid, None)

    @staticmethod
    def _release(process: PodProcess) -> None:
        """Remove what the container's start made (an image container's root filesystem), once."""
        cleanup, process.cleanup = process.cleanup, None
        if cleanup is not None:
            try:
                cleanup()
            except Exception as error:
                print(f"cleaning up {process.key}: {error}", file=sys.stderr, flush=True)

    # --- API writes ----------------------------------------------------------------------

    def _report(self, process: PodProcess, status: dict[str, Any]) -> None:
        from kubernetes.client.exceptions import ApiException

        namespace, name = process.key
        pods.keep_transition_times(status, process.pod.get("status"))
        try:
            self.core.patch_namespaced_pod_status(
                name, namespace, {"status": status}, _content_type=MERGE_PATCH, _request_timeout=10
            )
            process.unreported = None
        except ApiException as error:
            if error.status == 404:
                process.unreported = None
                self._forget(process)
                return
            process.unreported = status
            process.api_retry_at = time.monotonic() + API_RETRY_S
            print(
                f"status of {namespace}/{name}: {error.status} {error.reason}: {error.body}",
                file=sys.stderr,
                flush=True,
            )
        except Exception as error:
            process.unreported = status
            process.api_retry_at = time.monotonic() + API_RETRY_S
            print(f"status of {namespace}/{name}: {error}", file=sys.stderr, flush=True)

    def _delete(self, process: PodProcess) -> None:
        from kubernetes.client.exceptions import ApiException

        namespace, name = process.key
        body = {"gracePeriodSeconds": 0, "preconditions": {"uid": process.uid}}
        try:
            self.core.delete_namespaced_pod(name, namespace, body=body, grace_period_seconds=0, _request_timeout=10)
        except ApiException as error:
            if error.status not in (404, 409):
                print(f"deleting {namespace}/{name}: {error.status} {error.reason}", file=sys.stderr, flush=True)
                process.api_retry_at = time.monotonic() + API_RETRY_S
                return
        except Exception as error:
            print(f"deleting {namespace}/{name}: {error}", file=sys.stderr, flush=True)
            process.api_retry_at = time.monotonic() + API_RETRY_S
            return
        process.delete_pending = False
        self._forget(process)

    def _event(self, process: PodProcess, reason: str, message: str, *, warning: bool = True) -> None:
        namespace, name = process.key
        stamp = pods.now()
        container = process.pod["spec"]["containers"][0]["name"]
        event = {
            "metadata": {"generateName": f"{name}.", "namespace": namespace},
            "involvedObject": {
                "kind": "Pod",
                "apiVersion": "v1",
                "namespace": namespace,
                "name": name,
                "uid": process.uid,
                "fieldPath": f"spec.containers{{{container}}}",
            },
            "reason": reason,
            "message": message,
            "type": "Warning" if warning else "Normal",
            "source": {"component": COMPONENT, "host": process.pod["spec"].get("nodeName", "")},
            "reportingComponent": COMPONENT,
            "reportingInstance": process.pod["spec"].get("nodeName", ""),
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        with contextlib.suppress(Exception):
            self.core.create_namespaced_event(namespace, event, _request_timeout=10)

    def _write_state(self, process: PodProcess, argv: list[str], working_dir: Path, launch: Launch | None) -> None:
        assert process.proc is not None
        namespace, name = process.key
        path = self.workdir / "pods" / namespace / f"{name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {
            "uid": process.uid,
            "pid": process.proc.pid,
            "pgid": process.proc.pid,
            "log": str(process.log),
            "command": launch.container_argv if launch is not None else argv,
            "image": launch.image if launch is not None else None,
            "container": launch.container if launch is not None else None,
            "rootfs": launch.rootfs if launch is not None else None,
            "workingDir": str(working_dir),
            "node": process.pod["spec"]["nodeName"],
            "restarts": process.restarts,
        }
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(path)

    # --- shutdown ------------------------------------------------------------------------

    def shutdown(self, grace_s: float = 5.0) -> None:
        """Stop every process this runtime started: SIGTERM, then SIGKILL after grace_s."""
        running = [p.proc for p in self.processes.values() if p.proc is not None]
        for proc in running:
            signal_group(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while any(proc.poll() is None for proc in running) and time.monotonic() < deadline:
            time.sleep(0.05)
        for proc in running:
            kill_group(proc.pid, proc)
        for process in self.processes.values():
            self._release(process)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.env.podruntime", description=__doc__)
    parser.add_argument("--kubeconfig", type=Path, required=True)
    parser.add_argument("--workdir", type=Path, required=True, help="logs, per-pod working dirs and state files")
    parser.add_argument("--grace-cap", type=float, default=30.0, help="longest termination grace period honoured (s)")
    parser.add_argument(
        "--node-selector", default=f"{EXECUTE_LABEL}=true", help="label selector of the nodes this runtime executes"
    )
    args = parser.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    (args.workdir / "ready").unlink(missing_ok=True)
    runtime = PodRuntime(args.kubeconfig, args.workdir, grace_cap_s=args.grace_cap, node_selector=args.node_selector)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: runtime.stopping.set())
    print(f"{COMPONENT} pid {os.getpid()} executing pods on nodes {args.node_selector}", file=sys.stderr, flush=True)
    runtime.run()
    (args.workdir / "ready").unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
