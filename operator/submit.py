"""Submitting a DDMRun to the current kube-context and reading it back, for the CLI.

`atoll run FILE` validates the manifest locally (every bad field listed at once), then
creates the DDMRun or replaces its spec; `atoll status RUN` reads the run and its
DDMExperts. Only the API server is touched: the operator does everything else.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from atoll.api import API_GROUP, API_VERSION, DDMRunManifest
from atoll.api.status import DDMRunStatus
from atoll.errors import AtollError
from atoll.operator.crd import EXPERT, RUN
from atoll.operator.views import LABEL_RUN, ExpertView


class SubmitError(AtollError):
    """The API server refused the request; the message is the server's, with the field it names."""


@dataclass(frozen=True)
class Submitted:
    """Where a run went and what the apply did."""

    namespace: str
    name: str
    action: Literal["created", "configured", "unchanged"]


@dataclass(frozen=True)
class RunView:
    """A DDMRun and its experts as `atoll status` shows them."""

    namespace: str
    name: str
    status: DDMRunStatus
    experts: list[ExpertView]


def connect(kubeconfig: str | None = None) -> tuple[Any, str]:
    """An API client for the current kube-context and that context's namespace."""
    from kubernetes import config as kube_config_module

    from atoll.operator.kube import load_config

    kube_config: Any = kube_config_module  # untyped module
    namespace = "default"
    try:
        _, active = kube_config.list_kube_config_contexts(config_file=kubeconfig)
        namespace = (active or {}).get("context", {}).get("namespace") or namespace
    except (kube_config.ConfigException, OSError):
        pass  # in cluster: the service account's namespace is not needed for explicit -n
    try:
        return load_config(kubeconfig), namespace
    except (kube_config.ConfigException, OSError) as error:
        raise AtollError(f"no Kubernetes cluster configured ({error}); set KUBECONFIG or use --local") from None


def apply_run(manifest: DDMRunManifest, *, namespace: str | None = None, kubeconfig: str | None = None) -> Submitted:
    """Create the DDMRun, or replace the spec of the existing one (the operator reconciles it)."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    api_client, context_namespace = connect(kubeconfig)
    namespace = namespace or manifest.metadata.namespace or context_namespace
    custom: Any = client.CustomObjectsApi(api_client)
    body = manifest.model_dump(mode="json", by_alias=True, exclude_unset=True)
    body["metadata"] = {**body["metadata"], "namespace": namespace}
    name = manifest.metadata.name
    try:
        custom.create_namespaced_custom_object(API_GROUP, API_VERSION, namespace, RUN.plural, body)
        return Submitted(namespace, name, "created")
    except ApiException as error:
        if error.status != 409:
            raise SubmitError(_reason(error, f"creating DDMRun {namespace}/{name}")) from None
    try:
        existing: dict[str, Any] = custom.get_namespaced_custom_object(
            API_GROUP, API_VERSION, namespace, RUN.plural, name
        )
        if _without_defaults(existing.get("spec", {}), body["spec"]) == body["spec"]:
            return Submitted(namespace, name, "unchanged")
        existing["spec"] = body["spec"]
        custom.replace_namespaced_custom_object(API_GROUP, API_VERSION, namespace, RUN.plural, name, existing)
    except ApiException as error:
        raise SubmitError(_reason(error, f"updating DDMRun {namespace}/{name}")) from None
    return Submitted(namespace, name, "configured")


def read_run(name: str, *, namespace: str | None = None, kubeconfig: str | None = None) -> RunView:
    """The run's status and its experts' statuses, straight from the API server."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    api_client, context_namespace = connect(kubeconfig)
    namespace = namespace or context_namespace
    custom: Any = client.CustomObjectsApi(api_client)
    try:
        run: dict[str, Any] = custom.get_namespaced_custom_object(API_GROUP, API_VERSION, namespace, RUN.plural, name)
        experts: dict[str, Any] = custom.list_namespaced_custom_object(
            API_GROUP, API_VERSION, namespace, EXPERT.plural, label_selector=f"{LABEL_RUN}={name}"
        )
    except ApiException as error:
        if error.status == 404:
            raise AtollError(f"no DDMRun {name!r} in namespace {namespace!r}") from None
        raise SubmitError(_reason(error, f"reading DDMRun {namespace}/{name}")) from None
    views = [view for item in experts.get("items", []) if (view := ExpertView.from_body(item)) is not None]
    return RunView(
        namespace=namespace,
        name=name,
        status=DDMRunStatus.model_validate(run.get("status") or {}),
        experts=sorted(views, key=lambda view: view.expert),
    )


def _without_defaults(stored: dict[str, Any], submitted: dict[str, Any]) -> dict[str, Any]:
    """The stored spec restricted to the keys the submitted one sets (the server adds defaults)."""
    result: dict[str, Any] = {}
    for key, value in submitted.items():
        if key not in stored:
            continue
        theirs = stored[key]
        result[key] = (
            _without_defaults(theirs, value) if isinstance(value, dict) and isinstance(theirs, dict) else theirs
        )
    return result


def _reason(error: Any, doing: str) -> str:
    """The API server's own message (it names the field), not the client's HTTP dump."""
    try:
        message = json.loads(error.body).get("message")
    except (TypeError, ValueError, AttributeError):
        message = None
    return f"{doing}: {message or error.reason or error}"
