"""Defence in depth: whatever validated a URI before, the stores themselves refuse a root or a
child prefix that could point anywhere but under the root they were given."""

from __future__ import annotations

from pathlib import Path

import pytest

from atoll.store import LocalStore, Store, StoreError, open_store
from atoll.store.s3 import S3Store

ENV = {"MINIO_ENDPOINT": "127.0.0.1:1", "MINIO_ACCESS_KEY": "a", "MINIO_SECRET_KEY": "b"}


@pytest.mark.parametrize(
    ("uri", "why"),
    [
        ("s3://atoll/runs?x/team/run", "query"),
        ("s3://atoll/runs#x/team/run", "fragment"),
        ("s3://atoll/runs/../team/run", "'..'"),
        ("s3://atoll//team/run", "empty"),
        ("s3://atoll/runs%2F../run", "percent"),
        ("s3://atoll/runs /run", "whitespace"),
    ],
)
def test_s3_roots_that_escape_are_refused_before_any_request(uri: str, why: str) -> None:
    with pytest.raises(StoreError, match=why):
        S3Store.from_uri(uri, env=ENV)
    with pytest.raises(StoreError, match=why):
        open_store(uri)


def test_local_roots_refuse_what_changes_the_path(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="control character"):
        LocalStore(f"{tmp_path}/runs\x00/other")
    with pytest.raises(StoreError, match="backslash"):
        open_store(f"{tmp_path}\\runs")
    assert LocalStore(tmp_path / "My Runs").uri.endswith("My Runs"), "a person's workdir may hold spaces"


@pytest.mark.parametrize("prefix", ["..", "team/../other", "", "/", "team//run", ".", "run?x"])
def test_child_prefixes_stay_under_the_root(store: Store, prefix: str) -> None:
    with pytest.raises(StoreError, match="invalid child prefix"):
        store.child(prefix)
    assert store.child("team/run").uri.endswith("/team/run")
