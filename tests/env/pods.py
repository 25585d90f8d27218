"""Pure pieces of the pod process runtime: a container's command and environment resolved
the way the kubelet resolves them, and the pod statuses the runtime reports.

Nothing here talks to the API server; Secrets and ConfigMaps come in through lookups.
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

Lookup = Callable[[str, str], Mapping[str, str] | None]
"""(namespace, name) → the object's data (decoded), or None when it does not exist."""

_REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
_SUBSCRIPT = re.compile(r"^metadata\.(labels|annotations)\['(.+)'\]$")


class ContainerConfigError(Exception):
    """The container cannot start yet (like the kubelet's CreateContainerConfigError)."""


def now() -> str:
    """A Kubernetes timestamp (RFC 3339, seconds, UTC)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def micro_now() -> str:
    """A Kubernetes MicroTime (leases)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def expand(text: str, env: Mapping[str, str]) -> str:
    """Expand $(VAR) references like the kubelet: unknown ones stay as written, $$ is a literal $."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return _REFERENCE.sub(replace, text)


def command_of(container: Mapping[str, Any], env: Mapping[str, str]) -> list[str]:
    """command + args with $(VAR) expanded; the image's entrypoint is unknown here, so one is required."""
    argv = [*(container.get("command") or []), *(container.get("args") or [])]
    if not container.get("command"):
        raise ContainerConfigError(
            f"container {container.get('name')!r} has no command: the pod process runtime ignores the image "
            "and runs command + args on the host"
        )
    return [expand(arg, env) for arg in argv]


def field_value(pod: Mapping[str, Any], path: str) -> str:
    """The value of a downward-API fieldRef."""
    metadata, spec, status = pod.get("metadata", {}), pod.get("spec", {}), pod.get("status", {})
    simple = {
        "metadata.name": metadata.get("name"),
        "metadata.namespace": metadata.get("namespace"),
        "metadata.uid": metadata.get("uid"),
        "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName"),
        "status.podIP": status.get("podIP") or "127.0.0.1",
        "status.hostIP": status.get("hostIP") or "127.0.0.1",
    }
    if path in simple:
        return str(simple[path] or "")
    if match := _SUBSCRIPT.match(path):
        return str((metadata.get(match.group(1)) or {}).get(match.group(2), ""))
    raise ContainerConfigError(f"unsupported fieldRef.fieldPath {path!r}")


def resource_value(container: Mapping[str, Any], ref: Mapping[str, Any]) -> str:
    """The value of a resourceFieldRef (limits.cpu, requests.memory, …) divided by its divisor, rounded up."""
    from kubernetes import utils

    parse_quantity: Any = utils.parse_quantity

    kind, _, resource = str(ref.get("resource", "")).partition(".")
    resources = container.get("resources") or {}
    quantity = (resources.get(kind) or {}).get(resource)
    if quantity is None and kind == "limits":
        quantity = (resources.get("requests") or {}).get(resource)
    if quantity is None:
        raise ContainerConfigError(f"resourceFieldRef {ref.get('resource')!r}: the container sets no such resource")
    divisor = parse_quantity(str(ref.get("divisor") or "1"))
    value: Decimal = parse_quantity(str(quantity)) / divisor
    return str(math.ceil(value))


def resolve_env(
    pod: Mapping[str, Any], container: Mapping[str, Any], *, secret: Lookup, config_map: Lookup
) -> dict[str, str]:
    """The container's environment: envFrom first, then env (later entries win), $(VAR) expanded."""
    namespace = pod["metadata"]["namespace"]
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        for kind, lookup in (("secretRef", secret), ("configMapRef", config_map)):
            ref = source.get(kind)
            if ref is None:
                continue
            data = lookup(namespace, ref["name"])
            if data is None:
                if ref.get("optional"):
                    continue
                noun = "secret" if kind == "secretRef" else "configmap"
                raise ContainerConfigError(f'{noun} "{ref["name"]}" not found')
            prefix = source.get("prefix") or ""
            env.update({prefix + key: value for key, value in data.items() if _ENV_NAME.match(prefix + key)})
    for variable in container.get("env") or []:
        value = _env_value(pod, container, variable, env, secret=secret, config_map=config_map)
        if value is not None:
            env[variable["name"]] = value
    return env


def _env_value(
    pod: Mapping[str, Any],
    container: Mapping[str, Any],
    variable: Mapping[str, Any],
    env: Mapping[str, str],
    *,
    secret: Lookup,
    config_map: Lookup,
) -> str | None:
    source = variable.get("valueFrom")
    if source is None:
        return expand(str(variable.get("value") or ""), env)
    namespace = pod["metadata"]["namespace"]
    for kind, lookup, noun in (("secretKeyRef", secret, "Secret"), ("configMapKeyRef", config_map, "ConfigMap")):
        ref = source.get(kind)
        if ref is None:
            continue
        data = lookup(namespace, ref["name"])
        if data is None or ref["key"] not in data:
            if ref.get("optional"):
                return None
            if data is None:
                raise ContainerConfigError(f'{noun.lower()} "{ref["name"]}" not found')
            raise ContainerConfigError(f"couldn't find key {ref['key']} in {noun} {namespace}/{ref['name']}")
        return data[ref["key"]]
    if "fieldRef" in source:
        return field_value(pod, source["fieldRef"]["fieldPath"])
    if "resourceFieldRef" in source:
        return resource_value(container, source["resourceFieldRef"])
    raise ContainerConfigError(f"env {variable.get('name')!r}: unsupported valueFrom {sorted(source)}")


def decode_secret(secret: Mapping[str, Any]) -> dict[str, str]:
    """A Secret's data (base64) and stringData as text."""
    data = {
        key: base64.b64decode(value).decode("utf-8", errors="replace")
        for key, value in (secret.get("data") or {}).items()
    }
    data.update(secret.get("stringData") or {})
    return data


# --- statuses ------------------------------------------------------------------------------


def _conditions(ready: bool, reason: str | None = None) -> list[dict[str, Any]]:
    stamp = now()
    conditions = []
    for kind, value in (
        ("PodReadyToStartContainers", True),
        ("Initialized", True),
        ("Ready", ready),
        ("ContainersReady", ready),
        ("PodScheduled", True),
    ):
        condition: dict[str, Any] = {"type": kind, "status": "True" if value else "False", "lastTransitionTime": stamp}
        if not value and reason:
            condition["reason"] = reason
        conditions.append(condition)
    return conditions


def _container_status(
    container: Mapping[str, Any],
    state: dict[str, Any],
    *,
    restarts: int,
    last_state: dict[str, Any] | None,
    pid: int | None,
) -> dict[str, Any]:
    running = "running" in state
    status: dict[str, Any] = {
        "name": container["name"],
        "image": container.get("image") or "none",
        "imageID": "",
        "ready": running,
        "started": running,
        "restartCount": restarts,
        "state": state,
        "lastState": last_state or {},
    }
    if pid is not None:
        status["containerID"] = f"atoll-pod-runtime://{pid}"
    return status


def _base(pod: Mapping[str, Any], started_at: str) -> dict[str, Any]:
    return {
        "hostIP": "127.0.0.1",
        "hostIPs": [{"ip": "127.0.0.1"}],
        "podIP": "127.0.0.1",
        "podIPs": [{"ip": "127.0.0.1"}],
        "startTime": (pod.get("status") or {}).get("startTime") or started_at,
        "qosClass": (pod.get("status") or {}).get("qosClass") or "BestEffort",
    }


def running_status(
    pod: Mapping[str, Any], *, started_at: str, pid: int, restarts: int, last_state: dict[str, Any] | None
) -> dict[str, Any]:
    container = pod["spec"]["containers"][0]
    state = {"running": {"startedAt": started_at}}
    return {
        **_base(pod, started_at),
        "phase": "Running",
        "conditions": _conditions(True),
        "containerStatuses": [_container_status(container, state, restarts=restarts, last_state=last_state, pid=pid)],
    }


def terminated_state(
    *, exit_code: int, started_at: str, pid: int | None, message: str | None = None, reason: str | None = None
) -> dict[str, Any]:
    terminated: dict[str, Any] = {
        "exitCode": exit_code,
        "reason": reason or ("Completed" if exit_code == 0 else "Error"),
        "startedAt": started_at,
        "finishedAt": now(),
    }
    if pid is not None:
        terminated["containerID"] = f"atoll-pod-runtime://{pid}"
    if message:
        terminated["message"] = message
    return {"terminated": terminated}


def finished_status(
    pod: Mapping[str, Any], *, state: dict[str, Any], restarts: int, last_state: dict[str, Any] | None
) -> dict[str, Any]:
    """Succeeded or Failed, from the container's terminated state."""
    container = pod["spec"]["containers"][0]
    code = state["terminated"]["exitCode"]
    return {
        **_base(pod, state["terminated"]["startedAt"]),
        "phase": "Succeeded" if code == 0 else "Failed",
        "conditions": _conditions(False, "PodCompleted" if code == 0 else "PodFailed"),
        "containerStatuses": [_container_status(container, state, restarts=restarts, last_state=last_state, pid=None)],
    }


def waiting_status(
    pod: Mapping[str, Any], *, reason: str, message: str, restarts: int, last_state: dict[str, Any] | None, phase: str
) -> dict[str, Any]:
    """Pending (CreateContainerConfigError) or Running (CrashLoopBackOff between restarts)."""
    container = pod["spec"]["containers"][0]
    state = {"waiting": {"reason": reason, "message": message}}
    status = {
        **_base(pod, now()),
        "phase": phase,
        "conditions": _conditions(False, "ContainersNotReady"),
        "containerStatuses": [_container_status(container, state, restarts=restarts, last_state=last_state, pid=None)],
    }
    if phase == "Pending" and not (pod.get("status") or {}).get("startTime"):
        status.pop("startTime")
    return status


def keep_transition_times(status: dict[str, Any], previous: Mapping[str, Any] | None) -> dict[str, Any]:
    """Conditions whose status did not change keep their lastTransitionTime (as the kubelet's do)."""
    before = {c.get("type"): c for c in (previous or {}).get("conditions") or []}
    for condition in status.get("conditions") or []:
        old = before.get(condition["type"])
        if old is not None and old.get("status") == condition["status"] and old.get("lastTransitionTime"):
            condition["lastTransitionTime"] = old["lastTransitionTime"]
    return status
