"""The Store interface contract, run identically on the local directory and on MinIO."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from atoll.store import NotFoundError, ObjectInfo, Store


def test_bytes_round_trip_and_overwrite(store: Store) -> None:
    store.put_bytes("a/b/c.bin", b"one")
    assert store.get_bytes("a/b/c.bin") == b"one"
    store.put_bytes("a/b/c.bin", b"two!")
    assert store.get_bytes("a/b/c.bin") == b"two!"
    store.put_bytes("empty", b"")
    assert store.get_bytes("empty") == b""
    assert store.exists("a/b/c.bin")
    assert store.exists("empty")
    assert not store.exists("a/b")  # a "directory" is not an object
    assert not store.exists("a/b/missing")


def test_missing_key_raises_not_found_naming_the_uri(store: Store, tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="nothing/here"):
        store.get_bytes("nothing/here")
    with pytest.raises(NotFoundError):
        store.get_file("nothing/here", tmp_path / "out")
    with pytest.raises(NotFoundError):
        b"".join(store.read_chunks("nothing/here"))
    assert not (tmp_path / "out").exists()
    with pytest.raises(NotFoundError):
        store.get_json("nothing.json")


def test_file_round_trip_streams_and_hashes(store: Store, tmp_path: Path) -> None:
    data = os.urandom(3 << 20)  # several chunks / parts
    source = tmp_path / "weights.bin"
    source.write_bytes(data)
    assert store.put_file_sha256("ckpt/weights.bin", source) == hashlib.sha256(data).hexdigest()
    store.put_file("ckpt/copy.bin", source)
    target = tmp_path / "down" / "weights.bin"
    store.get_file("ckpt/weights.bin", target)
    assert target.read_bytes() == data
    assert b"".join(store.read_chunks("ckpt/copy.bin", chunk_size=1 << 20)) == data
    assert [p.name for p in target.parent.iterdir()] == ["weights.bin"]  # no temp files left


def test_listing_is_recursive_sorted_and_prefix_based(store: Store) -> None:
    for key in ["b/2", "a/1", "a/sub/3", "ab/4", "c"]:
        store.put_bytes(key, key.encode())
    assert store.list_objects() == [
        ObjectInfo("a/1", 3),
        ObjectInfo("a/sub/3", 7),
        ObjectInfo("ab/4", 4),
        ObjectInfo("b/2", 3),
        ObjectInfo("c", 1),
    ]
    assert [i.key for i in store.list_objects("a/")] == ["a/1", "a/sub/3"]
    assert [i.key for i in store.list_objects("a")] == ["a/1", "a/sub/3", "ab/4"]
    assert store.list_objects("zzz/") == []
    assert store.list_dirs("") == ["a", "ab", "b"]
    assert store.list_dirs("a") == ["sub"]


def test_delete_and_delete_prefix(store: Store) -> None:
    for key in ["x/1", "x/2", "x/y/3", "xz"]:
        store.put_bytes(key, b".")
    store.delete("x/1")
    store.delete("x/1")  # absent: not an error
    assert not store.exists("x/1")
    store.delete_prefix("x/")
    assert [i.key for i in store.list_objects()] == ["xz"]


def test_child_is_rooted_inside_its_parent(store: Store) -> None:
    run = store.child("runs/demo")
    run.put_json("spec.json", {"b": 1, "a": [1, 2]})
    assert store.get_json("runs/demo/spec.json") == {"a": [1, 2], "b": 1}
    assert [i.key for i in run.list_objects()] == ["spec.json"]
    assert run.uri_of("spec.json") == store.uri_of("runs/demo/spec.json")
    assert run.child("x").uri.endswith("runs/demo/x")


@pytest.mark.parametrize("key", ["", "/", "a//b", "../escape", "a/./b", "a/../b"])
def test_invalid_keys_are_refused(store: Store, key: str) -> None:
    with pytest.raises(ValueError, match="invalid store key"):
        store.put_bytes(key, b"x")
