"""The operator's side of a run's store: where it is, its credentials, its owner record,
spec.json, reading progress, checkpoints and partition results, and reclaiming it.

Credentials come from the run's Secret and go straight into the store client: they are
never logged, put in status or events, or written anywhere. The operator reads the Secret
so that it can write spec.json itself and follow the stages through the store.

Ownership: the first time a run's prefix is set up, owner.json records the DDMRun
(namespace, name, UID) before anything else is written; it is never rewritten for another
UID. A run only ever deletes a prefix whose owner.json names its own UID, and never starts
in a prefix another DDMRun owns (or one without a record) unless spec.storage.adoptRetained
says so, and even then it does not become the owner.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from atoll import layout
from atoll.api.load import dump_spec_json
from atoll.api.spec import API_GROUP_VERSION, DDMRunSpec
from atoll.api.status import CheckpointStatus
from atoll.api.uris import uri_problem
from atoll.errors import AtollError
from atoll.operator.settings import OperatorSettings
from atoll.progress import StageProgress
from atoll.store import NotFoundError, Store, StoreAuthError, StoreError, open_store
from atoll.store.checkpoint import CheckpointStore
from atoll.store.fencing import read_claim
from atoll.store.retry import RetryPolicy

REQUIRED_KEYS = ("accessKey", "secretKey", "endpoint")

OPERATOR_RETRY = RetryPolicy(deadline_seconds=4.0, base_seconds=0.2, cap_seconds=1.0)
"""The operator must not sit in one run's store retries for minutes: a short deadline, then
the run shows Degraded and the next tick tries again."""


class RunSetupError(AtollError):
    """The run's store cannot be used as given; `reason` is a CamelCase word for status."""

    def __init__(self, reason: str, message: str, *, permanent: bool) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.permanent = permanent


@dataclass(frozen=True, slots=True)
class StoreTarget:
    """Where one run keeps its state."""

    root: str
    """Store root: spec.storage.uri, or the operator's --default-store."""
    secret: str | None
    """Secret (in the run's namespace) with the credentials of an s3:// root."""
    run_uri: str
    """<root>/<namespace>/<run>: the run's prefix (namespaced, so equal names never collide)."""

    @property
    def spec_uri(self) -> str:
        return f"{self.run_uri}/{layout.SPEC}"

    @property
    def s3(self) -> bool:
        return self.root.startswith("s3://")


def store_target(spec: DDMRunSpec, namespace: str, name: str, settings: OperatorSettings) -> StoreTarget:
    """The run's store from its spec and the operator's defaults."""
    root = spec.storage.uri or settings.default_store
    if not root:
        raise RunSetupError(
            "NoStore",
            "spec.storage.uri is empty and the operator runs without --default-store: set one of them",
            permanent=True,
        )
    secret = spec.storage.secret_ref if spec.storage.uri else settings.default_store_secret
    if root.startswith("s3://") and not secret:
        where = "spec.storage.secretRef" if spec.storage.uri else "the operator's --default-store-secret"
        raise RunSetupError("NoStoreSecret", f"{root} is an S3 store: {where} must name its Secret", permanent=True)
    run_uri = f"{root.rstrip('/')}/{namespace}/{name}"
    if problem := uri_problem(run_uri):
        # Defence in depth: the API server and the models refuse such a root already.
        raise RunSetupError("StoreInvalid", f"the run's store prefix {run_uri!r} {problem}", permanent=True)
    return StoreTarget(root=root, secret=secret, run_uri=run_uri)


def credentials(secret: Mapping[str, Any] | None, name: str, namespace: str) -> dict[str, str]:
    """MINIO_* variables from a Secret body (never logged); RunSetupError naming what is missing."""
    if secret is None:
        raise RunSetupError(
            "SecretNotFound",
            f"Secret {name} not found in namespace {namespace} (it must hold {', '.join(REQUIRED_KEYS)})",
            permanent=True,
        )
    data = {key: base64.b64decode(value).decode() for key, value in (secret.get("data") or {}).items()}
    data.update(secret.get("stringData") or {})
    missing = [key for key in REQUIRED_KEYS if not data.get(key)]
    if missing:
        raise RunSetupError(
            "SecretIncomplete", f"Secret {namespace}/{name} has no {', '.join(missing)}", permanent=True
        )
    env = {
        "MINIO_ENDPOINT": data["endpoint"],
        "MINIO_ACCESS_KEY": data["accessKey"],
        "MINIO_SECRET_KEY": data["secretKey"],
    }
    if data.get("secure"):
        env["MINIO_SECURE"] = data["secure"]
    return env


def open_run_store(target: StoreTarget, env: Mapping[str, str] | None) -> Store:
    """The run's store (rooted at its prefix), with the operator's short retry deadline."""
    try:
        if target.s3:
            from atoll.store.s3 import S3Store

            return S3Store.from_uri(target.run_uri, env=dict(env or {}), policy=OPERATOR_RETRY)
        return open_store(target.run_uri)
    except StoreError as error:
        raise RunSetupError("StoreInvalid", f"cannot open {target.run_uri}: {error}", permanent=True) from error


@dataclass(frozen=True, slots=True)
class RunOwner:
    """The DDMRun a run prefix belongs to, as owner.json records it."""

    namespace: str
    name: str
    uid: str

    def record(self) -> dict[str, str]:
        return {
            "apiVersion": API_GROUP_VERSION,
            "kind": "DDMRun",
            "namespace": self.namespace,
            "name": self.name,
            "uid": self.uid,
        }

    def __str__(self) -> str:
        return f"DDMRun {self.namespace}/{self.name} (uid {self.uid or 'unknown'})"


def read_owner(store: Store) -> RunOwner | None:
    """The owner recorded in the prefix; None when there is no record.

    An unreadable record is an owner nobody is (uid ""), so it is never taken for a match.
    """
    try:
        raw = store.get_json(layout.OWNER)
    except NotFoundError:
        return None
    except ValueError:
        return RunOwner(namespace="", name="", uid="")
    if not isinstance(raw, dict):
        return RunOwner(namespace="", name="", uid="")
    return RunOwner(
        namespace=str(raw.get("namespace", "")), name=str(raw.get("name", "")), uid=str(raw.get("uid") or "")
    )


def check_owner(store: Store, spec: DDMRunSpec, owner: RunOwner) -> bool:
    """Whether `owner` may use the prefix: True when owner.json must still be written (a fresh
    prefix), False when it is this run's (or adopted); RunSetupError when another DDMRun owns
    it or a run's data is there with no record."""
    recorded = read_owner(store)
    if recorded is not None and recorded.uid == owner.uid:
        return False
    adopt = spec.storage.adopt_retained
    if recorded is not None and not adopt:
        raise RunSetupError(
            "StoreConflict",
            f"{store.uri} belongs to {recorded}, not to this run (uid {owner.uid}): a deleted run of the same"
            " name left it (reclaimPolicy Retain). This run neither writes into it nor deletes it. Delete the"
            " prefix, rename the run, or set spec.storage.adoptRetained: true to continue it with the same spec"
            " (it stays that run's data)",
            permanent=True,
        )
    if recorded is None and store.exists(layout.SPEC):
        if adopt:
            return False
        raise RunSetupError(
            "StoreConflict",
            f"{store.uri} holds a run's data but no owner record (written by `atoll run --local` or an older"
            " operator). This run neither writes into it nor deletes it. Delete the prefix, rename the run, or"
            " set spec.storage.adoptRetained: true to continue it with the same spec",
            permanent=True,
        )
    return recorded is None


def stored_spec(store: Store, spec: DDMRunSpec, *, owner: RunOwner | None = None) -> bool:
    """Whether spec.json holds `spec` (False: there is none yet; StoreError if unreadable).

    With `owner`, first check that the prefix is this run's (see the module docstring).
    RunSetupError (permanent) if the prefix holds a different run's spec: its data and
    checkpoints would be mixed into this run.
    """
    if owner is not None:
        check_owner(store, spec, owner)
    try:
        stored = store.get_bytes(layout.SPEC)
    except NotFoundError:
        return False
    if _content(json.loads(stored)) != _content(json.loads(dump_spec_json(spec))):
        raise RunSetupError(
            "StoreConflict",
            f"{store.uri_of(layout.SPEC)} holds a different spec: another run used this name; delete that"
            " prefix or rename the run",
            permanent=True,
        )
    return True


def ensure_spec(store: Store, spec: DDMRunSpec, *, owner: RunOwner | None = None) -> bool:
    """Write spec.json unless the same spec is already there; True if it was written now.

    With `owner`, owner.json is written first in a fresh prefix (RunSetupError as
    `check_owner` / `stored_spec` otherwise).
    """
    if owner is not None and check_owner(store, spec, owner):
        store.put_json(layout.OWNER, owner.record())
    if stored_spec(store, spec):
        return False
    store.put_bytes(layout.SPEC, dump_spec_json(spec).encode())
    return True


def reclaim(store: Store, uid: str) -> None:
    """Delete the run's prefix if owner.json names `uid`; RunSetupError("ReclaimRefused") otherwise.

    owner.json goes last, so a reclaim that fails half-way can be repeated by the owner.
    """
    recorded = read_owner(store)
    if recorded is None:
        raise RunSetupError(
            "ReclaimRefused", f"{store.uri} has no owner record, so no run may delete it", permanent=True
        )
    if not uid or recorded.uid != uid:
        raise RunSetupError(
            "ReclaimRefused", f"{store.uri} belongs to {recorded}, not to this run (uid {uid})", permanent=True
        )
    for directory in store.list_dirs(""):
        store.delete_prefix(f"{directory}/")
    for info in store.list_objects(""):
        if info.key != layout.OWNER:
            store.delete(info.key)
    store.delete(layout.OWNER)


def _content(document: Any) -> Any:
    """A stored spec without the fields that say what becomes of the prefix, not what is in it."""
    if isinstance(document, dict) and isinstance(document.get("storage"), dict):
        storage = {k: v for k, v in document["storage"].items() if k not in ("adoptRetained", "reclaimPolicy")}
        return {**document, "storage": storage}
    return document


def classify_store_error(error: StoreError, target: StoreTarget) -> RunSetupError:
    """A store failure as the run sees it: bad credentials are final, an outage is not."""
    if isinstance(error, StoreAuthError):
        return RunSetupError("StoreAccessDenied", f"{target.root} refused the credentials: {error}", permanent=True)
    return RunSetupError("StoreUnavailable", f"{target.root} is unreachable: {error}", permanent=False)


def read_progress(store: Store, stage: str, expert: int | None) -> StageProgress | None:
    """A stage's heartbeat; None if it has none (StoreError if the store cannot be read)."""
    try:
        raw = store.get_bytes(layout.progress(layout.stage_prefix(stage, expert)))
    except NotFoundError:
        return None
    try:
        return StageProgress.from_json(raw)
    except ValueError:
        return None  # a heartbeat from another version; the pod status still tells the story


def claimed_attempt(store: Store, stage: str, expert: int | None) -> int:
    """The newest attempt that claimed a stage (attempt.json; 0: none)."""
    return read_claim(store, layout.stage_prefix(stage, expert)).attempt


def last_checkpoint(store: Store, stage: str, expert: int | None) -> CheckpointStatus | None:
    """The newest committed checkpoint the stage's fence admits (manifest present; files are
    not re-hashed here: that is the reader's job at restore time)."""
    checkpoints = CheckpointStore(store, layout.stage_prefix(stage, expert), read_only=True)
    claim = read_claim(store, checkpoints.stage_prefix)
    for checkpoint in reversed(checkpoints.list()):
        if claim.admits(checkpoint.step, checkpoint.attempt):
            return CheckpointStatus(step=checkpoint.step, time=checkpoint.created_at, uri=store.uri_of(checkpoint.key))
    return None


def cluster_sizes(store: Store) -> list[int] | None:
    """Examples per cluster from partition/stats.json; None until the partition wrote it."""
    try:
        stats = store.get_json(layout.PARTITION_STATS)
    except NotFoundError:
        return None
    sizes = stats.get("sizes") if isinstance(stats, dict) else None
    return [int(size) for size in sizes] if isinstance(sizes, list) else None
