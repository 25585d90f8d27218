"""Small Kubernetes helpers for tests: read objects as plain dicts, wait for a pod to reach a
phase, list a pod's events, wait for nodes to be Ready. They only read and wait.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Collection
from typing import Any

TERMINAL = ("Succeeded", "Failed")


def read_pod(core_v1: Any, namespace: str, name: str) -> dict[str, Any] | None:
    """The pod as a dict, or None when it does not exist."""
    from kubernetes.client.exceptions import ApiException

    try:
        response = core_v1.read_namespaced_pod(name, namespace, _preload_content=False)
    except ApiException as error:
        if error.status == 404:
            return None
        raise
    pod: dict[str, Any] = json.loads(response.data)
    return pod


def exists(reader: Callable[..., Any], *args: str) -> bool:
    """Whether reader(*args) (a read_namespaced_… call) finds the object."""
    from kubernetes.client.exceptions import ApiException

    try:
        reader(*args, _preload_content=False)
    except ApiException as error:
        if error.status == 404:
            return False
        raise
    return True


def wait_for(check: Callable[[], Any], *, timeout: float, what: str, interval: float = 0.2) -> Any:
    """Poll check() until it returns something truthy; return it, or raise TimeoutError naming what."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def wait_for_pod(
    core_v1: Any, namespace: str, name: str, *, phases: Collection[str] = TERMINAL, timeout: float = 60.0
) -> dict[str, Any]:
    """Wait until the pod's phase is one of phases; return the pod."""

    def reached() -> dict[str, Any] | None:
        pod = read_pod(core_v1, namespace, name)
        return pod if pod and (pod.get("status") or {}).get("phase") in phases else None

    try:
        result: dict[str, Any] = wait_for(reached, timeout=timeout, what=f"pod {namespace}/{name} in {sorted(phases)}")
    except TimeoutError as error:
        pod = read_pod(core_v1, namespace, name)
        raise TimeoutError(f"{error}; last status: {json.dumps((pod or {}).get('status'))[:1500]}") from None
    return result


def wait_for_pod_gone(core_v1: Any, namespace: str, name: str, *, timeout: float = 60.0) -> None:
    wait_for(
        lambda: read_pod(core_v1, namespace, name) is None, timeout=timeout, what=f"pod {namespace}/{name} deleted"
    )


def container_state(pod: dict[str, Any]) -> dict[str, Any]:
    """The first container's state ({"running": …} / {"terminated": …} / {"waiting": …}), {} if none yet."""
    statuses = (pod.get("status") or {}).get("containerStatuses") or [{}]
    state: dict[str, Any] = statuses[0].get("state") or {}
    return state


def events_for(core_v1: Any, namespace: str, name: str) -> list[dict[str, Any]]:
    """The core/v1 Events about one object, oldest first."""
    response = core_v1.list_namespaced_event(
        namespace, field_selector=f"involvedObject.name={name}", _preload_content=False
    )
    items: list[dict[str, Any]] = json.loads(response.data).get("items") or []
    return sorted(items, key=lambda event: event.get("lastTimestamp") or event.get("eventTime") or "")


def node_ready(node: dict[str, Any]) -> bool:
    """Ready condition True and no not-ready/unreachable taint left."""
    conditions = (node.get("status") or {}).get("conditions") or []
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
    taints = {t.get("key") for t in (node.get("spec") or {}).get("taints") or []}
    return ready and not taints & {"node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"}


def wait_nodes_ready(core_v1: Any, names: Collection[str], *, timeout: float = 60.0) -> None:
    """Wait until every named node is Ready and schedulable."""

    def all_ready() -> bool:
        nodes = json.loads(core_v1.list_node(_preload_content=False).data).get("items") or []
        ready = {n["metadata"]["name"] for n in nodes if node_ready(n)}
        return set(names) <= ready

    wait_for(all_ready, timeout=timeout, what=f"nodes {sorted(names)} Ready", interval=0.5)
