"""Runs a training stage end to end: idempotency, fencing, heartbeat, data parallelism.

The expert and router stages describe their job (how to build the task from the store,
the loop settings) and call `run_training`. It returns quickly when the final checkpoint
already exists, claims the stage's attempt, runs the loop in one process, one per GPU, or
in each process torchrun started, and records failures in progress.json. A fenced attempt
stops without writing anything.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from atoll import layout
from atoll.api.spec import RetentionSpec, TrainingSpec
from atoll.errors import AtollError
from atoll.log import get_logger
from atoll.progress import CheckpointRef, StageName
from atoll.store import FencedError, Store, open_store
from atoll.store.checkpoint import CheckpointStore
from atoll.store.manifest import Checkpoint
from atoll.trainer.context import StageContext
from atoll.trainer.heartbeat import Heartbeat
from atoll.trainer.interrupts import StageStoppedError, sigterm_raises
from atoll.trainer.training.batching import BatchPlanError, plan_batch
from atoll.trainer.training.distributed import (
    Rank,
    join_group,
    launch,
    leave_group,
    single_process,
    torchrun_rank,
)
from atoll.trainer.training.loop import LoopSettings, StepHook, TrainResult, train
from atoll.trainer.training.task import TrainingTask

log = get_logger(__name__)


class StageInterruptedError(StageStoppedError):
    """SIGTERM arrived (pod deletion, local runtime stopping): stop after uploading what is staged."""


@dataclass(frozen=True, kw_only=True)
class TrainingJob:
    """One training stage invocation; picklable, so every data-parallel rank can rebuild it."""

    stage: StageName
    expert: int | None
    store_uri: str
    make_task: Callable[[Store], TrainingTask]
    """Builds the task from the run's store (a module-level function or a partial of one)."""
    settings: LoopSettings
    attempt: int | None = None
    retention: RetentionSpec | None = None

    @property
    def prefix(self) -> str:
        return layout.stage_prefix(self.stage, self.expert)


def training_job(
    ctx: StageContext,
    spec: TrainingSpec,
    *,
    stage: StageName,
    expert: int | None,
    total_steps: int,
    seed: int,
    make_task: Callable[[Store], TrainingTask],
) -> TrainingJob:
    """A training stage's job: the spec's recipe, its global batch split over this invocation's
    GPUs (micro-batch and accumulation from the placement plan, else from the spec)."""
    recipe = spec.recipe()
    plan = plan_batch(
        recipe.global_batch_size,
        world=ctx.gpus,
        micro_batch=ctx.micro_batch if ctx.micro_batch is not None else spec.micro_batch_size,
        grad_accum=ctx.grad_accum,
        field=stage,
    )
    settings = LoopSettings(
        recipe=recipe,
        total_steps=total_steps,
        batch=plan,
        seed=seed,
        grad_clip=spec.grad_clip,
        precision=spec.precision,
        section=stage,
        compile="inductor" if spec.compile else None,
    )
    return TrainingJob(
        stage=stage,
        expert=expert,
        store_uri=ctx.store.uri,
        make_task=make_task,
        settings=settings,
        attempt=ctx.attempt,
        retention=spec.keep_checkpoints,
    )


def finished_checkpoint(store: Store, job: TrainingJob) -> Checkpoint | None:
    """The stage's final checkpoint when it has trained all its steps, else None (reads only)."""
    checkpoints = CheckpointStore(store, job.prefix, read_only=True)
    latest = checkpoints.latest()
    if latest is not None and latest.step >= job.settings.total_steps and latest.metadata.get("final", False):
        return latest
    return None


def run_training(job: TrainingJob, store: Store, *, on_step: StepHook | None = None) -> TrainResult | None:
    """Train the job's stage to its final checkpoint; None when it was already done."""
    done = finished_checkpoint(store, job)
    if done is not None:
        log.info("already trained", stage=job.stage, expert=job.expert, step=done.step)
        _report_done(store, job, done)
        return None
    with sigterm_raises(lambda: StageInterruptedError("SIGTERM"), graceful=True):
        torchrun = torchrun_rank()
        if torchrun is not None:
            if torchrun.world != job.settings.batch.world:
                raise BatchPlanError(
                    f"torchrun started {torchrun.world} processes but the stage was given --gpus"
                    f" {job.settings.batch.world}: pass --gpus {torchrun.world}"
                )
            join_group(torchrun)
            try:
                return _train_rank(torchrun, job, store, on_step)
            finally:
                leave_group()
        if job.settings.batch.world > 1:
            if on_step is not None:
                raise ValueError("on_step hooks are not supported across processes")
            return launch(_train_spawned, (job,), job.settings.batch.world)
        return _train_rank(single_process(), job, store, on_step)


def _train_spawned(rank: Rank, job: TrainingJob) -> TrainResult | None:
    return _train_rank(rank, job, open_store(job.store_uri), None)


def _train_rank(rank: Rank, job: TrainingJob, store: Store, on_step: StepHook | None) -> TrainResult | None:
    task = job.make_task(store)
    if not rank.main:
        return train(task, job.settings, rank=rank)
    checkpoints = CheckpointStore(store, job.prefix, attempt=job.attempt, retention=job.retention)
    heartbeat = Heartbeat(
        store,
        job.stage,
        expert=job.expert,
        attempt=checkpoints.attempt,
        total_steps=job.settings.total_steps,
        interval=job.settings.heartbeat_interval,
    )
    heartbeat.update(force=True, message="loading data and model")
    try:
        with checkpoints:
            return train(task, job.settings, rank=rank, checkpoints=checkpoints, heartbeat=heartbeat, on_step=on_step)
    except FencedError:
        raise  # a newer attempt owns progress.json now: write nothing
    except StageInterruptedError:
        heartbeat.failed("interrupted (SIGTERM): resumes from the last checkpoint when run again")
        raise
    except StageStoppedError as stopped:
        heartbeat.failed(str(stopped))
        raise
    except BaseException as error:
        heartbeat.failed(str(error) if isinstance(error, AtollError) else f"{type(error).__name__}: {error}")
        raise


def _report_done(store: Store, job: TrainingJob, checkpoint: Checkpoint) -> None:
    heartbeat = Heartbeat(
        store, job.stage, expert=job.expert, attempt=checkpoint.attempt, total_steps=job.settings.total_steps
    )
    heartbeat.done(
        step=checkpoint.step,
        loss=checkpoint.metadata.get("loss"),
        last_checkpoint=CheckpointRef(
            step=checkpoint.step, uri=store.uri_of(checkpoint.key), time=checkpoint.created_at
        ),
        message="already trained",
    )
