"""One probe of an island: read its kubeconfig Secret at home, then ask the island's API server
for its version, its nodes and the GPUs pods of the island's namespace request.

Every failure becomes an `Unreached` with a CamelCase reason and a sentence that names the
Secret, the server or the request, never a credential. The Secret is read on every probe,
so a rotated kubeconfig is used at once.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from atoll.api.island import KubeconfigSecretRef
from atoll.operator.islands.kubeconfig import KubeconfigError, client_for, server_of
from atoll.operator.islands.status import Outcome, Reached, Unreached
from atoll.operator.views import pod_gpus

REQUEST_TIMEOUT_SECONDS = 10.0


def read_kubeconfig(core_v1: Any, namespace: str, ref: KubeconfigSecretRef) -> tuple[str, str] | Unreached:
    """(kubeconfig text, the Secret's resourceVersion) from the home cluster, or why not."""
    from kubernetes.client.exceptions import ApiException

    where = f"Secret {namespace}/{ref.name}"
    try:
        secret = core_v1.read_namespaced_secret(ref.name, namespace, _request_timeout=REQUEST_TIMEOUT_SECONDS)
    except ApiException as error:
        if error.status == 404:
            return Unreached(reason="SecretNotFound", message=f"{where} does not exist")
        return Unreached(reason="SecretUnreadable", message=f"{where} cannot be read: {error.status} {error.reason}")
    data = secret.data or {}
    if ref.key not in data:
        return Unreached(reason="KeyNotFound", message=f"{where} has no key {ref.key!r}")
    try:
        text = base64.b64decode(data[ref.key], validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return Unreached(reason="InvalidKubeconfig", message=f"{where} key {ref.key!r} is not UTF-8 text")
    return text, str(secret.metadata.resource_version or "")


def probe(kubeconfig: str, namespace: str) -> Outcome:
    """Reach the island: /version, nodes, and this namespace's pods (for the GPUs in use)."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError, MaxRetryError

    try:
        api = client_for(kubeconfig, retries=0)
    except KubeconfigError as error:
        return Unreached(reason="InvalidKubeconfig", message=str(error))
    server = server_of(kubeconfig)
    step = "read /version"
    try:
        version = client.VersionApi(api).get_code(_request_timeout=REQUEST_TIMEOUT_SECONDS).git_version
        core = client.CoreV1Api(api)
        step = "list nodes"
        nodes = _items(core.list_node(_request_timeout=REQUEST_TIMEOUT_SECONDS, _preload_content=False))
        step = f"list pods in namespace {namespace}"
        response: Any = core.list_namespaced_pod(
            namespace, _request_timeout=REQUEST_TIMEOUT_SECONDS, _preload_content=False
        )
        listed: dict[str, Any] = json.loads(response.data)
    except ApiException as error:
        if error.status == 401:
            return Unreached(reason="Unauthorized", message=f"the API server at {server} refused the credentials")
        if error.status == 403:
            return Unreached(
                reason="Forbidden",
                message=f"the credentials may not {step} at {server} (install charts/atoll-island there)",
            )
        return Unreached(reason="ApiError", message=f"{step} at {server}: {error.status} {error.reason}")
    except (HTTPError, OSError) as error:
        cause = error.reason if isinstance(error, MaxRetryError) else error
        return Unreached(
            reason="Unreachable", message=f"cannot reach the API server at {server}: {type(cause).__name__}"
        )
    finally:
        api.close()
    pods: list[dict[str, Any]] = listed["items"]
    used: dict[str, int] = {}
    for pod in pods:
        spec = pod.get("spec") or {}
        node = spec.get("nodeName")
        if node and (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed"):
            used[node] = used.get(node, 0) + pod_gpus(spec)
    pods_version = str((listed.get("metadata") or {}).get("resourceVersion") or "")
    return Reached(
        version=str(version), nodes=tuple(nodes), used_gpus=used, pods=tuple(pods), pods_version=pods_version
    )


def _items(response: Any) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = json.loads(response.data)["items"]
    return items
