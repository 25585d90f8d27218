"""The operator in cluster, for real: `helm install` of charts/atoll with the operator image built
from this tree; the pod runtime runs the Deployment's pod from that image (as UID 65532, on a
read-only root, with the chart's ServiceAccount token); a small DDMRun applied with kubectl
Succeeds and is then deleted. The API server enforces OwnerReferencesPermissionEnforcement,
and its audit log shows every request the operator made: none refused, none outside the
chart's RBAC, and no rule of the chart left unused.

The run is applied before `helm install`, so the test also measures the time from `helm
install` to the operator's first reconcile of it, and the operator's peak memory in cluster;
it prints both and, when ATOLL_BENCH_OUT names a file, writes them there as JSON
(`bench/in_cluster.py` runs it that way).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.env import binaries
from tests.env import fleet as fleet_builders
from tests.env.cluster import ControlPlane
from tests.env.process import free_port
from tests.env.runtime_process import PodRuntimeProcess
from tests.operator.conftest import SECRET, apply, phase, wait_run
from tests.operator.test_e2e_run import quickstart_small

# helm install, the operator's start, a whole (small) run and its deletion: longer than the
# suite's 900 s per test on a loaded 2-core machine.
pytestmark = [pytest.mark.cluster, pytest.mark.minio, pytest.mark.e2e, pytest.mark.timeout(1500)]

CHART = Path(__file__).resolve().parents[2] / "charts" / "atoll"
Rule = tuple[str, str, str]
"""(apiGroup, resource[/subresource], verb)."""


def helm(control_plane: ControlPlane, *args: str) -> subprocess.CompletedProcess[str]:
    try:
        path = binaries.binary("helm")
    except binaries.MissingPrerequisiteError as missing:
        if missing.fatal:
            pytest.fail(str(missing), pytrace=False)
        pytest.skip(str(missing))
    command = [str(path), "--kubeconfig", str(control_plane.kubeconfig), *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, f"helm {' '.join(args[:2])}: {result.stderr}"
    return result


def granted(manifest: str, account: str) -> set[Rule]:
    """Every (group, resource, verb) the Roles and ClusterRoles of a rendered release give."""
    rules: set[Rule] = set()
    for document in yaml.safe_load_all(manifest):
        names = (account, f"{account}-leader-election")  # the leader Lease's Role
        if not document or document["kind"] not in ("Role", "ClusterRole") or document["metadata"]["name"] not in names:
            continue
        for rule in document["rules"]:
            for group in rule["apiGroups"]:
                rules |= {(group, resource, verb) for resource in rule["resources"] for verb in rule["verbs"]}
    return rules


def requested(events: list[dict[str, Any]]) -> set[Rule]:
    used: set[Rule] = set()
    for event in events:
        ref = event.get("objectRef") or {}
        if "resource" not in ref:
            continue  # discovery (/api, /apis) is every authenticated user's
        resource = ref["resource"] + (f"/{ref['subresource']}" if ref.get("subresource") else "")
        used.add((ref.get("apiGroup", ""), resource, event["verb"]))
    return used


@pytest.fixture
def release(control_plane: ControlPlane) -> Iterator[tuple[str, str]]:
    """(release name, its namespace); uninstalled and the namespace deleted afterwards."""
    name, namespace = f"e2e-{uuid.uuid4().hex[:6]}", f"atoll-{uuid.uuid4().hex[:6]}"
    yield name, namespace
    helm(control_plane, "uninstall", name, "-n", namespace, "--wait", "--timeout", "120s")
    control_plane.kubectl("delete", "namespace", namespace, "--wait=false")


def test_helm_installed_operator_runs_a_ddmrun_with_only_its_rbac(  # noqa: PLR0917 - fixtures
    operator_image: str,
    atoll_crds: ControlPlane,
    fleet: fleet_builders.Fleet,
    pod_runtime: PodRuntimeProcess,
    namespace: str,
    store_secret: str,
    release: tuple[str, str],
    tmp_path: Path,
) -> None:
    name, system = release
    repository, tag = operator_image.rsplit(":", 1)
    values = {
        "image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},
        "watchNamespaces": [namespace],
        "defaultStore": store_secret,
        "defaultStoreSecret": SECRET,
        "interval": 1,
        "storePoll": 1,
        "healthPort": free_port(),
        "replicas": 1,  # every pod of the test runtime is 127.0.0.1: two replicas would share the port
        "extraArgs": ["--max-gpus-per-pod=1"],
        "agent": {"enabled": False},
        # onto a node the pod runtime executes (a GPU node: its taint tolerated)
        "nodeSelector": {"atoll.dev/execute": "true"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    }
    values_file = tmp_path / "values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    install = ["install", name, str(CHART), "-n", system, "--create-namespace", "--skip-crds", "-f", str(values_file)]
    run = quickstart_small()
    apply(atoll_crds, namespace, run)  # before the operator exists: its first reconcile is timed
    started = time.monotonic()
    helm(atoll_crds, *install)

    def operator_pod() -> str:
        selector = ["-l", "app.kubernetes.io/component=operator"]
        pods = atoll_crds.kubectl_json("get", "pods", "-n", system, *selector)["items"]
        return str(pods[0]["metadata"]["name"]) if pods else ""

    try:
        wait_run(
            atoll_crds, namespace, run["metadata"]["name"], lambda r: phase(r) is not None, timeout=300,
            what="the operator's first reconcile",
        )  # fmt: skip
    except pytest.fail.Exception as error:
        pytest.fail(f"{error}\noperator log:\n{pod_runtime.logs(system, operator_pod())[-3000:]}", pytrace=False)
    first_reconcile = time.monotonic() - started
    deployment = f"deployment/{name}-operator"
    waited = atoll_crds.kubectl(
        "wait", "--for=condition=Available", deployment, "-n", system, "--timeout=240s", check=False, timeout=300
    )
    pod_name = operator_pod()
    assert waited.returncode == 0, f"{waited.stderr}\n{pod_runtime.logs(system, pod_name)[-3000:]}"
    state = pod_runtime.state(system, pod_name)
    assert state is not None
    assert state["image"], "the operator pod must run from its image"
    assert state["command"][:2] == ["atoll", "operator"]
    container = json.loads((Path(state["workingDir"]) / "container.json").read_text())
    assert (container["uid"], container["gid"], container["readOnlyRoot"]) == (65532, 65532, True)

    done = wait_run(
        atoll_crds, namespace, run["metadata"]["name"], lambda r: phase(r) == "Succeeded", timeout=900,
        what="the run Succeeded",
    )  # fmt: skip
    assert done["status"]["modelUri"].startswith(store_secret)
    measured = {
        "operator_image": operator_image,
        "helm_install_to_first_reconcile_s": round(first_reconcile, 1),
        "operator_peak_rss_mib": round(peak_rss(int(state["pid"])) / 2**20, 1),
        "run_wall_s": round(time.monotonic() - started, 1),
    }
    print(f"operator in cluster: {json.dumps(measured)}")
    if out := os.environ.get("ATOLL_BENCH_OUT"):
        Path(out).write_text(json.dumps(measured, indent=2) + "\n")
    atoll_crds.kubectl("delete", "ddmrun", run["metadata"]["name"], "-n", namespace, "--timeout=180s", timeout=240)
    log = pod_runtime.logs(system, pod_name)
    assert "Forbidden" not in log, log[-3000:]

    account = f"system:serviceaccount:{system}:{name}-operator"
    events = atoll_crds.audit_events(account)
    refused = [(e["verb"], e.get("objectRef")) for e in events if e["responseStatus"]["code"] == 403]
    assert not refused, refused
    rules = granted(helm(atoll_crds, "get", "manifest", name, "-n", system).stdout, f"{name}-operator")
    used = requested(events)
    assert used <= rules, f"requests outside the chart's RBAC: {sorted(used - rules)}"
    assert rules == used | NOT_IN_A_CLEAN_RUN, f"granted but never used: {sorted(rules - used - NOT_IN_A_CLEAN_RUN)}"


def peak_rss(pid: int) -> int:
    """VmHWM of the container's process (chroot_exec execs the command: the pod's pid is it), bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM in /proc/{pid}/status")


NOT_IN_A_CLEAN_RUN: set[Rule] = {
    # checked by OwnerReferencesPermissionEnforcement when a DDMExpert or a stage pod names its
    # owner with blockOwnerDeletion: an authorization check, not a request (test_chart_rbac.py)
    ("atoll.dev", "ddmruns/finalizers", "update"),
    ("atoll.dev", "ddmexperts/finalizers", "update"),
    ("atoll.dev", "ddmexperts", "get"),  # create-if-absent finds it AlreadyExists (operator restarted)
    ("", "pods", "get"),  # the pod index lags a pod created a moment ago (launch._confirm_missing)
}
"""Rules the chart grants for paths a clean run does not take (each one says which)."""
