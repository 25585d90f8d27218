"""Recorded situations of a run, as plain data: the observations one tick of the operator
decides from (the run's body, its pods, DDMExperts, the nodes, the GPUs in use, the store
snapshot, the clock), built from the same raw API bodies the kopf indexes hold.

A run `r` in namespace `ns` (uid `run-uid`), K=2 tiny experts, on a fleet of one H100
node (8 GPUs), one A100 node (8) and one T4 node (4).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from atoll.api.spec import API_GROUP_VERSION
from atoll.api.status import DDMExpertStatus, DDMRunStatus
from atoll.operator.reconcile import Decision, Observation, RunMemory, decide
from atoll.operator.reconcile.actions import PatchExpertStatus
from atoll.operator.reconcile.observation import RunObject, StoreProblem, StoreSnapshot
from atoll.operator.settings import OperatorSettings
from atoll.operator.views import ExpertView, NodeView, PodView
from atoll.progress import CheckpointRef, StageProgress
from atoll.stages import StageJob

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
RUN, NAMESPACE, UID = "r", "ns", "run-uid"
ROOT = f"s3://atoll/runs/{NAMESPACE}/{RUN}"
SETTINGS = OperatorSettings(move_check_seconds=60.0, store_grace_seconds=60.0)

SPEC: dict[str, Any] = {
    "dataset": {"uri": "builtin://digits", "resolution": 8},
    "partition": {"clusters": 2, "features": "pixels"},
    "expert": {"preset": "tiny", "steps": 100, "globalBatchSize": 16, "checkpointEvery": 10},
    "router": {"preset": "tiny", "steps": 50, "globalBatchSize": 16},
    "storage": {"uri": "s3://atoll/runs", "secretRef": "minio"},
    "placement": {"gpu": {"maxPerExpert": 1}},
    "failurePolicy": {"maxRestarts": 2, "backoffSeconds": 10, "maxBackoffSeconds": 60},
}


def gpu_node(name: str, product: str, memory_mib: int, gpus: int, **fields: Any) -> NodeView:
    labels = {"nvidia.com/gpu.product": product, "nvidia.com/gpu.memory": str(memory_mib)}
    return NodeView(name=name, labels=labels, gpus=gpus, **fields)


FLEET = (
    gpu_node("h100-0", "NVIDIA-H100-80GB-HBM3", 81559, 8),
    gpu_node("a100-0", "NVIDIA-A100-SXM4-40GB", 40960, 8),
    gpu_node("t4-0", "Tesla-T4", 15360, 4),
)


def run_body(
    status: Mapping[str, Any] | None = None, *, uid: str = UID, deleting: bool = False, **spec: Any
) -> RunObject:
    """The DDMRun as the API server holds it."""
    body = {
        "apiVersion": API_GROUP_VERSION,
        "kind": "DDMRun",
        "metadata": {"name": RUN, "namespace": NAMESPACE, "uid": uid, "generation": 1},
        "spec": {**copy.deepcopy(SPEC), **spec},
        "status": dict(status or {}),
    }
    if deleting:
        body["metadata"]["deletionTimestamp"] = "2026-03-01T12:00:00Z"
    return RunObject.from_body(body)


def expert_uid(k: int, run_uid: str = UID) -> str:
    return f"{run_uid}-x{k}"


def expert(k: int, status: Mapping[str, Any] | None = None, *, run_uid: str = UID) -> ExpertView:
    """DDMExpert k as its watch delivers it."""
    view = ExpertView.from_body(
        {
            "metadata": {
                "name": f"{RUN}-expert-{k}",
                "namespace": NAMESPACE,
                "uid": expert_uid(k, run_uid),
                "ownerReferences": [{"uid": run_uid, "controller": True, "kind": "DDMRun", "name": RUN}],
            },
            "spec": {"run": RUN, "expert": k, "examples": 100 + k, "steps": 100, "preset": "tiny"},
            "status": dict(status or {}),
        }
    )
    assert view is not None
    return view


def pod(*args: Any, **fields: Any) -> PodView:
    """A stage pod as the watch delivers it (the runtime's container status included); the
    arguments of `pod_body`."""
    view = PodView.from_body(pod_body(*args, **fields))
    assert view is not None
    return view


def pod_body(
    stage: str,
    attempt: int,
    phase: str = "Running",
    *,
    expert_index: int | None = None,
    node: str | None = "a100-0",
    exit_code: int | None = None,
    message: str | None = None,
    gpus: int = 1,
    deleting: bool = False,
    run_uid: str = UID,
    finished_at: str = "2026-03-01T11:59:00Z",
    created_at: str = "2026-03-01T11:50:00Z",
    planned_node: str | None = None,
    planned_pool: str | None = None,
    unschedulable: str | None = None,
    started_at: str | None = None,
) -> dict[str, Any]:
    """The pod's body as the API server gives it (`started_at`: its container's start, in the
    running or terminated state)."""
    job = StageJob(stage, expert_index)  # type: ignore[arg-type]
    labels = {"atoll.dev/run": RUN, "atoll.dev/stage": stage, "atoll.dev/attempt": str(attempt)}
    if expert_index is not None:
        labels["atoll.dev/expert"] = str(expert_index)
    owner = expert_uid(expert_index, run_uid) if expert_index is not None else run_uid
    status: dict[str, Any] = {"phase": phase}
    if exit_code is not None:
        terminated = {"exitCode": exit_code, "reason": "Error" if exit_code else "Completed", "finishedAt": finished_at}
        if message:
            terminated["message"] = message
        if started_at is not None:
            terminated["startedAt"] = started_at
        status["containerStatuses"] = [{"state": {"terminated": terminated}}]
    elif started_at is not None:
        status["containerStatuses"] = [{"state": {"running": {"startedAt": started_at}}}]
    if unschedulable is not None:
        scheduled = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": unschedulable}
        status["conditions"] = [scheduled]
    metadata: dict[str, Any] = {
        "name": f"{RUN}-{job.slug}-a{attempt}",
        "namespace": NAMESPACE,
        "labels": labels,
        "annotations": {"atoll.dev/gpu-product": "NVIDIA-A100-SXM4-40GB"},
        "ownerReferences": [{"uid": owner, "controller": True}],
        "creationTimestamp": created_at,
    }
    if planned_node is not None:
        metadata["annotations"]["atoll.dev/planned-node"] = planned_node
    if planned_pool is not None:
        metadata["annotations"]["atoll.dev/planned-pool"] = planned_pool
    if deleting:
        metadata["deletionTimestamp"] = "2026-03-01T12:00:00Z"
    spec: dict[str, Any] = {"containers": [{"name": "stage", "resources": {"limits": {"nvidia.com/gpu": str(gpus)}}}]}
    if node is not None:
        spec["nodeName"] = node
    return {"metadata": metadata, "spec": spec, "status": status}


def heartbeat(
    stage: str, attempt: int, state: str = "running", *, expert_index: int | None = None, **fields: Any
) -> StageProgress:
    return StageProgress(
        stage=stage,
        expert=expert_index,
        attempt=attempt,
        state=state,
        updated_at=T0,
        started_at=T0,
        **fields,  # type: ignore[arg-type]
    )


def checkpoint_ref(step: int) -> CheckpointRef:
    return CheckpointRef(step=step, uri=f"{ROOT}/experts/0/checkpoints/step-{step:09d}", time=T0)


def store(**fields: Any) -> StoreSnapshot:
    """The run's store as the observer last read it (spec.json in place unless said otherwise)."""
    values: dict[str, Any] = {"run_uri": ROOT, "spec_uri": f"{ROOT}/spec.json", "secret": "minio", "spec": "stored"}
    values.update(fields)
    return StoreSnapshot(**values)


def store_down(message: str = "s3://atoll/runs is unreachable: connection refused") -> StoreSnapshot:
    return StoreSnapshot(
        run_uri=ROOT,
        spec_uri=f"{ROOT}/spec.json",
        secret="minio",
        spec="unknown",
        setup=StoreProblem(reason="StoreUnavailable", message=message, permanent=False),
    )


def observe(
    run: RunObject | None = None,
    *,
    pods: Iterable[PodView] = (),
    experts: Iterable[ExpertView] = (),
    nodes: Iterable[NodeView] | None = FLEET,
    busy: Mapping[str, int] | None = None,
    snapshot: StoreSnapshot | None = None,
    now: datetime = T0,
    monotonic: float = 1000.0,
) -> Observation:
    return Observation(
        run=run or run_body(),
        pods=tuple(pods),
        experts=tuple(experts),
        nodes=tuple(nodes) if nodes is not None else None,
        busy_gpus=dict(busy or {}),
        store=snapshot or store(),
        now=now,
        monotonic=monotonic,
    )


def step(observation: Observation, memory: RunMemory | None = None, settings: OperatorSettings = SETTINGS) -> Decision:
    return decide(observation, memory or RunMemory(), settings)


def later(observation: Observation, seconds: float, **changes: Any) -> Observation:
    """The next look at the world: the clock moved on, and whatever else changed."""
    return replace(
        observation,
        now=observation.now + timedelta(seconds=seconds),
        monotonic=observation.monotonic + seconds,
        **changes,
    )


def status_body(status: DDMRunStatus) -> dict[str, Any]:
    """A status as the API server stores it (what a restarted operator reads back)."""
    dumped: dict[str, Any] = status.model_dump(by_alias=True, mode="json")
    return dumped


def decided(decision: Decision) -> dict[int, DDMExpertStatus]:
    """The DDMExpert statuses a decision changed: those it patches, and those of experts whose
    pod it creates, which it remembers and leaves to the next tick to write."""
    unsent = {k: decision.memory.experts[k] for k in decision.memory.experts_unsent}
    return {**unsent, **{p.expert: p.status for p in decision.of(PatchExpertStatus)}}
