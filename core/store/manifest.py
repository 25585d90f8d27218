"""A checkpoint's manifest: what it records, how it is read, and which names it may hold.

`manifest.json` is written LAST into `<stage>/checkpoints/step-<N>/` and lists every file of
the checkpoint with its size, sha256 and the object that holds it (a per-attempt name), plus
the step, the attempt and the time. This module turns a manifest's bytes into a `Checkpoint`
and says when one is corrupt: a wrong format or step, a missing field, or a file name or
object that leaves the checkpoint's directory (absolute, '..', empty or '.' segments,
backslashes, control characters). It never reads or writes the store itself; the commit
protocol, fencing and fallback live in atoll.store.checkpoint.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from atoll.store.base import StoreError, join_key

MANIFEST = "manifest.json"
FORMAT = 1
_UNSAFE = re.compile(r"[\x00-\x1f\x7f\\]")


class CorruptCheckpointError(StoreError):
    """A checkpoint's files do not match its manifest (missing, wrong size or sha256)."""


@dataclass(frozen=True)
class CheckpointFile:
    """One file of a checkpoint, as its manifest records it."""

    name: str
    """Path relative to the checkpoint directory (what restore() recreates)."""
    size: int
    sha256: str
    key: str = ""
    """The object's key in the store (per-attempt name; see the module docstring)."""


@dataclass(frozen=True)
class Checkpoint:
    """A committed checkpoint (manifest present)."""

    step: int
    key: str
    """The checkpoint's prefix, e.g. experts/0/checkpoints/step-000000400."""
    attempt: int
    created_at: datetime
    files: dict[str, CheckpointFile]
    metadata: dict[str, Any]

    @property
    def size(self) -> int:
        """Total bytes of the checkpoint's files."""
        return sum(f.size for f in self.files.values())


def manifest_document(
    step: int, attempt: int, created_at: datetime, files: dict[str, dict[str, Any]], metadata: dict[str, Any]
) -> dict[str, Any]:
    """The manifest's JSON: `files` maps each name to its size, sha256 and object."""
    return {
        "format": FORMAT,
        "step": step,
        "attempt": attempt,
        "createdAt": created_at.isoformat(),
        "files": files,
        "metadata": metadata,
    }


def parse_manifest(data: bytes, step: int, key: str) -> Checkpoint:
    """The checkpoint at `key` (step `step`) that a manifest's bytes describe; CorruptCheckpointError if unsound."""
    try:
        raw = json.loads(data)
        if raw.get("format") != FORMAT:
            raise CorruptCheckpointError(f"manifest format {raw.get('format')!r}, expected {FORMAT}")
        if int(raw["step"]) != step:
            raise CorruptCheckpointError(f"manifest says step {raw['step']}, the key says {step}")
        files = {
            name: CheckpointFile(
                name=relative_path(name, "file name"),
                size=int(entry["size"]),
                sha256=str(entry["sha256"]),
                key=join_key(key, relative_path(entry.get("object", name), "object")),
            )
            for name, entry in raw["files"].items()
        }
        return Checkpoint(
            step=step,
            key=key,
            attempt=int(raw["attempt"]),
            created_at=datetime.fromisoformat(raw["createdAt"]),
            files=files,
            metadata=dict(raw.get("metadata") or {}),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise CorruptCheckpointError(f"unreadable manifest: {error!r}") from error


def check_sizes(checkpoint: Checkpoint, sizes: dict[str, int]) -> None:
    """CorruptCheckpointError unless every file of `checkpoint` is among `sizes` (object key → bytes) at its size."""
    for entry in checkpoint.files.values():
        if entry.key not in sizes:
            raise CorruptCheckpointError(f"{entry.name} is missing")
        if sizes[entry.key] != entry.size:
            raise CorruptCheckpointError(f"{entry.name} has {sizes[entry.key]} bytes, the manifest says {entry.size}")


def relative_path(path: object, what: str) -> str:
    """`path` if it is a plain relative path inside a checkpoint directory; else CorruptCheckpointError."""
    if not isinstance(path, str) or not path:
        raise CorruptCheckpointError(f"manifest {what} {path!r} is not a path")
    if path.startswith("/") or _UNSAFE.search(path) or any(part in ("", ".", "..") for part in path.split("/")):
        raise CorruptCheckpointError(f"manifest {what} {path!r} leaves the checkpoint's directory")
    return path


def inside(root: Path, name: str) -> Path:
    """root/name, resolved; CorruptCheckpointError if it is not inside `root` (a resolved directory)."""
    target = (root / relative_path(name, "file name")).resolve()
    if not target.is_relative_to(root) or target == root:
        raise CorruptCheckpointError(f"file {name!r} would be written outside {root}")
    return target
