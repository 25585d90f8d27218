"""A checkpoint manifest is data from the store, not trusted code: entries whose file names or
objects leave the checkpoint's directory make the checkpoint corrupt (readers fall back to
the previous one), and restore() never writes outside its target directory."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from atoll import layout
from atoll.store import CheckpointStore, CorruptCheckpointError, Store, join_key
from tests.store.test_checkpoint import STAGE, stage_files

Entries = dict[str, dict[str, Any]]


def _rename(old: str, new: str) -> Callable[[Entries], Entries]:
    def change(files: Entries) -> Entries:
        files[new] = files.pop(old)
        return files

    return change


def _object(name: str, target: str) -> Callable[[Entries], Entries]:
    def change(files: Entries) -> Entries:
        files[name]["object"] = target
        return files

    return change


OLDER = "../step-000000100/attempt-000001/model.safetensors"
HOSTILE = {
    "name climbs out": _rename("model.safetensors", "../../../escaped.safetensors"),
    "absolute name": _rename("model.safetensors", "/tmp/escaped.safetensors"),
    "name with a backslash": _rename("model.safetensors", "..\\escaped.safetensors"),
    "empty segment": _rename("model.safetensors", "state//model.safetensors"),
    "object in another checkpoint": _object("model.safetensors", OLDER),
    "absolute object": _object("model.safetensors", "/runs/other/model.safetensors"),
    "object not a string": _object("model.safetensors", ["attempt-000001", "model.safetensors"]),  # type: ignore[arg-type]
}


@pytest.mark.parametrize("change", list(HOSTILE.values()), ids=list(HOSTILE))
def test_escaping_manifest_is_corrupt_and_readers_fall_back(
    store: Store, tmp_path: Path, change: Callable[[Entries], Entries]
) -> None:
    same = {"model.safetensors": os.urandom(2048), "state/rng.json": b"{}"}
    with CheckpointStore(store, STAGE) as checkpoints:
        checkpoints.commit(100, stage_files(tmp_path, 100, same))
        checkpoints.commit(200, stage_files(tmp_path, 200, same))  # same bytes: every sha256 still matches
    manifest_key = join_key(layout.checkpoint(STAGE, 200), "manifest.json")
    manifest = store.get_json(manifest_key)
    manifest["files"] = change(manifest["files"])
    store.put_json(manifest_key, manifest)

    reader = CheckpointStore(store, STAGE, read_only=True)
    assert [c.step for c in reader.list()] == [100], "the escaping manifest is not a checkpoint"
    latest = reader.latest()
    assert latest is not None
    assert latest.step == 100
    target = tmp_path / "work" / "restore"
    restored = reader.restore_latest(target)
    assert restored is not None
    assert restored.step == 100
    assert sorted(p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file()) == [
        "model.safetensors",
        "state/rng.json",
    ]
    outside = [p for p in tmp_path.rglob("escaped*")] + list(Path("/tmp").glob("escaped.safetensors"))
    assert outside == [], "nothing was written outside the restore directory"


def test_restore_never_follows_a_link_out_of_its_directory(store: Store, tmp_path: Path) -> None:
    with CheckpointStore(store, STAGE) as checkpoints:
        checkpoints.commit(100, stage_files(tmp_path, 100, {"model/weights.bin": b"w" * 64}))
    checkpoint = CheckpointStore(store, STAGE, read_only=True).latest()
    assert checkpoint is not None
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    target = tmp_path / "restore"
    target.mkdir()
    (target / "model").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(CorruptCheckpointError, match="outside"):
        CheckpointStore(store, STAGE, read_only=True).restore(checkpoint, target)
    assert list(elsewhere.iterdir()) == []
