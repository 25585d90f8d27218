"""The stage invocations of one run and their order: partition → experts ‖ router → assemble → evaluate.

Pure data: which commands a runtime must run and which must finish before each can start.
It never starts a process itself.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from atoll import layout
from atoll.progress import StageName

# The object each stage writes last, which proves it finished; experts have none beyond
# their progress.json (written done only after the final checkpoint is committed).
DONE_MARKERS: dict[str, str] = {
    "partition": layout.PARTITION_DONE,
    "router": f"{layout.ROUTER}/metrics.json",
    "assemble": f"{layout.MODEL}/assembled.json",
    "evaluate": f"{layout.EVAL}/metrics.json",
}


@dataclass(frozen=True, slots=True, order=True)
class StageJob:
    """One invocation of the stage command (one pod under Kubernetes, one subprocess locally)."""

    stage: StageName
    expert: int | None = None

    @property
    def label(self) -> str:
        """What people see: `expert 2`, `router`, …"""
        return f"expert {self.expert}" if self.stage == "expert" else self.stage

    @property
    def slug(self) -> str:
        """File-name form: `expert-2`, `router`, …"""
        return f"expert-{self.expert}" if self.stage == "expert" else self.stage

    @property
    def trains(self) -> bool:
        """Experts and the router are the long, parallel part of a run."""
        return self.stage in ("expert", "router")

    def command(self, spec_uri: str, run_uri: str, *, python: str = sys.executable) -> list[str]:
        """The stage command of docs/architecture.md for this job."""
        argv = [python, "-m", "atoll.trainer", self.stage, "--run", spec_uri, "--store", run_uri]
        if self.expert is not None:
            argv += ["--expert", str(self.expert)]
        return argv


def run_jobs(clusters: int) -> list[StageJob]:
    """Every job of a run with K clusters, in launch priority order.

    The router comes right after the partition so it starts as soon as its data exists and
    trains alongside the experts. A one-cluster run (a monolith) has no router.
    """
    return [
        StageJob("partition"),
        *([StageJob("router")] if clusters > 1 else []),
        *(StageJob("expert", k) for k in range(clusters)),
        StageJob("assemble"),
        StageJob("evaluate"),
    ]


def dependencies(job: StageJob, clusters: int) -> list[StageJob]:
    """The jobs that must have finished before `job` may start."""
    if job.stage == "partition":
        return []
    if job.trains:
        return [StageJob("partition")]
    if job.stage == "assemble":
        router = [StageJob("router")] if clusters > 1 else []
        return [*router, *(StageJob("expert", k) for k in range(clusters))]
    return [StageJob("assemble")]
