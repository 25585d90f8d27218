"""Pure builders of the stage pods: one pod per stage attempt, running the stage command.

Store credentials reach a pod only through secretKeyRef (never a value in the manifest);
placement becomes plain Kubernetes (GPU requests, node affinity on the GPU product and the
planned node, or on the pool's labels for a node an autoscaler has yet to add; tolerations);
the annotations of atoll.operator.placement.autoscalers keep cluster-autoscaler and
Karpenter from taking a node away while its stage runs; CPU, memory, /dev/shm, scratch
and the grace period come from atoll.operator.pod_resources (requests equal to limits:
Guaranteed QoS), with a read-only root filesystem. Pod names are deterministic per stage and
attempt, so a restarted operator creates nothing twice. Pure: no API calls.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from atoll.api.spec import DDMRunSpec
from atoll.operator.placement import Assignment, labels
from atoll.operator.placement.autoscalers import protecting_annotations
from atoll.operator.pod_resources import SCRATCH, SHM, pod_resources, runtime_env, weights_env
from atoll.operator.settings import OperatorSettings
from atoll.operator.template import apply_template
from atoll.operator.views import (
    ANNOTATION_GPU_PRODUCT,
    ANNOTATION_PLANNED_NODE,
    ANNOTATION_PLANNED_POOL,
    ANNOTATION_PREDICTED_SECONDS,
    LABEL_ATTEMPT,
    LABEL_EXPERT,
    LABEL_RUN,
    LABEL_STAGE,
)
from atoll.stages import StageJob, stage_args
from atoll.store.retry import DEADLINE_VARIABLE

Manifest = dict[str, Any]

CONTAINER = "stage"
SECRET_KEYS = {"MINIO_ENDPOINT": "endpoint", "MINIO_ACCESS_KEY": "accessKey", "MINIO_SECRET_KEY": "secretKey"}
"""Environment variable of the stage → key in the store Secret (atoll.store reads these)."""
OPTIONAL_SECRET_KEYS = {"MINIO_SECURE": "secure"}


@dataclass(frozen=True, kw_only=True, slots=True)
class Owner:
    """The object a pod belongs to (its controller owner reference)."""

    api_version: str
    kind: str
    name: str
    uid: str

    def reference(self) -> dict[str, Any]:
        return {
            "apiVersion": self.api_version,
            "kind": self.kind,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }


@dataclass(frozen=True, kw_only=True, slots=True)
class StageAttempt:
    """Everything that makes one stage attempt's pod."""

    run: str
    namespace: str
    job: StageJob
    attempt: int
    spec_uri: str
    store_uri: str
    store_secret: str | None
    """Secret with the store credentials (s3:// stores); None for a local store."""
    owner: Owner
    assignment: Assignment | None
    """Placement (node, GPU product, GPUs, batch split); None: anywhere the scheduler likes."""
    pinned: bool = False
    """True: the pod must run on the assignment's node itself (a makespan plan); False: any
    node of its GPU product, the planned node preferred. An assignment to a pool's new node
    names no node: the pod requires the pool's labels and the product, pinned or not."""


def pod_name(run: str, job: StageJob, attempt: int) -> str:
    """<run>-<stage slug>-a<attempt>: the same attempt always has the same name."""
    return f"{run}-{job.slug}-a{attempt}"


def stage_labels(run: str, job: StageJob) -> dict[str, str]:
    """Labels that select every attempt of one stage."""
    selected = {
        "app.kubernetes.io/name": "atoll",
        "app.kubernetes.io/component": job.stage,
        "app.kubernetes.io/managed-by": "atoll-operator",
        LABEL_RUN: run,
        LABEL_STAGE: job.stage,
    }
    if job.expert is not None:
        selected[LABEL_EXPERT] = str(job.expert)
    return selected


def stage_command(item: StageAttempt) -> list[str]:
    """The stage contract's arguments (after `python -m atoll.trainer`), attempt and plan included."""
    plan = item.assignment
    return stage_args(
        item.job,
        item.spec_uri,
        item.store_uri,
        attempt=item.attempt,
        micro_batch=plan.micro_batch if plan is not None else None,
        grad_accum=plan.grad_accum if plan is not None else None,
        gpus=plan.gpus if plan is not None else None,
    )


def _env(item: StageAttempt, spec: DDMRunSpec) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "ATOLL_LOG_FORMAT", "value": "json"},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]
    if (retry := spec.failure_policy.store_retry_seconds) is not None:
        env.append({"name": DEADLINE_VARIABLE, "value": str(retry)})  # how long before exit 5
    overrides = {variable["name"]: variable for variable in weights_env(spec)}
    env += [overrides.pop(v["name"], v) for v in runtime_env(CONTAINER)] + list(overrides.values())
    if item.store_secret:
        for variable, key in SECRET_KEYS.items():
            required: dict[str, Any] = {"name": item.store_secret, "key": key}
            env.append({"name": variable, "valueFrom": {"secretKeyRef": required}})
        for variable, key in OPTIONAL_SECRET_KEYS.items():
            ref: dict[str, Any] = {"name": item.store_secret, "key": key, "optional": True}
            env.append({"name": variable, "valueFrom": {"secretKeyRef": ref}})
    return env


def _affinity(plan: Assignment | None, pinned: bool) -> dict[str, Any] | None:
    """Required: the planned GPU product, and the planned node itself for a pinned (makespan)
    plan, or the labels of the pool whose new node it waits for (no node name: an autoscaler
    simulates the pod against the pool's node template and provisions for it); otherwise the
    planned node is only preferred."""
    if plan is None:
        return None
    required: dict[str, Any] = {
        "matchExpressions": [{"key": labels.GPU_PRODUCT, "operator": "In", "values": [plan.gpu_product]}]
    }
    if plan.pool is not None:
        required["matchExpressions"] += [
            {"key": key, "operator": "In", "values": [value]} for key, value in sorted(plan.pool_labels.items())
        ]
        return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [required]}}}
    if pinned:
        # metadata.name, not the hostname label (which differs from the node name on some clouds).
        required["matchFields"] = [{"key": "metadata.name", "operator": "In", "values": [plan.node]}]
        return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [required]}}}
    preferred = {"matchExpressions": [{"key": labels.HOSTNAME, "operator": "In", "values": [plan.node]}]}
    return {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [required]},
            "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 100, "preference": preferred}],
        }
    }


def _tolerations(spec: DDMRunSpec) -> list[dict[str, Any]]:
    tolerations: list[dict[str, Any]] = [{"key": labels.GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}]
    for toleration in spec.placement.tolerations:
        tolerations.append(toleration.model_dump(by_alias=True, exclude_none=True))
    return tolerations


def build_pod(item: StageAttempt, spec: DDMRunSpec, settings: OperatorSettings) -> Manifest:
    """The pod of one stage attempt."""
    name = pod_name(item.run, item.job, item.attempt)
    pod_labels = {**stage_labels(item.run, item.job), LABEL_ATTEMPT: str(item.attempt)}
    # Every stage is work lost if its node is scaled down under it; a finished pod no longer
    # holds its node (both autoscalers skip terminal pods).
    annotations: dict[str, str] = protecting_annotations()
    plan = item.assignment
    gpus = plan.gpus if plan is not None else 0
    sizes = pod_resources(spec, item.job, gpus)
    if plan is not None:
        annotations[ANNOTATION_GPU_PRODUCT] = plan.gpu_product
    if plan is not None and plan.pool is not None:
        annotations[ANNOTATION_PLANNED_POOL] = plan.pool  # a node of the pool is still to come
    elif plan is not None and item.pinned:
        annotations[ANNOTATION_PLANNED_NODE] = plan.node
    if plan is not None and plan.predicted_seconds:
        annotations[ANNOTATION_PREDICTED_SECONDS] = f"{plan.predicted_seconds:.0f}"
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": settings.image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["python", "-m", "atoll.trainer"],
        "args": stage_command(item),
        "env": _env(item, spec),
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "resources": sizes.container(labels.GPU_RESOURCE, gpus),
        "volumeMounts": [{"name": "scratch", "mountPath": SCRATCH}, {"name": "dshm", "mountPath": SHM}],
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "runAsNonRoot": True,
            "readOnlyRootFilesystem": True,  # every cache points at the scratch volume
        },
    }
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",  # the operator restarts stages itself, with fencing and backoff
        "automountServiceAccountToken": False,  # stages never talk to the Kubernetes API
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": sizes.grace_seconds,  # SIGTERM: commit a checkpoint, exit
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": settings.run_as_user,
            "runAsGroup": settings.run_as_user,
            "fsGroup": settings.run_as_user,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": sizes.volumes(),
        "tolerations": _tolerations(spec),
    }
    if spec.placement.node_selector:
        pod_spec["nodeSelector"] = dict(spec.placement.node_selector)
    if (affinity := _affinity(plan, item.pinned)) is not None:
        pod_spec["affinity"] = affinity
    if settings.service_account:
        pod_spec["serviceAccountName"] = settings.service_account
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": item.namespace,
            "labels": pod_labels,
            "annotations": annotations,
            "ownerReferences": [item.owner.reference()],
        },
        "spec": pod_spec,
    }
    return apply_template(pod, spec.template)  # the user's overlay, merged last (atoll.operator.template)
