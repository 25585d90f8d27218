"""Registers an island at home: the kubeconfig Secret in the operator's namespace and the ComputeIsland.

Pure builders plus one function that applies them (create, or update what exists). The
Secret is owned by its ComputeIsland, so deleting the island deletes its credentials.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from atoll.api.spec import API_GROUP, API_GROUP_VERSION, API_VERSION
from atoll.errors import AtollError
from atoll.operator.crd import ISLAND

LABEL_ISLAND = "atoll.dev/island"
KUBECONFIG_KEY = "kubeconfig"


class RegisterError(AtollError):
    """The home API server refused the Secret or the ComputeIsland; the message is the server's reason."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Registered:
    """What `atoll island add` did at home."""

    island: Literal["created", "configured"]
    secret: str
    operator_namespace: str


def secret_name(island: str) -> str:
    """The name of an island's kubeconfig Secret in the operator's namespace."""
    return f"atoll-island-{island}"


def island_manifest(name: str, *, namespace: str, store_endpoint: str | None = None) -> dict[str, Any]:
    """The ComputeIsland object (validated by the caller through ComputeIslandManifest)."""
    spec: dict[str, Any] = {
        "kubeconfigSecretRef": {"name": secret_name(name), "key": KUBECONFIG_KEY},
        "namespace": namespace,
    }
    if store_endpoint:
        spec["storeEndpoint"] = store_endpoint
    return {"apiVersion": API_GROUP_VERSION, "kind": ISLAND.kind, "metadata": {"name": name}, "spec": spec}


def kubeconfig_secret(island: str, *, namespace: str, kubeconfig: str, owner_uid: str) -> dict[str, Any]:
    """The Secret that holds an island's standalone kubeconfig, owned by its ComputeIsland."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": secret_name(island),
            "namespace": namespace,
            "labels": {LABEL_ISLAND: island, "app.kubernetes.io/managed-by": "atoll"},
            "ownerReferences": [
                {"apiVersion": API_GROUP_VERSION, "kind": ISLAND.kind, "name": island, "uid": owner_uid}
            ],
        },
        "stringData": {KUBECONFIG_KEY: kubeconfig},
    }


def register(api_client: Any, manifest: dict[str, Any], *, operator_namespace: str, kubeconfig: str) -> Registered:
    """Create (or update) the ComputeIsland, then its kubeconfig Secret in `operator_namespace`."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    custom: Any = client.CustomObjectsApi(api_client)  # dict bodies, dict answers
    core: Any = client.CoreV1Api(api_client)
    name = manifest["metadata"]["name"]
    action: Literal["created", "configured"] = "created"
    try:
        try:
            island = custom.create_cluster_custom_object(API_GROUP, API_VERSION, ISLAND.plural, manifest)
        except ApiException as error:
            if error.status != 409:
                raise
            island = custom.patch_cluster_custom_object(
                API_GROUP, API_VERSION, ISLAND.plural, name, {"spec": manifest["spec"]}
            )
            action = "configured"
        secret = kubeconfig_secret(
            name, namespace=operator_namespace, kubeconfig=kubeconfig, owner_uid=island["metadata"]["uid"]
        )
        try:
            core.create_namespaced_secret(operator_namespace, secret)
        except ApiException as error:
            if error.status != 409:
                raise
            core.replace_namespaced_secret(secret["metadata"]["name"], operator_namespace, secret)
    except ApiException as error:
        raise RegisterError(f"the home API server refused island {name}: {_message(error)}") from None
    return Registered(island=action, secret=secret_name(name), operator_namespace=operator_namespace)


def _message(error: Any) -> str:
    import json

    try:
        return str(json.loads(error.body)["message"])
    except (TypeError, ValueError, KeyError):
        return f"{error.status} {error.reason}"
