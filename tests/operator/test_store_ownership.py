"""A run's store prefix belongs to the DDMRun recorded in its owner.json: the operator records
the owner before anything else, never starts in a prefix someone else owns (unless the
spec opts in, and then it still does not become the owner), and reclaims only what the
deleted object itself owns. A storage URI with a query cannot reach other runs' data."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from atoll import layout
from atoll.api.spec import DDMRunSpec, StorageSpec
from atoll.operator import storage
from atoll.operator.settings import OperatorSettings
from atoll.store import LocalStore, Store, open_store

SPEC: dict[str, Any] = {
    "dataset": {"uri": "builtin://digits", "resolution": 8},
    "partition": {"clusters": 2},
    "expert": {"preset": "tiny", "steps": 10},
    "router": {"preset": "tiny", "steps": 10},
    "storage": {"reclaimPolicy": "Delete"},
}
FIRST = storage.RunOwner("team", "digits", "uid-1")
SECOND = storage.RunOwner("team", "digits", "uid-2")


def spec(**storage_fields: Any) -> DDMRunSpec:
    document = copy.deepcopy(SPEC)
    document["storage"].update(storage_fields)
    return DDMRunSpec.model_validate(document)


@pytest.fixture
def run_store(tmp_path: Path) -> Store:
    return LocalStore(tmp_path / "runs" / "team" / "digits")


def test_the_owner_is_recorded_before_the_spec_and_never_replaced(run_store: Store) -> None:
    assert storage.ensure_spec(run_store, spec(), owner=FIRST) is True
    assert run_store.get_json(layout.OWNER) == {
        "apiVersion": "atoll.dev/v1alpha1",
        "kind": "DDMRun",
        "namespace": "team",
        "name": "digits",
        "uid": "uid-1",
    }
    assert storage.ensure_spec(run_store, spec(), owner=FIRST) is False  # the same run again: nothing changes
    with pytest.raises(storage.RunSetupError) as conflict:
        storage.ensure_spec(run_store, spec(), owner=SECOND)
    assert conflict.value.reason == "StoreConflict"
    assert "uid-1" in conflict.value.message
    assert "spec.storage.adoptRetained" in conflict.value.message
    assert storage.read_owner(run_store) == FIRST


def test_adopting_a_retained_prefix_continues_it_without_owning_it(run_store: Store) -> None:
    storage.ensure_spec(run_store, spec(), owner=FIRST)
    run_store.put_bytes("experts/0/checkpoints/step-000000005/manifest.json", b"{}")
    assert storage.ensure_spec(run_store, spec(adoptRetained=True), owner=SECOND) is False
    assert storage.read_owner(run_store) == FIRST, "adoption never rewrites the owner"
    with pytest.raises(storage.RunSetupError) as refused:
        storage.reclaim(run_store, SECOND.uid)
    assert refused.value.reason == "ReclaimRefused"
    assert run_store.exists("experts/0/checkpoints/step-000000005/manifest.json")


def test_a_prefix_without_an_owner_record_is_not_taken(run_store: Store) -> None:
    run_store.put_bytes(layout.SPEC, b"{}")  # e.g. written by `atoll run --local` or an older operator
    with pytest.raises(storage.RunSetupError) as conflict:
        storage.ensure_spec(run_store, spec(), owner=FIRST)
    assert conflict.value.reason == "StoreConflict"
    assert "no owner record" in conflict.value.message
    assert not run_store.exists(layout.OWNER)
    with pytest.raises(storage.RunSetupError, match="no owner record"):
        storage.reclaim(run_store, FIRST.uid)
    assert run_store.exists(layout.SPEC)


def test_only_the_owner_reclaims(run_store: Store) -> None:
    storage.ensure_spec(run_store, spec(), owner=FIRST)
    run_store.put_bytes("data/cluster-0/shard-00000.safetensors", b"x")
    for uid in ("uid-2", ""):
        with pytest.raises(storage.RunSetupError, match="belongs to"):
            storage.reclaim(run_store, uid)
        assert run_store.exists("data/cluster-0/shard-00000.safetensors")
    run_store.put_bytes(layout.OWNER, b"not json")
    with pytest.raises(storage.RunSetupError):
        storage.reclaim(run_store, FIRST.uid)
    run_store.put_json(layout.OWNER, FIRST.record())
    storage.reclaim(run_store, FIRST.uid)
    assert run_store.list_objects("") == []


@pytest.mark.minio
def test_a_query_in_the_storage_uri_cannot_reach_other_runs(minio_bucket: str, s3_env: dict[str, str]) -> None:
    """Two runs under one root in MinIO; the second one's storage.uri ends in `?x`. On the code
    before the URI rules, urlsplit moved `/<namespace>/<run>` into the query, so the second
    run's prefix was the shared root and reclaiming it erased the first run's data."""
    root = f"s3://{minio_bucket}/runs"
    kept = open_store(f"{root}/team/kept")
    kept.put_json(layout.OWNER, storage.RunOwner("team", "kept", "uid-kept").record())
    kept.put_bytes(layout.SPEC, b"{}")
    kept.put_bytes("experts/0/checkpoints/step-000000100/manifest.json", b"{}")
    hostile = spec().model_copy(
        update={"storage": StorageSpec.model_construct(uri=f"{root}?x", secret_ref="minio", reclaim_policy="Delete")}
    )  # as if an older API server had admitted it: model_construct skips validation
    settings = OperatorSettings()
    env = {key: value for key, value in s3_env.items() if key.startswith("MINIO_")}
    refusal: storage.RunSetupError | None = None
    try:  # the operator's path from a deleted run's spec to its data (reclaimPolicy: Delete)
        target = storage.store_target(hostile, "team", "hostile", settings)
        store = storage.open_run_store(target, env)
        store.delete_prefix("")
    except storage.RunSetupError as error:
        refusal = error
    survivors = {info.key for info in open_store(root).list_objects("")}
    assert "team/kept/experts/0/checkpoints/step-000000100/manifest.json" in survivors, "another run's data was erased"
    assert "team/kept/owner.json" in survivors
    assert refusal is not None, "the hostile prefix was opened"
    assert refusal.reason == "StoreInvalid"
    assert "query" in refusal.message
