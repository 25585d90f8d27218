"""The kopf wiring: indexes of what the operator watches, one timer per DDMRun, a finalizer.

Handlers only decide and apply through atoll.operator.reconcile; everything here is the
glue kopf needs. Level-based: the timer looks at the whole observed state every tick, so
missed watch events and operator restarts cost nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any, cast

import kopf

from atoll.api.spec import API_GROUP, API_VERSION, DDMRunSpec
from atoll.log import get_logger
from atoll.operator import storage
from atoll.operator.crd import EXPERT, RUN
from atoll.operator.kube import Kube, connection_info
from atoll.operator.observe import (
    ANNOTATION_PLANNED_NODE,
    GPU_RESOURCE,
    GROUP,
    LABEL_RUN,
    ExpertView,
    NodeView,
    PodView,
)
from atoll.operator.reconcile import Observed, Reconciler, RunMemory
from atoll.operator.settings import OperatorSettings
from atoll.store import StoreError

log = get_logger(__name__)

FINALIZER = f"{GROUP}/cleanup"
MEMORY = "atoll"


def kopf_settings(settings: OperatorSettings) -> kopf.OperatorSettings:
    """kopf's own settings: our finalizer and annotation prefix, no log lines as Events."""
    config = kopf.OperatorSettings()
    config.persistence.finalizer = FINALIZER
    config.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    config.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    # Handler log lines are not Events (they would flood them); the reconciler posts its
    # own Events on every transition. Errors of kopf itself still become Events.
    config.posting.level = logging.ERROR
    config.execution.max_workers = 16
    config.watching.server_timeout = 300
    config.watching.client_timeout = 330
    config.networking.request_timeout = 60
    return config


def _body(raw: Mapping[str, Any]) -> kopf.Body:
    """A kopf Body around a plain mapping (what kopf.event takes)."""
    return kopf.Body(cast(Any, raw))


def _values(index: kopf.Index[Any, Any], key: Any) -> list[Any]:
    return list(index.get(key, ()))


def _all(index: kopf.Index[Any, Any]) -> Iterable[Any]:
    for values in index.values():
        yield from values


def build_registry(reconciler: Reconciler, kube: Kube, settings: OperatorSettings) -> kopf.OperatorRegistry:
    """Every handler of the operator, on a registry of its own."""
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        """The cluster and credentials the client was configured with (service account or kubeconfig)."""
        info: kopf.ConnectionInfo = connection_info(kube.configuration)
        return info

    @kopf.index("pods", labels={LABEL_RUN: kopf.PRESENT}, id="run_pods", registry=registry)
    def run_pods(body: kopf.Body, **_: Any) -> dict[Any, PodView]:
        view = PodView.from_body(body)
        return {(view.namespace, view.run): view} if view is not None else {}

    @kopf.index("pods", id="gpu_pods", registry=registry)
    def gpu_pods(body: kopf.Body, **_: Any) -> dict[Any, tuple[str, int]]:
        """Every pod that holds GPUs (atoll's or not), by node (its pinned node while unbound)."""
        gpus = sum(
            int(str(((c.get("resources") or {}).get("limits") or {}).get(GPU_RESOURCE, 0)) or 0)
            for c in body.get("spec", {}).get("containers") or []
        )
        phase = body.get("status", {}).get("phase")
        node = body.get("spec", {}).get("nodeName") or (body.metadata.annotations or {}).get(ANNOTATION_PLANNED_NODE)
        if not gpus or not node or phase in ("Succeeded", "Failed") or body.metadata.get("deletionTimestamp"):
            return {}
        return {node: (f"{body.metadata.namespace}/{body.metadata.name}", gpus)}

    @kopf.index("nodes", id="gpu_nodes", registry=registry)
    def gpu_nodes(body: kopf.Body, **_: Any) -> dict[Any, NodeView]:
        return {body["metadata"]["name"]: NodeView.from_body(body)}

    @kopf.index(API_GROUP, API_VERSION, EXPERT.plural, id="run_experts", registry=registry)
    def run_experts(body: kopf.Body, **_: Any) -> dict[Any, ExpertView]:
        view = ExpertView.from_body(body)
        return {(view.namespace, view.run): view} if view is not None else {}

    @kopf.timer(
        API_GROUP, API_VERSION, RUN.plural, id="reconcile", interval=settings.interval_seconds,
        backoff=settings.interval_seconds, registry=registry,
    )  # fmt: skip
    def reconcile_run(*, body: kopf.Body, memo: kopf.Memo, patch: kopf.Patch, **kwargs: Any) -> None:
        # The indexes arrive as keyword arguments named by their ids.
        run_pods: kopf.Index[Any, PodView] = kwargs["run_pods"]
        gpu_pods: kopf.Index[Any, tuple[str, int]] = kwargs["gpu_pods"]
        gpu_nodes: kopf.Index[Any, NodeView] = kwargs["gpu_nodes"]
        run_experts: kopf.Index[Any, ExpertView] = kwargs["run_experts"]
        memory: RunMemory = memo.setdefault(MEMORY, RunMemory())
        key = (body.metadata.namespace, body.metadata.name)
        busy: dict[str, int] = {}
        holders: set[str] = set()
        for node, values in gpu_pods.items():
            for pod, gpus in values:
                busy[node] = busy.get(node, 0) + gpus
                holders.add(pod)
        observed = Observed(
            pods=_values(run_pods, key),
            experts=_values(run_experts, key),
            nodes=list(_all(gpu_nodes)),
            busy_gpus=busy,
            gpu_pods=holders,
        )
        outcome = reconciler.reconcile(body, memory, observed)
        status = outcome.status.model_dump(by_alias=True, mode="json")
        if status != dict(body.get("status") or {}):
            patch.status.update(status)
        for event in outcome.events:
            kopf.event(_body(event.target), type=event.type, reason=event.reason, message=event.message)

    @kopf.on.delete(API_GROUP, API_VERSION, RUN.plural, id="cleanup", registry=registry)
    def cleanup(*, body: kopf.Body, name: str, namespace: str | None, **_: Any) -> None:
        """Stop the run's pods; delete its store data only when reclaimPolicy is Delete."""
        namespace = namespace or "default"
        remaining = kube.run_pods(namespace, name)
        for pod in remaining:
            if pod["metadata"].get("deletionTimestamp") is None:
                kube.delete_pod(namespace, pod["metadata"]["name"])
        if remaining:
            raise kopf.TemporaryError(f"waiting for {len(remaining)} pod(s) of {name} to stop", delay=2)
        _reclaim(body, name, namespace, kube, settings)

    return registry


def _reclaim(body: kopf.Body, name: str, namespace: str, kube: Kube, settings: OperatorSettings) -> None:
    """Delete the run's store prefix if its spec asks for it and owner.json names this DDMRun's
    UID (best effort; a refusal or a failure is said in a Warning Event and the data is kept)."""
    try:
        spec = DDMRunSpec.model_validate(body.get("spec") or {})
    except ValueError as error:
        if (body.get("spec") or {}).get("storage", {}).get("reclaimPolicy") == "Delete":
            message = f"store data kept: the spec is not valid, so its store prefix is not trusted: {error}"
            kopf.event(body, type="Warning", reason="ReclaimRefused", message=message[:1000])
        return
    if spec.storage.reclaim_policy != "Delete":
        return
    try:
        target = storage.store_target(spec, namespace, name, settings)
        env = None
        if target.s3 and target.secret:
            env = storage.credentials(kube.get_secret(namespace, target.secret), target.secret, namespace)
        store = storage.open_run_store(target, env)
        storage.reclaim(store, str(body.metadata.uid or ""))
    except (storage.RunSetupError, StoreError) as error:
        reason = "ReclaimRefused" if getattr(error, "reason", None) == "ReclaimRefused" else "ReclaimFailed"
        kopf.event(body, type="Warning", reason=reason, message=f"store data kept: {error}")
        log.warning("store data of a deleted run kept", run=name, namespace=namespace, reason=reason, error=str(error))
        return
    log.info("store data of a deleted run removed", run=name, namespace=namespace, uri=target.run_uri)
