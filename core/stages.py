"""The stage contract, in one place: what a stage is, how it is invoked, what "done" means.

Both runtimes follow it: the operator (one pod per stage attempt) and the local runtime
(one subprocess per stage), and `python -m atoll.trainer` implements it. Stage names and
their order, dependencies, slugs and labels, the command line, the done markers, the
fencing rule for heartbeats and the exit codes live here and nowhere else. Pure: no I/O
beyond the store reads `is_done` makes, never torch or Kubernetes.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING

from atoll import layout
from atoll.progress import StageName, StageProgress

if TYPE_CHECKING:
    from atoll.store.base import Store

STAGES: tuple[StageName, ...] = ("partition", "expert", "router", "assemble", "evaluate")
"""Every stage, in pipeline order."""
TRAINING_STAGES: frozenset[StageName] = frozenset({"expert", "router"})
"""The long stages that train with checkpoints; experts and router run side by side."""
MODULE = "atoll.trainer"
"""`python -m atoll.trainer <stage> …` runs a stage."""


class ExitCode(IntEnum):
    """The exit status of `python -m atoll.trainer`; both runtimes act on it."""

    DONE = 0
    """The stage finished (or had finished before): its done marker exists."""
    FAILED = 1
    """The attempt failed; a retry may succeed (reason on stderr's last line and in progress.json)."""
    USAGE = 2
    """Bad arguments: an operator or image mismatch that no retry fixes."""
    FENCED = 3
    """A newer attempt of this stage claimed it: not a failure, the attempt stopped on purpose."""
    BAD_INPUT = 4
    """The spec or the data is wrong (missing dataset, too few examples, missing weights, a
    spec that does not match the stored data): fail the run at once, never retry."""


@dataclass(frozen=True, slots=True, order=True)
class StageJob:
    """One stage invocation of a run: a stage, and for the expert stage its index."""

    stage: StageName
    expert: int | None = None

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"unknown stage {self.stage!r}; stages are {', '.join(STAGES)}")
        if (self.stage == "expert") != (self.expert is not None):
            raise ValueError("the expert stage, and only it, takes an expert index")

    @property
    def slug(self) -> str:
        """Names, labels and keys: `expert-2`, `router`, …"""
        return f"expert-{self.expert}" if self.stage == "expert" else self.stage

    @property
    def label(self) -> str:
        """What people read: `expert 2`, `router`, …"""
        return f"expert {self.expert}" if self.stage == "expert" else self.stage

    @property
    def trains(self) -> bool:
        return self.stage in TRAINING_STAGES

    @property
    def prefix(self) -> str:
        """Where the stage keeps its state in the run's store (progress, attempt.json, …)."""
        return layout.stage_prefix(self.stage, self.expert)

    @property
    def done_marker(self) -> str:
        """The store key the stage writes last, under its claim: it exists iff the stage is done."""
        return done_marker(self.stage, self.expert)

    @classmethod
    def from_slug(cls, slug: str) -> StageJob:
        """The inverse of `slug`."""
        if slug.startswith("expert-"):
            return cls("expert", int(slug.removeprefix("expert-")))
        if slug not in STAGES:
            raise ValueError(f"unknown stage {slug!r}")
        return cls(slug)


def done_marker(stage: StageName, expert: int | None = None) -> str:
    """The one done marker of a stage (see `StageJob.done_marker`)."""
    if stage == "partition":
        return layout.PARTITION_DONE
    if stage == "expert":
        return f"{layout.stage_prefix('expert', expert)}/done.json"
    return {"router": layout.ROUTER_METRICS, "assemble": layout.MODEL_MARKER, "evaluate": layout.EVAL_METRICS}[stage]


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
    """The jobs that must be done before `job` may start."""
    if job.stage == "partition":
        return []
    if job.trains:
        return [StageJob("partition")]
    if job.stage == "assemble":
        router = [StageJob("router")] if clusters > 1 else []
        return [*router, *(StageJob("expert", k) for k in range(clusters))]
    return [StageJob("assemble")]


def stage_args(
    job: StageJob,
    spec_uri: str,
    run_uri: str,
    *,
    attempt: int | None = None,
    micro_batch: int | None = None,
    grad_accum: int | None = None,
    gpus: int | None = None,
) -> list[str]:
    """The arguments after `python -m atoll.trainer`:
    `<stage> --run SPEC_URI --store RUN_URI [--expert K] [--attempt N] [--micro-batch M] [--grad-accum A] [--gpus G]`.
    """
    args = [job.stage, "--run", spec_uri, "--store", run_uri]
    if job.expert is not None:
        args += ["--expert", str(job.expert)]
    if attempt is not None:
        args += ["--attempt", str(attempt)]
    if micro_batch is not None:
        args += ["--micro-batch", str(micro_batch)]
    if grad_accum is not None:
        args += ["--grad-accum", str(grad_accum)]
    if gpus:
        args += ["--gpus", str(gpus)]
    return args


def stage_command(
    job: StageJob, spec_uri: str, run_uri: str, *, python: str = "python", **options: int | None
) -> list[str]:
    """The whole command line: `python -m atoll.trainer` + `stage_args`."""
    return [python, "-m", MODULE, *stage_args(job, spec_uri, run_uri, **options)]


def current_progress(progress: StageProgress | None, claimed_attempt: int) -> StageProgress | None:
    """A heartbeat counts only if no newer attempt has claimed the stage since it was written.

    `claimed_attempt` is the stage's attempt.json (0: no claim yet). A progress.json of an
    older attempt (a zombie pod on a partitioned node, a runtime that lost its claim) is
    ignored by every reader: its step, its `done` and its `failed` say nothing about now.
    """
    if progress is None or progress.attempt < claimed_attempt:
        return None
    return progress


def is_done(store: Store, job: StageJob) -> bool:
    """The one done rule: the stage's done marker exists (StoreError when the store cannot say)."""
    return store.exists(job.done_marker)
