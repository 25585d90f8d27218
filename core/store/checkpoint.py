"""Checkpoints of a training stage in the store: commit protocol, verification, retention.

A checkpoint is `<stage>/checkpoints/step-<N>/`: its files, then `manifest.json` written
LAST with the size and sha256 of every file, the step, the attempt and the time. It exists
only once its manifest exists and every file matches; readers take the newest valid one
and fall back past partial or corrupt ones, logging why.

Fencing (see atoll.store.fencing): an attempt claims `<stage>/attempt.json` when the
CheckpointStore opens; the upload worker checks the fence before every file, before the
manifest and before retention. Data files go under a per-attempt name,
`step-<N>/attempt-<a>/<file>`, recorded in the manifest, so a stale attempt's stray files
can never overwrite a newer attempt's committed ones; a stale manifest that lands after a
newer claim (the check and the write are not atomic) is rejected by readers, because the
claim lists the checkpoints it inherited. The worst a stale attempt can do is make one
newer checkpoint invalid, never make a corrupt or foreign one look valid.
Deletion (retention) removes the manifest first, so a half-deleted checkpoint is never valid.
A manifest whose file names or objects leave the checkpoint's directory is corrupt
(atoll.store.manifest): readers fall back past it, and restore() never writes outside its
target directory.
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import json
import queue
import shutil
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from atoll import layout
from atoll.api.spec import RetentionSpec
from atoll.log import get_logger
from atoll.store.base import NotFoundError, Store, StoreError, join_key
from atoll.store.commits import CommitRecord, CommitStats
from atoll.store.fencing import Claim, check_fence, claim, read_claim
from atoll.store.manifest import (
    MANIFEST,
    Checkpoint,
    CorruptCheckpointError,
    check_sizes,
    inside,
    manifest_document,
    parse_manifest,
)
from atoll.store.retention import kept_steps

log = get_logger(__name__)

_STEP_PREFIX = "step-"


@dataclass(frozen=True)
class _Job:
    step: int
    staged: Path
    files: list[tuple[str, Path]]
    bytes: int
    metadata: dict[str, Any]
    stall_seconds: float


class CheckpointStore:
    """The checkpoints of one training stage (`experts/<k>` or `router`) in a store.

    Opening claims the stage for `attempt` (fencing); `read_only=True` claims nothing and
    refuses commit(), for readers such as the operator or the assemble stage.
    """

    def __init__(
        self,
        store: Store,
        stage_prefix: str,
        *,
        attempt: int | None = None,
        retention: RetentionSpec | None = None,
        max_pending: int = 1,
        read_only: bool = False,
    ) -> None:
        if max_pending < 1:
            raise ValueError(f"max_pending must be >= 1, got {max_pending}")
        self.store = store
        self.stage_prefix = stage_prefix.strip("/")
        self.retention = retention
        self.read_only = read_only
        self.stats = CommitStats()
        self._claim: Claim | None = None
        if read_only:
            self.attempt = attempt if attempt is not None else read_claim(store, self.stage_prefix).attempt
        else:
            self._claim = claim(store, self.stage_prefix, attempt, self._committed_pairs())
            self.attempt = self._claim.attempt
        self._slots = threading.Semaphore(max_pending)
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._error: BaseException | None = None
        self._closed = False
        self._worker: threading.Thread | None = None

    # --- reading -----------------------------------------------------------------------

    def list(self) -> builtins.list[Checkpoint]:
        """Committed checkpoints (manifest present and readable), oldest first; not verified."""
        found = []
        for step, key in self._manifest_steps():
            try:
                found.append(self._read_manifest(step, key))
            except CorruptCheckpointError as error:
                log.warning("checkpoint skipped", checkpoint=self.store.uri_of(key), reason=str(error))
        return found

    def latest(self) -> Checkpoint | None:
        """The newest valid checkpoint: manifest present, admitted by the fence, every file
        present with its size, and every sha256 matching (read back from the store)."""
        for checkpoint in self._candidates():
            try:
                for entry in checkpoint.files.values():
                    digest = hashlib.sha256()
                    for chunk in self.store.read_chunks(entry.key):
                        digest.update(chunk)
                    if digest.hexdigest() != entry.sha256:
                        raise CorruptCheckpointError(f"{entry.name}: sha256 does not match the manifest")
            except (CorruptCheckpointError, NotFoundError) as error:
                self._skip(checkpoint.key, error)
                continue
            return checkpoint
        return None

    def restore(self, checkpoint: Checkpoint, directory: Path) -> Path:
        """Download every file of `checkpoint` into `directory`, verifying size and sha256 on
        the fly; CorruptCheckpointError if any differs (no partial file is left behind) or if a
        file would land outside `directory` (symbolic links included)."""
        directory.mkdir(parents=True, exist_ok=True)
        root = directory.resolve()
        for entry in checkpoint.files.values():
            target = inside(root, entry.name)
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(f".{target.name}.partial")
            digest, size = hashlib.sha256(), 0
            try:
                with partial.open("wb") as sink:
                    for chunk in self.store.read_chunks(entry.key):
                        digest.update(chunk)
                        size += len(chunk)
                        sink.write(chunk)
                if size != entry.size or digest.hexdigest() != entry.sha256:
                    raise CorruptCheckpointError(
                        f"{self.store.uri_of(entry.key)}: {size} bytes with sha256 {digest.hexdigest()[:12]}…, "
                        f"manifest says {entry.size} bytes with {entry.sha256[:12]}…"
                    )
                partial.replace(target)
            except NotFoundError as error:
                raise CorruptCheckpointError(f"{entry.name} is missing: {error}") from error
            finally:
                partial.unlink(missing_ok=True)
        return directory

    def restore_latest(self, directory: Path) -> Checkpoint | None:
        """Restore the newest valid checkpoint into `directory`, reading each file once
        (verified while downloading) and falling back past corrupt ones; None if none."""
        for checkpoint in self._candidates():
            try:
                self.restore(checkpoint, directory)
            except CorruptCheckpointError as error:
                self._skip(checkpoint.key, error)
                for entry in checkpoint.files.values():
                    with contextlib.suppress(CorruptCheckpointError):
                        inside(directory.resolve(), entry.name).unlink(missing_ok=True)
                continue
            return checkpoint
        return None

    # --- writing -----------------------------------------------------------------------

    def commit(self, step: int, staged: Path, metadata: dict[str, Any] | None = None) -> None:
        """Upload the files under `staged` as the checkpoint of `step`, in the background.

        Takes ownership of `staged` (deleted once uploaded or failed) unless this call raises.
        Blocks while `max_pending` commits are in flight; raises the error of an earlier
        commit (FencedError when a newer attempt claimed the stage).
        """
        if self.read_only:
            raise StoreError(f"{self.store.uri_of(self.stage_prefix)} was opened read-only; commit() refused")
        if self._closed:
            raise RuntimeError("commit() after close()")
        self._raise_error()
        if step < 0:
            raise ValueError(f"checkpoint step must be >= 0, got {step}")
        if not staged.is_dir():
            raise ValueError(f"staged checkpoint {staged} is not a directory")
        metadata = dict(metadata or {})
        try:
            json.dumps(metadata)
        except (TypeError, ValueError) as error:
            raise ValueError(f"checkpoint metadata must be JSON-serialisable: {error}") from error
        files = sorted((p.relative_to(staged).as_posix(), p) for p in staged.rglob("*") if p.is_file())
        if not files:
            raise ValueError(f"staged checkpoint {staged} holds no files")
        if any(name == MANIFEST for name, _ in files):
            raise ValueError(f"staged checkpoint {staged} must not contain {MANIFEST} (written by the store)")
        size = sum(path.stat().st_size for _, path in files)
        started = time.monotonic()
        self._slots.acquire()
        stall = time.monotonic() - started
        self._ensure_worker()
        self._queue.put(_Job(step=step, staged=staged, files=files, bytes=size, metadata=metadata, stall_seconds=stall))

    def flush(self) -> None:
        """Wait until every commit is uploaded; raise the first error."""
        if self._worker is not None:
            self._queue.join()
        self._raise_error()

    def close(self) -> None:
        """Flush and stop the upload worker."""
        if self._closed:
            return
        try:
            self.flush()
        finally:
            self._closed = True
            if self._worker is not None:
                self._queue.put(None)
                self._worker.join()

    def __enter__(self) -> CheckpointStore:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if kind is None:
            self.close()
            return
        # Already failing: wait for the uploads, but do not mask the original error.
        try:
            self.close()
        except Exception as close_error:
            log.warning("checkpoint upload failed while the stage was failing", error=str(close_error))

    # --- internals ---------------------------------------------------------------------

    def _raise_error(self) -> None:
        error, self._error = self._error, None
        if error is not None:
            raise error

    def _ensure_worker(self) -> None:
        if self._worker is None:
            self._worker = threading.Thread(target=self._work, name=f"checkpoint-upload:{self.stage_prefix}")
            self._worker.daemon = True
            self._worker.start()

    def _work(self) -> None:
        while (job := self._queue.get()) is not None:
            started = time.monotonic()
            error: BaseException | None = None
            try:
                self._upload(job)
            except BaseException as failure:  # surfaced on the training thread
                error = failure
                if self._error is None:
                    self._error = failure
                log.error("checkpoint commit failed", step=job.step, error=str(failure))
            finally:
                shutil.rmtree(job.staged, ignore_errors=True)
                self.stats.commits.append(
                    CommitRecord(
                        step=job.step,
                        files=len(job.files),
                        bytes=job.bytes,
                        stall_seconds=job.stall_seconds,
                        upload_seconds=time.monotonic() - started,
                        error=None if error is None else str(error),
                    )
                )
                self._slots.release()
                self._queue.task_done()
        self._queue.task_done()

    def _upload(self, job: _Job) -> None:
        assert self._claim is not None
        key = layout.checkpoint(self.stage_prefix, job.step)
        manifest_key = join_key(key, MANIFEST)
        attempt_dir = f"attempt-{self.attempt:06d}"
        check_fence(self.store, self.stage_prefix, self._claim)
        previous = self._try_read_manifest(job.step, key)
        if previous is not None and previous.attempt == self.attempt:
            # Our own attempt committed this step before (a re-run): its files are about to
            # be overwritten, so the old manifest must go first.
            self.store.delete(manifest_key)
        entries: dict[str, dict[str, Any]] = {}
        total = 0
        for name, path in job.files:
            check_fence(self.store, self.stage_prefix, self._claim)
            size = path.stat().st_size
            obj = f"{attempt_dir}/{name}"
            digest = self.store.put_file_sha256(join_key(key, obj), path)
            entries[name] = {"size": size, "sha256": digest, "object": obj}
            total += size
        manifest = manifest_document(job.step, self.attempt, datetime.now(UTC), entries, job.metadata)
        check_fence(self.store, self.stage_prefix, self._claim)
        self.store.put_json(manifest_key, manifest)
        log.info("checkpoint committed", checkpoint=self.store.uri_of(key), attempt=self.attempt, bytes=total)
        # Files of older attempts at this step are garbage now.
        referenced = {join_key(key, entry["object"]) for entry in entries.values()} | {manifest_key}
        for info in self.store.list_objects(key + "/"):
            if info.key not in referenced and not self._newer_attempt_object(key, info.key):
                self.store.delete(info.key)
        if self.retention is not None:
            check_fence(self.store, self.stage_prefix, self._claim)
            self._apply_retention(self.retention)

    def _newer_attempt_object(self, key: str, object_key: str) -> bool:
        first = object_key[len(key) + 1 :].split("/", 1)[0]
        if not first.startswith("attempt-"):
            return False
        try:
            return int(first[len("attempt-") :]) > self.attempt
        except ValueError:
            return False

    def _apply_retention(self, retention: RetentionSpec) -> None:
        """Delete committed checkpoints outside the kept set, and partial ones older than the
        newest committed (crash leftovers). Manifests go first."""
        by_step = self._step_dirs()
        committed = sorted(step for step, (_, has_manifest) in by_step.items() if has_manifest)
        if not committed:
            return
        keep = kept_steps(committed, retention)
        for step, (key, has_manifest) in sorted(by_step.items()):
            if step in keep or (not has_manifest and step > committed[-1]):
                continue
            if has_manifest:
                self.store.delete(join_key(key, MANIFEST))
            self.store.delete_prefix(key + "/")
            log.info("checkpoint deleted by retention", checkpoint=self.store.uri_of(key), committed=has_manifest)

    def _step_dirs(self) -> dict[int, tuple[str, bool]]:
        """step → (checkpoint key, manifest present), from one listing."""
        root = layout.checkpoints(self.stage_prefix) + "/"
        found: dict[int, tuple[str, bool]] = {}
        for info in self.store.list_objects(root):
            name, _, rest = info.key[len(root) :].partition("/")
            if not name.startswith(_STEP_PREFIX):
                continue
            try:
                step = int(name[len(_STEP_PREFIX) :])
            except ValueError:
                continue
            key = root + name
            _, has = found.get(step, (key, False))
            found[step] = (key, has or rest == MANIFEST)
        return found

    def _manifest_steps(self) -> builtins.list[tuple[int, str]]:
        return sorted((step, key) for step, (key, has) in self._step_dirs().items() if has)

    def _committed_pairs(self) -> builtins.list[tuple[int, int]]:
        return [(c.step, c.attempt) for c in self.list()]

    def _candidates(self) -> builtins.list[Checkpoint]:
        """Committed checkpoints, newest first, that pass the manifest, fence and size checks."""
        fence = read_claim(self.store, self.stage_prefix)
        candidates = []
        for step, key in reversed(self._manifest_steps()):
            try:
                checkpoint = self._read_manifest(step, key)
                if not fence.admits(checkpoint.step, checkpoint.attempt):
                    raise CorruptCheckpointError(
                        f"written by stale attempt {checkpoint.attempt} after attempt {fence.attempt} claimed the stage"
                    )
                check_sizes(checkpoint, {info.key: info.size for info in self.store.list_objects(key + "/")})
            except (CorruptCheckpointError, NotFoundError) as error:
                self._skip(key, error)
                continue
            candidates.append(checkpoint)
        return candidates

    def _skip(self, key: str, error: BaseException) -> None:
        log.warning(
            "checkpoint skipped, falling back to an older one", checkpoint=self.store.uri_of(key), reason=str(error)
        )

    def _try_read_manifest(self, step: int, key: str) -> Checkpoint | None:
        try:
            return self._read_manifest(step, key)
        except (NotFoundError, CorruptCheckpointError):
            return None

    def _read_manifest(self, step: int, key: str) -> Checkpoint:
        return parse_manifest(self.store.get_bytes(join_key(key, MANIFEST)), step, key)
