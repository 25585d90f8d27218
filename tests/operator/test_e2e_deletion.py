"""Deleting a DDMRun stops its pods through the operator's named finalizer; the store data
stays unless spec.storage.reclaimPolicy is Delete.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.env import fleet as fleet_builders
from tests.env.cluster import ControlPlane
from tests.env.minio import MinioServer
from tests.operator.conftest import SECRET, OperatorProcess, apply, pods, run_object

pytestmark = [pytest.mark.cluster, pytest.mark.minio, pytest.mark.e2e]


def run(name: str, reclaim: str) -> dict[str, Any]:
    return {
        "apiVersion": "atoll.dev/v1alpha1",
        "kind": "DDMRun",
        "metadata": {"name": name},
        "spec": {
            "dataset": {"uri": "builtin://digits", "resolution": 8, "maxExamples": 64},
            "partition": {"clusters": 2, "features": "pixels", "fineClusters": 8, "sampleSize": 64},
            "expert": {"preset": "tiny", "steps": 10, "globalBatchSize": 8},
            "router": {"preset": "tiny", "steps": 10, "globalBatchSize": 8},
            "storage": {"reclaimPolicy": reclaim},
        },
    }


def test_deletion_stops_pods_and_reclaims_only_on_request(  # noqa: PLR0917 - fixtures
    control_plane: ControlPlane,
    atoll_crds: ControlPlane,
    fleet: fleet_builders.Fleet,
    minio: MinioServer,
    minio_client: Any,
    minio_bucket: str,
    namespace: str,
    store_secret: str,
    start_operator: Callable[..., OperatorProcess],
) -> None:
    start_operator("--default-store", store_secret, "--default-store-secret", SECRET)
    names = {"kept": "Retain", "reclaimed": "Delete"}
    for name, reclaim in names.items():
        apply(control_plane, namespace, run(name, reclaim))

    def partition_running(name: str) -> bool:
        return any(p["status"].get("phase") == "Running" for p in pods(control_plane, namespace, name))

    deadline = time.monotonic() + 180
    while not all(partition_running(name) for name in names):
        assert time.monotonic() < deadline, "the partition pods never ran"
        time.sleep(1)
    for name in names:
        finalizers = run_object(control_plane, namespace, name)["metadata"].get("finalizers", [])
        assert "atoll.dev/cleanup" in finalizers
        prefix = f"runs/{namespace}/{name}/"
        assert list(minio_client.list_objects(minio_bucket, prefix=prefix, recursive=True)), "spec.json is there"
    control_plane.kubectl("delete", "ddmrun", *names, "-n", namespace, "--timeout=120s")
    for name in names:
        assert pods(control_plane, namespace, name) == [], f"{name}: its pods are gone with it"
    kept = list(minio_client.list_objects(minio_bucket, prefix=f"runs/{namespace}/kept/", recursive=True))
    reclaimed = list(minio_client.list_objects(minio_bucket, prefix=f"runs/{namespace}/reclaimed/", recursive=True))
    assert any(o.object_name.endswith("spec.json") for o in kept), "Retain keeps the run's store data"
    assert reclaimed == [], "Delete removes the run's store prefix"
