"""What each checkpoint commit cost: the training thread's stall and the upload worker's time.

Records only; atoll.store.checkpoint fills them as its worker finishes each commit, and
benchmarks and the trainer's metrics read them. Never touches the store.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class CommitRecord:
    """What one commit cost."""

    step: int
    files: int
    bytes: int
    stall_seconds: float
    """Time the training thread was blocked in commit() (backpressure)."""
    upload_seconds: float
    """Time the worker spent uploading files and manifest (fence checks included)."""
    error: str | None = None


@dataclass
class CommitStats:
    """Every commit of this CheckpointStore, in order of completion."""

    commits: list[CommitRecord] = field(default_factory=list)

    @property
    def stall_seconds(self) -> float:
        return sum(c.stall_seconds for c in self.commits)

    @property
    def upload_seconds(self) -> float:
        return sum(c.upload_seconds for c in self.commits)

    @property
    def bytes(self) -> int:
        return sum(c.bytes for c in self.commits)
