"""Smoke test (b): pods bound to the marked GPU nodes run as local processes through the pod
process runtime: environment from Secrets, ConfigMaps and the downward API, exit codes in
the pod status, restarts, config errors, and the process killed when the pod (or its node)
goes away."""

from __future__ import annotations

import json
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.env import fleet as fleet_builders
from tests.env import kube
from tests.env.fleet import GPU_TAINT, Fleet
from tests.env.process import group_alive
from tests.env.runtime_process import PodRuntimeProcess

pytestmark = pytest.mark.cluster


def pod(name: str, code: str, *, product: str = "Tesla-T4", **spec: Any) -> dict[str, Any]:
    """A pod running `python -c code` on a GPU node of `product` (so the runtime executes it)."""
    container = {"name": "main", "image": "atoll", "command": ["python", "-c", textwrap.dedent(code)]}
    container.update(spec.pop("container", {}))
    return {
        "metadata": {"name": name, "labels": {"app": "smoke"}},
        "spec": {
            "restartPolicy": "Never",
            "nodeSelector": {"nvidia.com/gpu.product": product},
            "tolerations": [{"key": GPU_TAINT["key"], "operator": "Exists", "effect": "NoSchedule"}],
            "containers": [container],
            **spec,
        },
    }


def terminated(pod: dict[str, Any]) -> dict[str, Any]:
    state: dict[str, Any] = kube.container_state(pod)["terminated"]
    return state


def test_marked_pod_succeeds_with_its_environment(
    fleet: Fleet, core_v1: Any, namespace: str, pod_runtime: PodRuntimeProcess
) -> None:
    core_v1.create_namespaced_secret(namespace, {"metadata": {"name": "creds"}, "stringData": {"token": "s3cr3t"}})
    core_v1.create_namespaced_config_map(
        namespace, {"metadata": {"name": "settings"}, "data": {"mode": "fast", "level": "3"}}
    )
    env = [
        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
        {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "mode"}}},
        {"name": "OPTIONAL", "valueFrom": {"secretKeyRef": {"name": "absent", "key": "x", "optional": True}}},
        {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
        {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
        {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
        {"name": "GREETING", "value": "mode=$(MODE)"},
    ]
    code = """
        import json, os, sys
        keys = ("TOKEN", "MODE", "POD", "NS", "UID", "NODE", "APP", "GREETING", "CFG_level", "CFG_mode")
        print(json.dumps({"env": {k: os.environ.get(k) for k in keys}, "argv": sys.argv[1:],
                          "python": sys.executable, "cwd": os.getcwd(),
                          "leaked": "PYTEST_CURRENT_TEST" in os.environ or "OPTIONAL" in os.environ}))
    """
    manifest = pod(
        "env",
        code,
        container={
            "env": env,
            "envFrom": [{"configMapRef": {"name": "settings"}, "prefix": "CFG_"}],
            "args": ["$(POD)", "$$x"],
        },
    )
    created = core_v1.create_namespaced_pod(namespace, manifest)

    done = kube.wait_for_pod(core_v1, namespace, "env")
    assert done["status"]["phase"] == "Succeeded"
    state = terminated(done)
    assert (state["exitCode"], state["reason"]) == (0, "Completed")
    assert done["status"]["podIP"] == "127.0.0.1"
    assert done["status"]["startTime"]
    assert state["finishedAt"]
    report = json.loads(pod_runtime.logs(namespace, "env").strip().splitlines()[-1])
    assert report["env"] == {
        "TOKEN": "s3cr3t", "MODE": "fast", "POD": "env", "NS": namespace, "UID": created.metadata.uid,
        "NODE": done["spec"]["nodeName"], "APP": "smoke", "GREETING": "mode=fast", "CFG_level": "3", "CFG_mode": "fast",
    }  # fmt: skip
    assert report["argv"] == ["env", "$x"]
    assert Path(report["python"]).parent == Path(sys.executable).parent  # the venv's python comes first on PATH
    assert report["leaked"] is False
    assert Path(report["cwd"]).is_relative_to(pod_runtime.workdir)
    assert done["spec"]["nodeName"] in fleet.with_product("Tesla-T4")


def test_failing_pod_reports_its_exit_code(fleet: Fleet, core_v1: Any, namespace: str) -> None:
    code = "import sys; print('computing'); sys.exit('gave up: no data')"
    manifest = pod("fails", code, product="NVIDIA-L4", container={"terminationMessagePolicy": "FallbackToLogsOnError"})
    core_v1.create_namespaced_pod(namespace, manifest)
    core_v1.create_namespaced_pod(namespace, pod("exits-3", "raise SystemExit(3)", product="NVIDIA-L4"))

    failed = kube.wait_for_pod(core_v1, namespace, "fails")
    assert failed["status"]["phase"] == "Failed"
    assert (terminated(failed)["exitCode"], terminated(failed)["reason"]) == (1, "Error")
    assert terminated(failed)["message"].splitlines()[-2:] == ["computing", "gave up: no data"]
    three = kube.wait_for_pod(core_v1, namespace, "exits-3")
    assert (three["status"]["phase"], terminated(three)["exitCode"]) == ("Failed", 3)


def test_deleting_a_running_pod_kills_its_processes(
    fleet: Fleet, core_v1: Any, namespace: str, pod_runtime: PodRuntimeProcess, tmp_path: Path
) -> None:
    child_pid_file = tmp_path / "child.pid"
    code = f"""
        import signal, subprocess, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # ignores SIGTERM: only SIGKILL after the grace period ends it
        child = subprocess.Popen(["sleep", "600"])
        open({str(child_pid_file)!r}, "w").write(str(child.pid))
        print("running", flush=True)
        time.sleep(600)
    """
    core_v1.create_namespaced_pod(namespace, pod("sleeper", code, terminationGracePeriodSeconds=2))
    kube.wait_for_pod(core_v1, namespace, "sleeper", phases={"Running"})
    kube.wait_for(lambda: "running" in pod_runtime.logs(namespace, "sleeper"), timeout=30, what="the pod's output")
    pid = pod_runtime.pod_pid(namespace, "sleeper")
    child = int(child_pid_file.read_text())
    assert pid is not None
    assert group_alive(pid)

    core_v1.delete_namespaced_pod("sleeper", namespace)
    kube.wait_for_pod_gone(core_v1, namespace, "sleeper", timeout=30)
    assert not group_alive(pid)
    assert not Path(f"/proc/{child}").exists() or "Z" in Path(f"/proc/{child}/stat").read_text().split()[2]


def test_missing_secret_key_waits_like_create_container_config_error(
    fleet: Fleet, core_v1: Any, namespace: str
) -> None:
    env = [{"name": "KEY", "valueFrom": {"secretKeyRef": {"name": "late", "key": "key"}}}]
    core_v1.create_namespaced_secret(namespace, {"metadata": {"name": "late"}, "stringData": {"other": "x"}})
    core_v1.create_namespaced_pod(
        namespace, pod("waits", "import os; assert os.environ['KEY'] == 'ok'", container={"env": env})
    )

    def waiting_reason() -> str | None:
        state = kube.container_state(kube.read_pod(core_v1, namespace, "waits") or {})
        return (state.get("waiting") or {}).get("reason")

    kube.wait_for(
        lambda: waiting_reason() == "CreateContainerConfigError", timeout=30, what="CreateContainerConfigError"
    )
    assert (kube.read_pod(core_v1, namespace, "waits") or {})["status"]["phase"] == "Pending"
    warning = kube.wait_for(
        lambda: [e for e in kube.events_for(core_v1, namespace, "waits") if e["type"] == "Warning"],
        timeout=30,
        what="a Warning event",
    )[0]
    assert "couldn't find key key in Secret" in warning["message"]

    core_v1.patch_namespaced_secret("late", namespace, {"stringData": {"key": "ok"}})
    assert kube.wait_for_pod(core_v1, namespace, "waits")["status"]["phase"] == "Succeeded"


def test_on_failure_restarts_until_success(fleet: Fleet, core_v1: Any, namespace: str) -> None:
    code = """
        import pathlib, sys
        runs = pathlib.Path("runs")  # the pod's working dir survives restarts
        n = int(runs.read_text()) if runs.exists() else 0
        runs.write_text(str(n + 1))
        sys.exit(0 if n >= 2 else 1)
    """
    core_v1.create_namespaced_pod(namespace, pod("flaky", code, restartPolicy="OnFailure"))
    done = kube.wait_for_pod(core_v1, namespace, "flaky", phases={"Succeeded"}, timeout=60)
    status = done["status"]["containerStatuses"][0]
    assert status["restartCount"] == 2
    assert status["lastState"]["terminated"]["exitCode"] == 1


def scratch_node(core_v1: Any, labels: dict[str, str]) -> str:
    """A one-node GPU pool of its own (so a test may delete it), Ready once a runtime heartbeats it."""
    pool = fleet_builders.Pool(
        f"scratch-{uuid.uuid4().hex[:8]}", 1, fleet_builders.T4, 1, cpu=4, memory_gib=16, execute=False
    )
    node = fleet_builders.node(pool, 0)
    del node["metadata"]["annotations"]["kwok.x-k8s.io/node"]  # nobody but a pod runtime may run it
    node["metadata"]["labels"].pop("type", None)
    node["metadata"]["labels"].update(labels)
    fleet_builders.apply(core_v1, [node])
    return str(node["metadata"]["name"])


def bound_pod(name: str, node: str) -> dict[str, Any]:
    manifest = pod(name, "import time; print('up', flush=True); time.sleep(600)", nodeName=node)
    del manifest["spec"]["nodeSelector"]
    return manifest


def test_node_deleted_kills_its_pod_processes(
    fleet: Fleet, core_v1: Any, namespace: str, pod_runtime: PodRuntimeProcess
) -> None:
    node = scratch_node(core_v1, {"atoll.dev/execute": "true"})
    try:
        kube.wait_nodes_ready(core_v1, [node], timeout=30)
        core_v1.create_namespaced_pod(namespace, bound_pod("on-scratch", node))
        kube.wait_for_pod(core_v1, namespace, "on-scratch", phases={"Running"})
        pid = pod_runtime.pod_pid(namespace, "on-scratch")
        assert pid is not None
        assert group_alive(pid)
    finally:
        core_v1.delete_node(node)
    kube.wait_for(lambda: not group_alive(pid), timeout=30, what=f"process {pid} killed with its node")
    core_v1.delete_namespaced_pod("on-scratch", namespace, grace_period_seconds=0)


def test_runtime_shutdown_leaves_no_process(control_plane: Any, core_v1: Any, namespace: str, tmp_path: Path) -> None:
    selector = f"atoll.dev/execute-scratch={uuid.uuid4().hex[:8]}"
    node = scratch_node(core_v1, dict([selector.split("=")]))
    runtime = PodRuntimeProcess(control_plane.kubeconfig, tmp_path / "runtime", node_selector=selector)
    runtime.start()
    try:
        kube.wait_nodes_ready(core_v1, [node], timeout=30)
        core_v1.create_namespaced_pod(namespace, bound_pod("orphan-candidate", node))
        kube.wait_for_pod(core_v1, namespace, "orphan-candidate", phases={"Running"})
        pid = runtime.pod_pid(namespace, "orphan-candidate")
        assert pid is not None
        assert group_alive(pid)
    finally:
        runtime.stop()
        core_v1.delete_node(node)
    assert not group_alive(pid)
    core_v1.delete_namespaced_pod("orphan-candidate", namespace, grace_period_seconds=0)
