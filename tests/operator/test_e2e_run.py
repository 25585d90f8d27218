"""The quickstart through the real operator, with faults on the way: every stage runs as a
pod that really trains (tiny presets) on the kwok GPU fleet, the store is the real MinIO.

One run carries every fault (an honest combination: they hit different parts): the
operator SIGKILLed and restarted, an expert's pod deleted while the operator is down,
the node of the other expert deleted, and MinIO down for 30 s. The run must still
succeed, with no duplicate pods, the deleted expert resuming from its checkpoint, and a
model in MinIO that loads and samples.
"""

from __future__ import annotations

import copy
import json
import re
import signal
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.env import fleet as fleet_builders
from tests.env.cluster import ControlPlane
from tests.env.minio import MinioServer
from tests.env.process import signal_group
from tests.env.runtime_process import PodRuntimeProcess
from tests.operator.conftest import SECRET, OperatorProcess, apply, condition, phase, pods, wait_run

pytestmark = [pytest.mark.cluster, pytest.mark.minio, pytest.mark.e2e]

QUICKSTART = Path(__file__).resolve().parents[2] / "manifests" / "examples" / "quickstart.yaml"
EVERY = 10
STEPS = 200
"""Enough steps after the first checkpoint that the test's polls see expert 0 checkpointed while
expert 1 still trains: with 60, a run on a quiet machine trained both experts to the end (in
about 15 s, start-up included) without a poll seeing that state."""


def quickstart_small() -> dict[str, Any]:
    """manifests/examples/quickstart.yaml, scaled down to what 2 shared CPU cores train in a minute.

    Same data, presets and pipeline; K=2, resolution 8, fewer steps and samples.
    """
    run: dict[str, Any] = next(d for d in yaml.safe_load_all(QUICKSTART.read_text()) if d and d["kind"] == "DDMRun")
    run = copy.deepcopy(run)
    assert "storage" not in run["spec"] or not run["spec"]["storage"].get("uri"), (
        "the quickstart uses the default store"
    )
    spec = run["spec"]
    spec["dataset"].update(resolution=8, maxExamples=240)
    spec["partition"].update(clusters=2, fineClusters=16, sampleSize=240, iterations=5)
    spec["expert"].update(
        preset="tiny", steps=STEPS, globalBatchSize=16, checkpointEvery=EVERY, keepCheckpoints={"last": 10}
    )
    spec["router"].update(preset="tiny", steps=20, globalBatchSize=16, checkpointEvery=EVERY)
    spec["sampling"].update(steps=4)
    spec.setdefault("evaluation", {}).update(samples=8, strategies=["top-1", "top-2"])
    spec["failurePolicy"] = {"maxRestarts": 3, "backoffSeconds": 1, "maxBackoffSeconds": 4}
    return run


def _experts(control_plane: ControlPlane, namespace: str) -> dict[int, dict[str, Any]]:
    items = control_plane.kubectl_json("get", "ddmexperts", "-n", namespace)["items"]
    return {item["spec"]["expert"]: item for item in items}


def _active(pod: dict[str, Any]) -> bool:
    return pod["metadata"].get("deletionTimestamp") is None and pod["status"].get("phase") in (
        None,
        "Pending",
        "Running",
    )


def test_quickstart_survives_faults_and_yields_a_model(  # noqa: PLR0917 - fixtures
    control_plane: ControlPlane,
    atoll_crds: ControlPlane,
    fleet: fleet_builders.Fleet,
    pod_runtime: PodRuntimeProcess,
    minio: MinioServer,
    namespace: str,
    store_secret: str,
    start_operator: Callable[..., OperatorProcess],
    tmp_path: Path,
) -> None:
    run = quickstart_small()
    name = run["metadata"]["name"]
    operator = start_operator(
        "--default-store", store_secret, "--default-store-secret", SECRET, "--max-gpus-per-pod", "1"
    )
    apply(control_plane, namespace, run)
    seen_attempts: dict[str, set[int]] = {}

    def no_duplicates() -> None:
        """At every look: at most one live pod per stage, attempts numbered without gaps."""
        live = Counter()
        for pod in pods(control_plane, namespace, name):
            labels = pod["metadata"]["labels"]
            stage = labels["atoll.dev/stage"] + labels.get("atoll.dev/expert", "")
            seen_attempts.setdefault(stage, set()).add(int(labels["atoll.dev/attempt"]))
            live[stage] += _active(pod)
        assert all(count <= 1 for count in live.values()), f"duplicate live pods: {live}"

    # --- training, with a first checkpoint of expert 0 -----------------------------------
    def expert0_checkpointed(_: dict[str, Any]) -> bool:
        experts = _experts(control_plane, namespace)
        checkpoint = (experts.get(0, {}).get("status") or {}).get("lastCheckpoint") or {}
        running = (experts.get(1, {}).get("status") or {}).get("phase") == "Running"
        return checkpoint.get("step", 0) >= EVERY and running

    wait_run(control_plane, namespace, name, expert0_checkpointed, timeout=420, what="expert 0's first checkpoint",
             during=no_duplicates)  # fmt: skip

    # Both experts' processes are frozen right here (SIGSTOP), so neither can finish its few
    # steps before its fault hits it, however fast the machine: expert 1's node stops making
    # progress before it disappears, as a lost node does.
    experts = _experts(control_plane, namespace)
    pod0, pod1 = experts[0]["status"]["pod"], experts[1]["status"]["pod"]
    frozen = {pod: _freeze(pod_runtime, namespace, pod) for pod in (pod0, pod1)}

    # --- fault 1: the operator dies; meanwhile expert 0's pod is deleted -------------------
    operator.kill()
    control_plane.kubectl("delete", "pod", pod0, "-n", namespace, "--wait=false")
    signal_group(frozen[pod0], signal.SIGCONT)  # it gets its SIGTERM like any deleted pod
    control_plane.kubectl("wait", "--for=delete", f"pod/{pod0}", "-n", namespace, "--timeout=60s")
    committed = _committed_steps(minio, store_secret, namespace, name, 0)
    operator.start()

    # --- fault 2: the node under expert 1 disappears --------------------------------------
    node1 = experts[1]["status"]["node"]
    node_manifest = next(n for n in fleet.nodes if n["metadata"]["name"] == node1)
    control_plane.kubectl("delete", "node", node1, "--wait=false")
    try:

        def both_moved_on(_: dict[str, Any]) -> bool:
            statuses = {k: e.get("status") or {} for k, e in _experts(control_plane, namespace).items()}
            return all(
                s.get("attempt", 0) >= 2 and s.get("phase") in ("Running", "Succeeded") for s in statuses.values()
            )

        wait_run(control_plane, namespace, name, both_moved_on, timeout=240, what="both experts on attempt 2",
                 during=no_duplicates)  # fmt: skip
    finally:
        fleet_builders.apply(_core(control_plane), [node_manifest])
    moved = _experts(control_plane, namespace)[1]["status"]
    assert moved["node"] != node1, "expert 1 must run elsewhere than on its deleted node"

    # --- fault 3: MinIO unreachable for 30 s → Degraded, then recovered -------------------
    minio.stop()
    outage = time.monotonic()
    try:
        degraded = wait_run(control_plane, namespace, name, lambda r: condition(r, "Degraded").get("status") == "True",
                            timeout=30, what="Degraded while MinIO is down")  # fmt: skip
        assert condition(degraded, "Degraded")["reason"] == "StoreUnavailable"
        time.sleep(max(0.0, 30 - (time.monotonic() - outage)))
    finally:
        minio.start()
    wait_run(control_plane, namespace, name, lambda r: condition(r, "Degraded").get("status") == "False",
             timeout=60, what="Degraded cleared after MinIO came back")  # fmt: skip

    # --- the run completes ----------------------------------------------------------------
    done = wait_run(control_plane, namespace, name, lambda r: phase(r) == "Succeeded", timeout=900,
                    what="Succeeded", during=no_duplicates)  # fmt: skip
    no_duplicates()
    for stage, attempts in seen_attempts.items():
        assert attempts == set(range(1, max(attempts) + 1)), f"{stage}: attempts {sorted(attempts)}"
    assert max(seen_attempts["expert0"]) == 2
    assert max(seen_attempts["expert1"]) == 2

    # Expert 0 resumed from the checkpoint it had when its pod died: at most one interval lost.
    resumed = _resumed_step(pod_runtime, namespace, f"{name}-expert-0-a2")
    assert resumed == max(committed), f"resumed from {resumed}, committed were {committed}"

    status = done["status"]
    assert status["modelUri"] == f"{store_secret}/{namespace}/{name}/model"
    assert (status["experts"], status["progress"]) == ("2/2", "100%")
    _check_columns(control_plane, namespace, name)
    _check_events(control_plane, namespace, name)
    _check_no_secret_leaks(control_plane, namespace, name, minio, operator)
    _check_model_samples(minio, store_secret, namespace, name, tmp_path)


def _freeze(pod_runtime: PodRuntimeProcess, namespace: str, pod: str) -> int:
    """SIGSTOP the process group of a running pod; returns its pgid."""
    pgid = pod_runtime.pod_pid(namespace, pod)
    assert pgid is not None, f"{pod} has a process"
    signal_group(pgid, signal.SIGSTOP)
    return pgid


def _core(control_plane: ControlPlane) -> Any:
    from kubernetes import client

    return client.CoreV1Api(control_plane.api_client())


def _run_store(minio: MinioServer, root: str, namespace: str, name: str) -> Any:
    from atoll.store.s3 import S3Store

    return S3Store.from_uri(f"{root}/{namespace}/{name}", env=minio.env())


def _committed_steps(minio: MinioServer, root: str, namespace: str, name: str, expert: int) -> list[int]:
    from atoll import layout
    from atoll.store.checkpoint import CheckpointStore

    store = _run_store(minio, root, namespace, name)
    steps = [c.step for c in CheckpointStore(store, layout.expert(expert), read_only=True).list()]
    assert steps, "expert 0 had committed a checkpoint"
    return steps


def _resumed_step(pod_runtime: PodRuntimeProcess, namespace: str, pod: str) -> int:
    for line in pod_runtime.logs(namespace, pod).splitlines():
        if line.startswith("{") and '"resumed"' in line:
            event = json.loads(line)
            if event.get("event") == "resumed":
                return int(event["step"])
    pytest.fail(f"{pod} did not resume from a checkpoint:\n{pod_runtime.logs(namespace, pod)[-2000:]}")


def _check_columns(control_plane: ControlPlane, namespace: str, name: str) -> None:
    """`kubectl get ddm / ddmx` print the printer columns with real values."""
    table = control_plane.kubectl("get", "ddm", name, "-n", namespace).stdout.split("\n")
    header, row = table[0].split(), table[1].split()
    assert header == ["NAME", "PHASE", "EXPERTS", "PROGRESS", "AGE"]
    assert row[:4] == [name, "Succeeded", "2/2", "100%"]
    wide = control_plane.kubectl("get", "ddm", name, "-n", namespace, "-o", "wide").stdout.split("\n")
    starts = [m.start() for m in re.finditer(r"\S+", wide[0])]  # an empty cell leaves a gap: cut by the header
    cells = {wide[0][a:b].strip(): wide[1][a:b].strip() for a, b in zip(starts, [*starts[1:], None], strict=True)}
    assert float(cells["GPU-HOURS"]) > 0  # the last plan's; the fleet has no prices: no cost
    assert cells["COST"] == ""
    table = [line.split() for line in control_plane.kubectl("get", "ddmx", "-n", namespace).stdout.strip().split("\n")]
    assert table[0] == [
        "NAME", "RUN", "CLUSTER", "EXAMPLES", "PHASE", "ISLAND", "NODE", "GPU", "STEP", "LOSS", "CHECKPOINT",
        "RESTARTS", "AGE",
    ]  # fmt: skip
    products = {p.product for p in fleet_builders.PRODUCTS}
    for row in table[1:]:
        cells = dict(zip(table[0], row, strict=True))
        assert cells["RUN"] == name
        assert cells["ISLAND"] == "home"
        assert int(cells["EXAMPLES"]) > 0
        assert cells["PHASE"] == "Succeeded"
        assert cells["GPU"] in products
        assert int(cells["STEP"]) == STEPS
        assert 0 < float(cells["LOSS"]) < 10
        assert int(cells["CHECKPOINT"]) == STEPS
        assert int(cells["RESTARTS"]) == 1


def _check_events(control_plane: ControlPlane, namespace: str, name: str) -> None:
    events = control_plane.kubectl_json("get", "events", "-n", namespace)["items"]
    on_run = {e["reason"] for e in events if e["involvedObject"]["name"] == name}
    for phase_name in (
        "Partitioning",
        "Training",
        "Assembling",
        "Evaluating",
        "Succeeded",
        "StoreUnavailable",
        "Recovered",
    ):
        assert phase_name in on_run, f"no {phase_name} event on the run: {sorted(on_run)}"
    on_experts = {e["reason"] for e in events if e["involvedObject"]["kind"] == "DDMExpert"}
    assert {"AttemptStarted", "Succeeded"} <= on_experts, sorted(on_experts)
    assert "Running" not in on_experts, "an expert's pod running is told by its status, not by an Event"


def _check_no_secret_leaks(
    control_plane: ControlPlane, namespace: str, name: str, minio: MinioServer, operator: OperatorProcess
) -> None:
    """The store's secret key appears in no status, event, pod manifest or operator log line."""
    texts = [
        control_plane.kubectl("get", "ddm,ddmx,pods,events", "-n", namespace, "-o", "json").stdout,
        operator.output(),
    ]
    for text in texts:
        assert minio.secret_key not in text
    secret_refs = [
        env["valueFrom"]["secretKeyRef"]["name"]
        for pod in pods(control_plane, namespace, name)
        for env in pod["spec"]["containers"][0]["env"]
        if env["name"].startswith("MINIO_")
    ]
    assert secret_refs
    assert set(secret_refs) == {SECRET}


def _check_model_samples(minio: MinioServer, root: str, namespace: str, name: str, tmp_path: Path) -> None:
    """The assembled model in MinIO loads with DDMPipeline and samples an image."""
    from atoll.trainer.pipeline import DDMPipeline
    from atoll.trainer.stages.assemble import open_model

    store = _run_store(minio, root, namespace, name)
    with open_model(store) as directory:
        pipeline = DDMPipeline.from_pretrained(directory)
    assert pipeline.num_experts == 2
    output = pipeline("a handwritten 3", strategy="top-2", num_inference_steps=4, generator=0)
    image = output.images[0]
    image.save(tmp_path / "sample.png")
    assert image.size == (8, 8)
