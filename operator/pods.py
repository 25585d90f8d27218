"""Pure builders of the stage pods: one pod per stage attempt, running the stage command.

Store credentials reach a pod only through secretKeyRef (never a value in the manifest);
placement becomes plain Kubernetes (GPU requests, node affinity on the GPU product,
tolerations). Pod names are deterministic per stage and attempt, so a restarted operator
creates nothing twice. Pure: no API calls.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from atoll.api.spec import DDMRunSpec
from atoll.operator.observe import (
    ANNOTATION_GPU_PRODUCT,
    ANNOTATION_PLANNED_NODE,
    GPU_PRODUCT_LABEL,
    GPU_RESOURCE,
    HOSTNAME_LABEL,
    LABEL_ATTEMPT,
    LABEL_EXPERT,
    LABEL_RUN,
    LABEL_STAGE,
)
from atoll.operator.planning import Assignment
from atoll.operator.settings import OperatorSettings
from atoll.operator.template import apply_template

Manifest = dict[str, Any]

CONTAINER = "stage"
SCRATCH = "/tmp"  # noqa: S108 - the pod's own emptyDir, not the host's /tmp
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
    stage: str
    expert: int | None
    attempt: int
    spec_uri: str
    store_uri: str
    store_secret: str | None
    """Secret with the store credentials (s3:// stores); None for a local store."""
    owner: Owner
    assignment: Assignment | None
    """Placement (node, GPU product, GPUs, batch split); None: anywhere the scheduler likes."""


def stage_slug(stage: str, expert: int | None) -> str:
    """expert-3, router, partition, … (names and labels)."""
    return f"expert-{expert}" if stage == "expert" else stage


def pod_name(run: str, stage: str, expert: int | None, attempt: int) -> str:
    """<run>-<stage>[-<k>]-a<attempt>: the same attempt always has the same name."""
    return f"{run}-{stage_slug(stage, expert)}-a{attempt}"


def stage_labels(run: str, stage: str, expert: int | None) -> dict[str, str]:
    """Labels that select every attempt of one stage."""
    labels = {
        "app.kubernetes.io/name": "atoll",
        "app.kubernetes.io/component": stage,
        "app.kubernetes.io/managed-by": "atoll-operator",
        LABEL_RUN: run,
        LABEL_STAGE: stage,
    }
    if expert is not None:
        labels[LABEL_EXPERT] = str(expert)
    return labels


def stage_command(item: StageAttempt) -> list[str]:
    """The stage contract's arguments (after `python -m atoll.trainer`)."""
    args = [item.stage, "--run", item.spec_uri, "--store", item.store_uri]
    if item.expert is not None:
        args += ["--expert", str(item.expert)]
    args += ["--attempt", str(item.attempt)]
    plan = item.assignment
    if plan is not None:
        if plan.micro_batch is not None:
            args += ["--micro-batch", str(plan.micro_batch)]
        if plan.grad_accum is not None:
            args += ["--grad-accum", str(plan.grad_accum)]
        if plan.gpus:
            args += ["--gpus", str(plan.gpus)]
    return args


def _env(item: StageAttempt) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "ATOLL_LOG_FORMAT", "value": "json"},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]
    if item.store_secret:
        for variable, key in SECRET_KEYS.items():
            required: dict[str, Any] = {"name": item.store_secret, "key": key}
            env.append({"name": variable, "valueFrom": {"secretKeyRef": required}})
        for variable, key in OPTIONAL_SECRET_KEYS.items():
            ref: dict[str, Any] = {"name": item.store_secret, "key": key, "optional": True}
            env.append({"name": variable, "valueFrom": {"secretKeyRef": ref}})
    return env


def _affinity(plan: Assignment | None) -> dict[str, Any] | None:
    """Required: the planned GPU product, and the planned node itself for a pinned (makespan)
    plan; otherwise the planned node is only preferred."""
    if plan is None or plan.gpu_product is None:
        return None
    required: dict[str, Any] = {
        "matchExpressions": [{"key": GPU_PRODUCT_LABEL, "operator": "In", "values": [plan.gpu_product]}]
    }
    if plan.pin:
        # metadata.name, not the hostname label (which differs from the node name on some clouds).
        required["matchFields"] = [{"key": "metadata.name", "operator": "In", "values": [plan.node]}]
        return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [required]}}}
    preferred = {"matchExpressions": [{"key": HOSTNAME_LABEL, "operator": "In", "values": [plan.node]}]}
    return {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [required]},
            "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 100, "preference": preferred}],
        }
    }


def _tolerations(spec: DDMRunSpec) -> list[dict[str, Any]]:
    tolerations: list[dict[str, Any]] = [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}]
    for toleration in spec.placement.tolerations:
        tolerations.append(toleration.model_dump(by_alias=True, exclude_none=True))
    return tolerations


def build_pod(item: StageAttempt, spec: DDMRunSpec, settings: OperatorSettings) -> Manifest:
    """The pod of one stage attempt."""
    name = pod_name(item.run, item.stage, item.expert, item.attempt)
    labels = {**stage_labels(item.run, item.stage, item.expert), LABEL_ATTEMPT: str(item.attempt)}
    annotations: dict[str, str] = {}
    plan = item.assignment
    gpus = plan.gpus if plan is not None else 0
    if plan is not None and plan.gpu_product:
        annotations[ANNOTATION_GPU_PRODUCT] = plan.gpu_product
    if plan is not None and plan.pin:
        annotations[ANNOTATION_PLANNED_NODE] = plan.node
    if plan is not None and plan.predicted_seconds is not None:
        annotations["atoll.dev/predicted-seconds"] = f"{plan.predicted_seconds:.0f}"
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": settings.image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["python", "-m", "atoll.trainer"],
        "args": stage_command(item),
        "env": _env(item),
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [{"name": "scratch", "mountPath": SCRATCH}],
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "runAsNonRoot": True,
        },
    }
    if gpus:
        container["resources"] = {"limits": {GPU_RESOURCE: str(gpus)}, "requests": {GPU_RESOURCE: str(gpus)}}
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",  # the operator restarts stages itself, with fencing and backoff
        "automountServiceAccountToken": False,  # stages never talk to the Kubernetes API
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": 30,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": settings.run_as_user,
            "runAsGroup": settings.run_as_user,
            "fsGroup": settings.run_as_user,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": [{"name": "scratch", "emptyDir": {}}],
        "tolerations": _tolerations(spec),
    }
    if spec.placement.node_selector:
        pod_spec["nodeSelector"] = dict(spec.placement.node_selector)
    if (affinity := _affinity(plan)) is not None:
        pod_spec["affinity"] = affinity
    if settings.service_account:
        pod_spec["serviceAccountName"] = settings.service_account
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": item.namespace,
            "labels": labels,
            "annotations": annotations,
            "ownerReferences": [item.owner.reference()],
        },
        "spec": pod_spec,
    }
    return apply_template(pod, spec.template)  # the user's overlay, merged last (atoll.operator.template)
