"""Bad runtime input ends in Failed with a clear reason, without a retry storm, and the
operator survives it: a missing Secret, an unreachable store, a dataset that does not
exist, and more clusters than the dataset has examples. All four run side by side. The
stage says bad input with exit status 4, so those runs fail after their first attempt.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.env import fleet as fleet_builders
from tests.env.cluster import ControlPlane
from tests.env.process import free_port
from tests.operator.conftest import SECRET, OperatorProcess, apply, phase, pods, run_object

pytestmark = [pytest.mark.cluster, pytest.mark.minio, pytest.mark.e2e]

GRACE = 8


def run(name: str, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "dataset": {"uri": "builtin://digits", "resolution": 8},
        "partition": {"clusters": 4, "features": "pixels", "fineClusters": 8, "sampleSize": 64, "iterations": 3},
        "expert": {"preset": "tiny", "steps": 10, "globalBatchSize": 8},
        "router": {"preset": "tiny", "steps": 10, "globalBatchSize": 8},
        "failurePolicy": {"maxRestarts": 3, "backoffSeconds": 1, "maxBackoffSeconds": 2},
    }
    body.update(spec)
    return {"apiVersion": "atoll.dev/v1alpha1", "kind": "DDMRun", "metadata": {"name": name}, "spec": body}


def three_images(folder: Path) -> Path:
    folder.mkdir(parents=True)
    for index, colour in enumerate(("red", "green", "blue")):
        Image.new("RGB", (8, 8), colour).save(folder / f"{index}.png")
        (folder / f"{index}.txt").write_text(f"a {colour} square")
    return folder


def test_bad_runtime_input_fails_clearly_without_retry_storm(  # noqa: PLR0917 - fixtures
    control_plane: ControlPlane,
    atoll_crds: ControlPlane,
    fleet: fleet_builders.Fleet,
    namespace: str,
    store_secret: str,
    start_operator: Callable[..., OperatorProcess],
    tmp_path: Path,
) -> None:
    dead = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "dead-store"},
        "stringData": {"accessKey": "x", "secretKey": "y", "endpoint": f"127.0.0.1:{free_port()}"},
    }
    apply(control_plane, namespace, dead)
    operator = start_operator(
        "--default-store", store_secret, "--default-store-secret", SECRET, "--store-grace", str(GRACE)
    )
    bucket_root = store_secret
    runs = {
        "missing-secret": run("missing-secret", storage={"uri": bucket_root, "secretRef": "no-such-secret"}),
        "unreachable-store": run("unreachable-store", storage={"uri": bucket_root, "secretRef": "dead-store"}),
        "missing-dataset": run("missing-dataset", dataset={"uri": str(tmp_path / "no-such-dataset"), "resolution": 8}),
        "too-few-examples": run(
            "too-few-examples", dataset={"uri": str(three_images(tmp_path / "three")), "resolution": 8}
        ),
    }
    for manifest in runs.values():
        apply(control_plane, namespace, manifest)

    deadline = time.monotonic() + 600
    objects: dict[str, dict[str, Any]] = {}
    degraded_seen = False
    while time.monotonic() < deadline:
        objects = {name: run_object(control_plane, namespace, name) for name in runs}
        conditions = (objects["unreachable-store"].get("status") or {}).get("conditions") or []
        degraded_seen |= any(c["type"] == "Degraded" and c["status"] == "True" for c in conditions)
        if all(phase(o) == "Failed" for o in objects.values()):
            break
        time.sleep(1)
    statuses = {name: o.get("status") or {} for name, o in objects.items()}
    assert all(s.get("phase") == "Failed" for s in statuses.values()), json.dumps(statuses)[:4000]

    assert statuses["missing-secret"]["reason"] == "SecretNotFound"
    assert "no-such-secret" in statuses["missing-secret"]["message"]
    assert statuses["unreachable-store"]["reason"] == "StoreUnreachable"
    assert degraded_seen, "the run showed Degraded while its store was unreachable"
    for name in ("missing-dataset", "too-few-examples"):
        assert statuses[name]["reason"] == "PartitionFailed"
        assert "bad input (exit 4)" in statuses[name]["message"]
    assert "no-such-dataset" in statuses["missing-dataset"]["message"]
    assert "exceeds the 3 examples" in statuses["too-few-examples"]["message"]
    for status in statuses.values():
        failed = next(c for c in status["conditions"] if c["type"] == "Failed")
        assert failed["status"] == "True"
        assert failed["reason"] == status["reason"]

    # No retry storm: setup failures start no pod; bad input stops after the first attempt.
    time.sleep(5)
    counts = {name: len(pods(control_plane, namespace, name)) for name in runs}
    assert counts == {"missing-secret": 0, "unreachable-store": 0, "missing-dataset": 1, "too-few-examples": 1}
    events = control_plane.kubectl_json("get", "events", "-n", namespace)["items"]
    warned = {e["involvedObject"]["name"] for e in events if e["type"] == "Warning"}
    assert set(runs) <= warned, f"a Warning Event for every failed run, got {sorted(warned)}"
    assert operator.alive
