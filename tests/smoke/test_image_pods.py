"""Smoke test (c): a pod whose image is in Atoll's local container storage runs from that
image — its ENTRYPOINT, its user, a read-only root, emptyDirs, env from values, the downward
API and Secrets, and the ServiceAccount token from the TokenRequest API that really
authenticates against the test API server. A pod whose image is not there runs on the host."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from images.engine import local_buildah, stored
from tests.env import kube
from tests.env.containers import SERVICE_ACCOUNT_DIR
from tests.env.fleet import GPU_TAINT, Fleet
from tests.env.runtime_process import PodRuntimeProcess

pytestmark = pytest.mark.cluster

PROBE = """
import json, os, ssl, sys, urllib.request
sa = os.environ["SA_DIR"]
def writable(path):
    try:
        open(os.path.join(path, "probe"), "w").write("x")
        return True
    except OSError as error:
        return error.strerror
token = open(os.path.join(sa, "token")).read()
context = ssl.create_default_context(cafile=os.path.join(sa, "ca.crt"))
host, port = os.environ["KUBERNETES_SERVICE_HOST"], os.environ["KUBERNETES_SERVICE_PORT"]
review = urllib.request.Request(
    f"https://{host}:{port}/apis/authentication.k8s.io/v1/selfsubjectreviews", method="POST",
    data=json.dumps({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}).encode(),
    headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
)
user = json.load(urllib.request.urlopen(review, context=context, timeout=30))["status"]["userInfo"]
print(json.dumps({
    "ids": [os.getuid(), os.getgid(), sorted(os.getgroups())],
    "cwd": os.getcwd(), "python": sys.executable, "argv": sys.argv[1:],
    "env": {k: os.environ.get(k) for k in ("GREETING", "POD", "NS", "CPUS", "TOKEN", "HOME", "HOSTNAME")},
    "root": writable("/"), "tmp": writable("/tmp"), "shm": writable("/dev/shm"),
    "namespace": open(os.path.join(sa, "namespace")).read(), "user": user["username"],
    "host": os.path.exists("/work") or os.path.exists(os.path.expanduser("~root/.cache")),
}))
"""


def image_pod(name: str, image: str, **container: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-L4"},
            "tolerations": [{"key": GPU_TAINT["key"], "operator": "Exists", "effect": "NoSchedule"}],
            "containers": [{"name": "main", "image": image, **container}],
        },
    }


def working_containers() -> list[str]:
    engine = local_buildah()
    assert engine is not None
    return [str(name) for row in stored(engine, "containers") for name in row.get("names") or []]


def test_a_pod_runs_its_images_entrypoint(
    fleet: Fleet, core_v1: Any, namespace: str, pod_runtime: PodRuntimeProcess, operator_image: str
) -> None:
    core_v1.create_namespaced_pod(namespace, image_pod("version", operator_image, args=["--version"]))
    done = kube.wait_for_pod(core_v1, namespace, "version", timeout=120)
    assert done["status"]["phase"] == "Succeeded", pod_runtime.logs(namespace, "version")
    assert pod_runtime.logs(namespace, "version").strip() == "atoll 0.1.0"
    state = pod_runtime.state(namespace, "version")
    assert state is not None
    assert state["command"] == ["atoll", "--version"]  # the image's ENTRYPOINT, args in place of its CMD
    assert state["image"]
    assert state["container"] not in working_containers()  # removed when the container ended


def test_an_image_pod_gets_its_user_volumes_env_and_service_account(
    fleet: Fleet, core_v1: Any, namespace: str, pod_runtime: PodRuntimeProcess, operator_image: str
) -> None:
    core_v1.create_namespaced_secret(namespace, {"metadata": {"name": "creds"}, "stringData": {"token": "s3cr3t"}})
    env = [
        {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "GREETING", "value": "hello from $(POD)"},
        {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "CPUS", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu", "divisor": "1"}}},
        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
        {"name": "SA_DIR", "value": SERVICE_ACCOUNT_DIR},
    ]
    manifest = image_pod(
        "probe",
        operator_image,
        command=["python", "-c", textwrap.dedent(PROBE)],
        args=["$(POD)"],
        env=env,
        resources={"limits": {"cpu": "2", "memory": "256Mi"}},
        securityContext={"readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False},
        volumeMounts=[{"name": "tmp", "mountPath": "/tmp"}, {"name": "shm", "mountPath": "/dev/shm"}],
    )
    manifest["spec"]["securityContext"] = {"runAsUser": 1234, "runAsGroup": 2345, "fsGroup": 3456}
    manifest["spec"]["volumes"] = [
        {"name": "tmp", "emptyDir": {}},
        {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}},
    ]
    core_v1.create_namespaced_pod(namespace, manifest)
    done = kube.wait_for_pod(core_v1, namespace, "probe", timeout=120)
    log = pod_runtime.logs(namespace, "probe")
    assert done["status"]["phase"] == "Succeeded", log
    report = json.loads(log.strip().splitlines()[-1])
    assert report["ids"] == [1234, 2345, [3456]]  # runAsUser, runAsGroup, fsGroup
    assert report["python"] == "/opt/atoll/bin/python"  # the image's interpreter, not the host's
    assert report["host"] is False  # nothing of the host's file system is visible
    assert report["argv"] == ["probe"]
    assert report["env"] == {
        "GREETING": "hello from probe", "POD": "probe", "NS": namespace, "CPUS": "2", "TOKEN": "s3cr3t",
        "HOME": "/tmp", "HOSTNAME": "probe",
    }  # fmt: skip
    assert report["cwd"] == "/tmp"  # the image's WORKDIR
    assert report["root"] == "Read-only file system"
    assert report["tmp"] is True
    assert report["shm"] is True
    # the projected ServiceAccount token (TokenRequest API), ca.crt and namespace: a real identity
    assert report["namespace"] == namespace
    assert report["user"] == f"system:serviceaccount:{namespace}:default"


def test_a_pod_whose_image_is_not_built_runs_on_the_host(
    fleet: Fleet, core_v1: Any, namespace: str, pod_runtime: PodRuntimeProcess, operator_image: str
) -> None:
    code = "import sys; print(sys.executable)"
    core_v1.create_namespaced_pod(
        namespace, image_pod("host", "localhost/atoll-not-built:0", command=["python", "-c", code])
    )
    done = kube.wait_for_pod(core_v1, namespace, "host", timeout=60)
    assert done["status"]["phase"] == "Succeeded"
    assert Path(pod_runtime.logs(namespace, "host").strip()).parent == Path(sys.executable).parent
    state = pod_runtime.state(namespace, "host")
    assert state is not None
    assert state["image"] is None


def test_run_as_non_root_refuses_an_image_that_runs_as_root(
    fleet: Fleet, core_v1: Any, namespace: str, operator_image: str
) -> None:
    manifest = image_pod("root", operator_image, args=["--version"], securityContext={"runAsUser": 0})
    manifest["spec"]["securityContext"] = {"runAsNonRoot": True}
    core_v1.create_namespaced_pod(namespace, manifest)

    def waiting() -> dict[str, Any] | None:
        state = kube.container_state(kube.read_pod(core_v1, namespace, "root") or {})
        return state.get("waiting")

    reason = kube.wait_for(waiting, timeout=60, what="the container waiting")
    assert reason["reason"] == "CreateContainerConfigError"
    assert "runAsNonRoot" in reason["message"]
