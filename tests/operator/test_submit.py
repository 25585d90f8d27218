"""`atoll run FILE` (apply to the current kube-context) and `atoll status RUN` against the real API server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from tests.env.cluster import ControlPlane
from tests.operator.conftest import run_object

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "manifests" / "examples" / "quickstart.yaml"


def atoll(*args: str, kubeconfig: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
    return subprocess.run(
        [sys.executable, "-m", "atoll", *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def test_run_applies_the_manifest_and_status_reads_it(atoll_crds: ControlPlane, namespace: str, tmp_path: Path) -> None:
    kubeconfig = atoll_crds.kubeconfig
    created = atoll("run", str(QUICKSTART), "-n", namespace, kubeconfig=kubeconfig)
    assert created.returncode == 0, created.stderr
    assert f"ddmrun.atoll.dev/digits-quickstart created in namespace {namespace}" in created.stdout
    stored = run_object(atoll_crds, namespace, "digits-quickstart")
    assert stored["spec"]["expert"]["steps"] == yaml.safe_load(QUICKSTART.read_text())["spec"]["expert"]["steps"]
    # the API server filled the CRD defaults the file leaves out
    assert stored["spec"]["storage"]["reclaimPolicy"] == "Retain"

    again = atoll("run", str(QUICKSTART), "-n", namespace, kubeconfig=kubeconfig)
    assert again.returncode == 0, again.stderr
    assert "unchanged" in again.stdout

    document = yaml.safe_load(QUICKSTART.read_text())
    document["spec"]["failurePolicy"]["maxRestarts"] = 5
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(document))
    configured = atoll("run", str(changed), "-n", namespace, kubeconfig=kubeconfig)
    assert configured.returncode == 0, configured.stderr
    assert "configured" in configured.stdout
    assert run_object(atoll_crds, namespace, "digits-quickstart")["spec"]["failurePolicy"]["maxRestarts"] == 5

    # what the experts train on cannot change under a running run: the API server says which field
    document["spec"]["expert"]["steps"] = 20
    changed.write_text(yaml.safe_dump(document))
    refused = atoll("run", str(changed), "-n", namespace, kubeconfig=kubeconfig)
    assert refused.returncode == 1
    assert "spec.expert" in refused.stderr
    assert "immutable" in refused.stderr
    assert "Traceback" not in refused.stderr

    status = atoll("status", "digits-quickstart", "-n", namespace, kubeconfig=kubeconfig)
    assert status.returncode == 0, status.stderr
    assert f"{namespace}/digits-quickstart" in status.stdout
    assert "phase Pending" in status.stdout


def test_bad_input_is_refused_before_and_by_the_api_server(
    atoll_crds: ControlPlane, namespace: str, tmp_path: Path
) -> None:
    document = yaml.safe_load(QUICKSTART.read_text())
    document["spec"]["expert"]["learningRate"] = -1
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(document))
    refused = atoll("run", str(bad), "-n", namespace, kubeconfig=atoll_crds.kubeconfig)
    assert refused.returncode == 1
    assert "spec.expert.learningRate" in refused.stderr
    assert "Traceback" not in refused.stderr

    missing = atoll("status", "no-such-run", "-n", namespace, kubeconfig=atoll_crds.kubeconfig)
    assert missing.returncode == 1
    assert f"no DDMRun 'no-such-run' in namespace '{namespace}'" in missing.stderr

    local_only = atoll("run", str(QUICKSTART), "--jobs", "2", "-n", namespace, kubeconfig=atoll_crds.kubeconfig)
    assert local_only.returncode == 1
    assert "--jobs applies to --local runs only" in local_only.stderr
