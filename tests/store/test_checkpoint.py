"""The checkpoint commit protocol on both backends: round trip, verification and fallback,
fencing, retention, asynchronous upload with backpressure."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import pytest

from atoll import layout
from atoll.api.spec import RetentionSpec
from atoll.store import (
    CheckpointStore,
    FencedError,
    Store,
    StoreError,
    StoreUnavailableError,
    join_key,
)
from atoll.store import checkpoint as checkpoint_module
from atoll.store.fencing import read_claim
from atoll.store.retention import kept_steps
from tests.store.conftest import GatedStore, RecordedLog

STAGE = "experts/0"


def stage_files(root: Path, step: int, files: dict[str, bytes] | None = None) -> Path:
    """A staged checkpoint directory as a training stage would write it."""
    staged = root / f"staged-{step}-{os.urandom(4).hex()}"
    for name, data in (files or {"model.safetensors": os.urandom(4096), "state/rng.json": b'{"seed": 1}'}).items():
        (staged / name).parent.mkdir(parents=True, exist_ok=True)
        (staged / name).write_bytes(data)
    return staged


def flip_byte(store: Store, key: str, at: int = 100) -> None:
    data = bytearray(store.get_bytes(key))
    data[at] ^= 0x01
    store.put_bytes(key, bytes(data))


def test_round_trip(store: Store, tmp_path: Path) -> None:
    files = {"model.safetensors": os.urandom(300_000), "ema.safetensors": os.urandom(1000), "state/data.json": b"{}"}
    with CheckpointStore(store, STAGE) as checkpoints:
        staged = stage_files(tmp_path, 400, files)
        checkpoints.commit(400, staged, {"loss": 0.25, "samples": 1280})
        checkpoints.flush()
        assert not staged.exists(), "the staged directory belongs to the store after commit()"
        [record] = checkpoints.stats.commits
        assert record.step == 400
        assert record.bytes == sum(map(len, files.values()))
        assert record.error is None

    [listed] = checkpoints.list()
    latest = CheckpointStore(store, STAGE, read_only=True).latest()
    assert latest == listed
    assert latest.step == 400
    assert latest.attempt == 1
    assert latest.key == layout.checkpoint(STAGE, 400)
    assert latest.metadata == {"loss": 0.25, "samples": 1280}
    assert {name: (f.size, f.sha256) for name, f in latest.files.items()} == {
        name: (len(data), hashlib.sha256(data).hexdigest()) for name, data in files.items()
    }
    manifest = store.get_json(join_key(latest.key, "manifest.json"))
    assert manifest["format"] == 1
    assert manifest["step"] == 400
    assert manifest["attempt"] == 1
    assert set(manifest["files"]) == set(files)
    assert "createdAt" in manifest

    restored = checkpoints.restore(latest, tmp_path / "restored")
    assert {p.relative_to(restored).as_posix(): p.read_bytes() for p in restored.rglob("*") if p.is_file()} == files


def test_uncommitted_checkpoint_is_invisible(store: Store, tmp_path: Path) -> None:
    checkpoints = CheckpointStore(store, STAGE)
    checkpoints.commit(100, stage_files(tmp_path, 100))
    checkpoints.flush()
    # A crash after the data files but before the manifest: files present, no manifest.
    store.put_bytes(join_key(layout.checkpoint(STAGE, 200), "attempt-000001/model.safetensors"), b"x" * 4096)
    assert [c.step for c in checkpoints.list()] == [100]
    latest = checkpoints.latest()
    assert latest is not None
    assert latest.step == 100


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_damaged_newest_checkpoint_falls_back(
    store: Store, tmp_path: Path, checkpoint_log: RecordedLog, damage: str
) -> None:
    with CheckpointStore(store, STAGE) as checkpoints:
        for step in (100, 200):
            checkpoints.commit(step, stage_files(tmp_path, step))
    newest = checkpoints.list()[-1]
    key = newest.files["model.safetensors"].key
    if damage == "flip":
        flip_byte(store, key)
    elif damage == "truncate":
        store.put_bytes(key, store.get_bytes(key)[:-1])
    else:
        store.delete(key)

    reader = CheckpointStore(store, STAGE, read_only=True)
    latest = reader.latest()
    assert latest is not None
    assert latest.step == 100
    [warning] = [w for w in checkpoint_log.warnings() if w["checkpoint"].endswith("step-000000200")]
    expected = {"flip": "sha256 does not match", "truncate": "4095 bytes", "delete": "missing"}[damage]
    assert expected in warning["reason"]
    assert "model.safetensors" in warning["reason"]

    restored = reader.restore_latest(tmp_path / "resume")
    assert restored is not None
    assert restored.step == 100
    data = (tmp_path / "resume" / "model.safetensors").read_bytes()
    assert hashlib.sha256(data).hexdigest() == restored.files["model.safetensors"].sha256


def test_restore_refuses_corrupt_file(store: Store, tmp_path: Path) -> None:
    with CheckpointStore(store, STAGE) as checkpoints:
        checkpoints.commit(100, stage_files(tmp_path, 100))
    [checkpoint] = checkpoints.list()
    flip_byte(store, checkpoint.files["model.safetensors"].key, at=4000)
    with pytest.raises(checkpoint_module.CorruptCheckpointError, match="sha256"):
        checkpoints.restore(checkpoint, tmp_path / "out")
    assert not (tmp_path / "out" / "model.safetensors").exists()
    assert checkpoints.restore_latest(tmp_path / "out2") is None


def test_stale_attempt_is_fenced(store: Store, tmp_path: Path) -> None:
    old = CheckpointStore(store, STAGE)
    old.commit(100, stage_files(tmp_path, 100))
    old.flush()
    new = CheckpointStore(store, STAGE)
    assert (old.attempt, new.attempt) == (1, 2)
    assert read_claim(store, STAGE).attempt == 2

    with pytest.raises(FencedError, match=r"attempt 1 .* is stale"):
        CheckpointStore(store, STAGE, attempt=1)
    old.commit(200, stage_files(tmp_path, 200))
    with pytest.raises(FencedError, match="attempt 2 claimed"):
        old.flush()
    assert not store.list_objects(layout.checkpoint(STAGE, 200))

    # The new attempt resumes from what it inherited and commits normally.
    assert new.latest() is not None
    new.commit(200, stage_files(tmp_path, 200))
    new.close()
    assert [(c.step, c.attempt) for c in new.list()] == [(100, 1), (200, 2)]
    # A re-run with the same explicit attempt is not stale.
    assert CheckpointStore(store, STAGE, attempt=2).attempt == 2


def test_stale_manifest_landing_after_a_claim_is_ignored(
    store: Store, tmp_path: Path, checkpoint_log: RecordedLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fence check and the manifest write are not atomic: an old attempt may pass its
    check, stall, and write after a newer attempt claimed. Readers must not take that."""
    old = CheckpointStore(store, STAGE)
    old.commit(100, stage_files(tmp_path, 100, {"model.safetensors": b"old-100" * 100}))
    old.flush()
    new = CheckpointStore(store, STAGE)
    new.commit(200, stage_files(tmp_path, 200, {"model.safetensors": b"new-200" * 100}))
    new.flush()

    monkeypatch.setattr(checkpoint_module, "check_fence", lambda *args: None)  # the old one's check "passed"
    old.commit(300, stage_files(tmp_path, 300, {"model.safetensors": b"old-300" * 100}))
    old.commit(200, stage_files(tmp_path, 200, {"model.safetensors": b"old-200" * 100}))
    old.flush()

    latest = CheckpointStore(store, STAGE, read_only=True).latest()
    assert latest is not None
    assert (latest.step, latest.attempt) == (100, 1)
    reasons = " ".join(w["reason"] for w in checkpoint_log.warnings())
    assert "stale attempt 1 after attempt 2 claimed" in reasons
    # The newer attempt's data files were never overwritten by the stale one.
    new_file = join_key(layout.checkpoint(STAGE, 200), "attempt-000002/model.safetensors")
    assert store.get_bytes(new_file) == b"new-200" * 100


def test_retention_keeps_last_n_and_every_mth(store: Store, tmp_path: Path) -> None:
    retention = RetentionSpec(last=3, every=40)
    with CheckpointStore(store, STAGE, retention=retention, max_pending=2) as checkpoints:
        # Leftover of a crashed earlier upload (no manifest): removed by retention.
        store.put_bytes(join_key(layout.checkpoint(STAGE, 5), "attempt-000000/model.safetensors"), b"partial")
        for step in range(10, 210, 10):
            checkpoints.commit(step, stage_files(tmp_path, step, {"w": os.urandom(64)}))
    expected = {40, 80, 120, 160, 200, 180, 190}
    assert {c.step for c in checkpoints.list()} == expected
    dirs = store.list_dirs(layout.checkpoints(STAGE))
    assert dirs == [f"step-{step:09d}" for step in sorted(expected)]
    assert len(checkpoints.stats.commits) == 20


def test_kept_steps() -> None:
    assert kept_steps([1, 2, 3], RetentionSpec(last=5)) == {1, 2, 3}
    assert kept_steps(range(100, 1100, 100), RetentionSpec(last=2, every=0)) == {900, 1000}
    assert kept_steps(range(100, 1100, 100), RetentionSpec(last=1, every=300)) == {300, 600, 900, 1000}


def test_commit_blocks_when_uploads_lag(store: Store, tmp_path: Path) -> None:
    gated = GatedStore(store)
    gated.gate.clear()
    checkpoints = CheckpointStore(gated, STAGE, max_pending=1)
    checkpoints.commit(100, stage_files(tmp_path, 100))  # returns at once: the upload runs behind
    assert gated.uploading.wait(timeout=30)
    second = threading.Thread(target=checkpoints.commit, args=(200, stage_files(tmp_path, 200)))
    second.start()
    second.join(timeout=0.5)
    assert second.is_alive(), "a second commit must wait while max_pending=1 commit is in flight"
    gated.gate.set()
    second.join(timeout=60)
    checkpoints.close()
    assert [c.step for c in checkpoints.list()] == [100, 200]
    first, later = checkpoints.stats.commits
    assert first.stall_seconds < later.stall_seconds
    assert later.stall_seconds >= 0.5


def test_upload_error_surfaces_on_next_call(store: Store, tmp_path: Path) -> None:
    gated = GatedStore(store)
    gated.fail_uploads = StoreUnavailableError("MinIO at 127.0.0.1:1 unreachable for 300 s")
    checkpoints = CheckpointStore(gated, STAGE)
    staged = stage_files(tmp_path, 100)
    checkpoints.commit(100, staged)
    with pytest.raises(StoreUnavailableError, match="unreachable"):
        checkpoints.flush()
    assert not staged.exists()
    assert checkpoints.list() == []
    assert checkpoints.stats.commits[0].error is not None
    gated.fail_uploads = None
    checkpoints.commit(200, stage_files(tmp_path, 200))
    checkpoints.close()
    assert [c.step for c in checkpoints.list()] == [200]


def test_bad_commits_are_refused_and_change_nothing(store: Store, tmp_path: Path) -> None:
    checkpoints = CheckpointStore(store, STAGE)
    staged = stage_files(tmp_path, 1)
    with pytest.raises(ValueError, match="JSON"):
        checkpoints.commit(1, staged, {"bad": object()})
    with pytest.raises(ValueError, match="step must be >= 0"):
        checkpoints.commit(-1, staged)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no files"):
        checkpoints.commit(1, tmp_path / "empty")
    (staged / "manifest.json").write_text("{}")
    with pytest.raises(ValueError, match=r"manifest\.json"):
        checkpoints.commit(1, staged)
    assert staged.exists()
    checkpoints.close()
    assert store.list_objects(layout.checkpoints(STAGE)) == []
    with pytest.raises(RuntimeError, match="after close"):
        checkpoints.commit(1, staged)


def test_read_only_claims_nothing(store: Store, tmp_path: Path) -> None:
    reader = CheckpointStore(store, STAGE, read_only=True)
    assert reader.latest() is None
    assert reader.list() == []
    assert not store.exists(join_key(STAGE, "attempt.json"))
    with pytest.raises(StoreError, match="read-only"):
        reader.commit(1, stage_files(tmp_path, 1))
