"""Deleting a DDMRun stops its pods through the operator's named finalizer; the store data
stays unless spec.storage.reclaimPolicy is Delete, and even then only the DDMRun recorded as
the prefix's owner (its UID in owner.json) deletes it: neither a storage URI that escapes
its root nor a re-created run of the same name can erase another run's data.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.env import fleet as fleet_builders
from tests.env import kube
from tests.env.cluster import ControlPlane
from tests.env.minio import MinioServer
from tests.operator.conftest import SECRET, OperatorProcess, apply, phase, pods, run_object, wait_run

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


def objects(minio_client: Any, bucket: str, prefix: str) -> set[str]:
    return {o.object_name for o in minio_client.list_objects(bucket, prefix=prefix, recursive=True)}


def test_no_run_can_erase_data_it_does_not_own(  # noqa: PLR0917 - fixtures
    control_plane: ControlPlane,
    atoll_crds: ControlPlane,
    core_v1: Any,
    minio_client: Any,
    minio_bucket: str,
    namespace: str,
    store_secret: str,
    start_operator: Callable[..., OperatorProcess],
) -> None:
    start_operator("--default-store", store_secret, "--default-store-secret", SECRET)
    prefix = f"runs/{namespace}/first/"
    apply(control_plane, namespace, run("first", "Retain"))
    kube.wait_for(
        lambda: f"{prefix}spec.json" in objects(minio_client, minio_bucket, prefix),
        timeout=120,
        what="the first run's spec.json",
    )
    control_plane.kubectl("delete", "ddmrun", "first", "-n", namespace, "--timeout=120s")
    retained = objects(minio_client, minio_bucket, prefix)

    # A storage URI with a query: urlsplit would move /<namespace>/<run> into it, making the
    # shared root this run's prefix. The API server refuses it, naming the field.
    hostile = run("hostile", "Delete")
    hostile["spec"]["storage"].update({"uri": f"{store_secret}?x", "secretRef": SECRET})
    refused = control_plane.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(hostile), check=False)
    if refused.returncode == 0:  # admitted: let the operator set it up, then reclaim it
        kube.wait_for(
            lambda: "runs/spec.json" in objects(minio_client, minio_bucket, "runs/"),
            timeout=60,
            what="the hostile run's spec.json",
        )
        control_plane.kubectl("delete", "ddmrun", "hostile", "-n", namespace, "--timeout=120s")
    assert objects(minio_client, minio_bucket, prefix) == retained, "the hostile run erased the retained run's data"
    assert refused.returncode != 0, "a storage URI with a query was admitted"
    assert "spec.storage.uri" in refused.stderr
    assert f"{prefix}owner.json" in retained, "the owner is recorded when the run's store is set up"

    # The same name again, now with reclaimPolicy Delete: a new UID, not the owner.
    apply(control_plane, namespace, run("first", "Delete"))
    failed = wait_run(
        control_plane, namespace, "first", lambda r: phase(r) == "Failed", timeout=120, what="Failed (StoreConflict)"
    )
    assert failed["status"]["reason"] == "StoreConflict"
    assert "spec.storage.adoptRetained" in failed["status"]["message"]
    second_uid = failed["metadata"]["uid"]
    control_plane.kubectl("delete", "ddmrun", "first", "-n", namespace, "--timeout=120s")
    assert objects(minio_client, minio_bucket, prefix) == retained, "the re-created run deleted data it does not own"

    # Opting in continues the retained run (same spec) but never makes it the owner.
    adopting = run("first", "Delete")
    adopting["spec"]["storage"]["adoptRetained"] = True
    apply(control_plane, namespace, adopting)
    started = wait_run(
        control_plane,
        namespace,
        "first",
        lambda r: bool((r.get("status") or {}).get("storeUri")),
        timeout=120,
        what="the adopting run set up",
    )
    third_uid = started["metadata"]["uid"]
    control_plane.kubectl("delete", "ddmrun", "first", "-n", namespace, "--timeout=120s")
    assert retained <= objects(minio_client, minio_bucket, prefix), "the adopting run deleted data it does not own"
    refusals = {
        event["involvedObject"]["uid"]: event["message"]
        for event in kube.events_for(core_v1, namespace, "first")
        if event["reason"] == "ReclaimRefused"
    }
    assert set(refusals) == {second_uid, third_uid}, refusals
    assert all("store data kept" in message and "belongs to DDMRun" in message for message in refusals.values())
