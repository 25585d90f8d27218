"""An expert's pod on an island, and the store Secret it reads there; and the island's pods as
the reconciler sees them. Pure: no API calls.

The pod is the home pod builder's (atoll.operator.pods.build_pod), made fit for the island:
in the island's namespace, on the node's own name, its store credentials from a copy of the
run's store Secret made there (with the island's `storeEndpoint` when set), no owner
reference (its owner lives in another cluster, and only home holds the CRDs) but labels
naming its origin: the home namespace, the run's UID and its owner's UID. Those labels are
how the home operator finds its pods again, mirrors them into the DDMExperts and collects
the orphans of runs that no longer exist.
"""

from __future__ import annotations

import base64
import copy
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

from atoll.api.spec import API_GROUP
from atoll.operator.islands.fleet import qualified, split_node
from atoll.operator.pods import OPTIONAL_SECRET_KEYS, SECRET_KEYS
from atoll.operator.views import ANNOTATION_PLANNED_NODE, LABEL_RUN, PodView

Manifest = dict[str, Any]

LABEL_ORIGIN_NAMESPACE = f"{API_GROUP}/origin-namespace"
"""The home namespace of the run a pod or Secret on an island belongs to."""
LABEL_ORIGIN_RUN_UID = f"{API_GROUP}/origin-run-uid"
"""The UID of that DDMRun at home: its pods and Secrets on islands outlive it only until collected."""
LABEL_ORIGIN_OWNER_UID = f"{API_GROUP}/origin-owner-uid"
"""The UID of the pod's owner at home (its DDMExpert): what an owner reference would say."""
STORE_KEYS = (*SECRET_KEYS.values(), *OPTIONAL_SECRET_KEYS.values())
"""The keys of the run's store Secret that are copied to an island (nothing else is)."""


def store_secret_name(run_uid: str) -> str:
    """The island's copy of a run's store Secret (one per run: the run's UID names it)."""
    return f"atoll-store-{run_uid}"


def origin_labels(namespace: str, run: str, run_uid: str) -> dict[str, str]:
    return {LABEL_RUN: run, LABEL_ORIGIN_NAMESPACE: namespace, LABEL_ORIGIN_RUN_UID: run_uid}


def island_pod(home_pod: Mapping[str, Any], *, island_namespace: str, run_uid: str) -> Manifest:
    """The home builder's pod of a stage attempt planned on an island node (`island/node`)."""
    pod = copy.deepcopy(dict(home_pod))
    metadata = pod["metadata"]
    origin = metadata["namespace"]
    owners = metadata.pop("ownerReferences", None) or []
    labels = {**metadata.get("labels", {}), **origin_labels(origin, metadata["labels"][LABEL_RUN], run_uid)}
    if owners:
        labels[LABEL_ORIGIN_OWNER_UID] = str(owners[0]["uid"])
    metadata["labels"] = labels
    metadata["namespace"] = island_namespace
    annotations = metadata.get("annotations") or {}
    if ANNOTATION_PLANNED_NODE in annotations:
        annotations[ANNOTATION_PLANNED_NODE] = split_node(annotations[ANNOTATION_PLANNED_NODE])[1]
    spec = pod["spec"]
    spec.pop("serviceAccountName", None)  # the island has no such ServiceAccount; no token is mounted anyway
    affinity = spec.get("affinity", {}).get("nodeAffinity", {})
    terms = affinity.get("requiredDuringSchedulingIgnoredDuringExecution", {}).get("nodeSelectorTerms", [])
    for term in terms:
        for field in term.get("matchFields", []):
            if field.get("key") == "metadata.name":
                field["values"] = [split_node(value)[1] for value in field["values"]]
    for preferred in affinity.get("preferredDuringSchedulingIgnoredDuringExecution", []):
        for expression in preferred.get("preference", {}).get("matchExpressions", []):
            expression["values"] = [split_node(value)[1] for value in expression.get("values", [])]
    secret = store_secret_name(run_uid)
    for container in spec.get("containers", []):
        for variable in container.get("env", []):
            ref = (variable.get("valueFrom") or {}).get("secretKeyRef")
            if ref is not None and ref.get("key") in STORE_KEYS:
                ref["name"] = secret
    return pod


def island_store_secret(
    home_secret: Mapping[str, Any],
    *,
    island_namespace: str,
    origin_namespace: str,
    run: str,
    run_uid: str,
    endpoint: str | None,
) -> Manifest:
    """The island's copy of the run's store Secret: the store keys only, the endpoint replaced
    by the island's `storeEndpoint` when it has one."""
    data = {key: value for key, value in (home_secret.get("data") or {}).items() if key in STORE_KEYS}
    if endpoint is not None:
        data[SECRET_KEYS["MINIO_ENDPOINT"]] = base64.b64encode(endpoint.encode()).decode()
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": store_secret_name(run_uid),
            "namespace": island_namespace,
            "labels": origin_labels(origin_namespace, run, run_uid),
        },
        "data": data,
    }


def island_pod_view(island: str, body: Mapping[str, Any]) -> PodView | None:
    """The view of an atoll pod on an island, as if it ran at home: its nodes qualified by the
    island, its owner the one its origin label names (None: not an atoll pod from home)."""
    view = PodView.from_body(body)
    labels = (body.get("metadata") or {}).get("labels") or {}
    if view is None or LABEL_ORIGIN_RUN_UID not in labels:
        return None
    return replace(
        view,
        node=None if view.node is None else qualified(island, view.node),
        planned_node=None if view.planned_node is None else qualified(island, view.planned_node),
        owner_uid=labels.get(LABEL_ORIGIN_OWNER_UID) or labels[LABEL_ORIGIN_RUN_UID],
        island=island,
        origin_namespace=labels.get(LABEL_ORIGIN_NAMESPACE),
    )


def orphans(bodies: Iterable[Mapping[str, Any]], live_runs: set[str]) -> list[str]:
    """Names of the objects (pods, Secrets) whose origin run UID is not among `live_runs`."""
    found = []
    for body in bodies:
        metadata = body.get("metadata") or {}
        uid = (metadata.get("labels") or {}).get(LABEL_ORIGIN_RUN_UID)
        if uid is not None and uid not in live_runs and metadata.get("deletionTimestamp") is None:
            found.append(str(metadata["name"]))
    return sorted(found)
