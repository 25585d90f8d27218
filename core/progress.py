"""The progress.json heartbeat every stage rewrites while it runs.

Stages write it (atoll.trainer), the local runtime and the operator read it to show
progress and to reconcile DDMExpert / DDMRun status. It is the only live channel between
a trainer and the rest of the system, so it stays small and versioned by its fields.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

StageName = Literal["partition", "expert", "router", "assemble", "evaluate"]
StageState = Literal["starting", "running", "done", "failed"]


class CheckpointRef(BaseModel):
    """The newest committed (manifest written, hashes recorded) checkpoint of a stage."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)

    step: int
    uri: str
    time: datetime


class StageProgress(BaseModel):
    """One stage invocation's heartbeat, at <stage prefix>/progress.json."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)

    stage: StageName
    expert: int | None = None
    attempt: int = 1
    state: StageState = "starting"
    step: int = 0
    total_steps: int = 0
    loss: float | None = None
    samples_per_second: float | None = None
    message: str | None = Field(default=None, description="What the stage is doing, for people.")
    error: str | None = Field(default=None, description="Why the stage failed (state failed).")
    gpu: str | None = Field(default=None, description="GPU product, or 'cpu'.")
    gpus: int = 0
    node: str | None = None
    micro_batch: int | None = None
    grad_accum: int | None = None
    last_checkpoint: CheckpointRef | None = None
    telemetry: dict[str, Any] = Field(default_factory=dict, description="NVML readings where a GPU exists.")
    started_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    updated_at: datetime = Field(default_factory=lambda: datetime.now(UTC))

    @property
    def fraction(self) -> float:
        """Progress in [0, 1]."""
        if self.state == "done":
            return 1.0
        return min(1.0, self.step / self.total_steps) if self.total_steps else 0.0

    def to_json(self) -> bytes:
        """Serialised for the store (camelCase)."""
        return self.model_dump_json(by_alias=True, indent=2).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> StageProgress:
        """Parse a stored heartbeat."""
        return cls.model_validate_json(data)
