"""The one training loop of every training stage (experts and the router).

AdamW with warm-up, gradient clipping, EMA of the weights, gradient accumulation over a
fixed global batch, bf16 autocast on GPUs, optional regional torch.compile, data parallelism
across the GPUs of one node, and checkpoints through the CheckpointStore every
`checkpointEvery` steps and at the end. On a GPU the host never waits for a step's loss
(gpu.py): it queues the next step while the GPU runs this one, and learns the loss (for the
NaN check, heartbeat and hooks) up to RUN_AHEAD_STEPS later; it waits at checkpoints.
Examples stream from the shards through a bounded shuffle window (stream.py); data order and
noise are pure functions of (seed, step, position in the global batch), and checkpoints
hold model, EMA, optimizer and schedule, so a run killed anywhere and resumed — with any
micro-batch × accumulation × GPU split — follows the same loss curve.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch

from atoll.api.spec import Recipe
from atoll.errors import AtollError
from atoll.log import get_logger
from atoll.store.checkpoint import CheckpointStore
from atoll.trainer.heartbeat import Heartbeat
from atoll.trainer.telemetry import GpuTelemetry
from atoll.trainer.training.batching import BatchPlan
from atoll.trainer.training.data_order import DATA_ORDER_VERSION, draw_examples
from atoll.trainer.training.distributed import Rank, all_reduce_sum, barrier, broadcast, single_process
from atoll.trainer.training.gpu import LossReadback, compile_blocks
from atoll.trainer.training.optim import build_optimizer
from atoll.trainer.training.pulse import Pulse
from atoll.trainer.training.state import TrainerState, load_checkpoint, write_checkpoint
from atoll.trainer.training.stream import ExampleStream
from atoll.trainer.training.task import TrainingTask

log = get_logger(__name__)

Precision = Literal["auto", "bf16", "fp32"]
StepHook = Callable[[int, float], None]


class TrainingError(AtollError):
    """Training cannot go on (diverged, out of memory at the smallest micro-batch, …)."""


@dataclass(frozen=True, kw_only=True)
class LoopSettings:
    """Everything the loop needs besides the task: the recipe and how to run it."""

    recipe: Recipe
    total_steps: int
    """Optimizer steps of this stage (an expert's may differ from recipe.steps under stepsPolicy)."""
    batch: BatchPlan
    seed: int = 0
    grad_clip: float = 1.0
    precision: Precision = "auto"
    section: str = "expert"
    """The spec section (expert / router), for error messages."""
    heartbeat_interval: float = 10.0
    compile: str | None = None
    """torch.compile backend of the model's transformer blocks (spec `compile`: inductor); None: eager."""


@dataclass
class TrainResult:
    """What one invocation of the loop did."""

    start_step: int
    """The step it started from (a resumed checkpoint's, or 0)."""
    end_step: int
    losses: list[float] = field(default_factory=list)
    """Mean loss of every step it trained: losses[i] is step start_step + i + 1's."""
    resumed_from: str | None = None
    samples_per_second: float | None = None
    batch: BatchPlan | None = None
    """The split it ended with (smaller than planned after an out-of-memory fallback)."""


def train(
    task: TrainingTask,
    settings: LoopSettings,
    *,
    rank: Rank | None = None,
    checkpoints: CheckpointStore | None = None,
    heartbeat: Heartbeat | None = None,
    on_step: StepHook | None = None,
) -> TrainResult:
    """Train `task` to `settings.total_steps`, resuming from the newest valid checkpoint.

    Only rank 0 passes `checkpoints` and `heartbeat`. `on_step(step, loss)` runs after every
    optimizer step, in order, once its loss is known (tests use it to interrupt a run); on a
    GPU that is up to RUN_AHEAD_STEPS steps later.
    """
    return _Loop(
        task,
        settings=settings,
        rank=rank or single_process(),
        checkpoints=checkpoints,
        heartbeat=heartbeat,
        on_step=on_step,
    ).run()


class _Loop:
    def __init__(
        self,
        task: TrainingTask,
        *,
        settings: LoopSettings,
        rank: Rank,
        checkpoints: CheckpointStore | None,
        heartbeat: Heartbeat | None,
        on_step: StepHook | None,
    ) -> None:
        self.task = task
        self.settings = settings
        self.rank = rank
        self.device = rank.device
        self.checkpoints = checkpoints if rank.main else None
        self.heartbeat = heartbeat if rank.main else None
        self.on_step = on_step
        self.plan = settings.batch
        if self.plan.world != rank.world:
            raise TrainingError(f"the batch plan is for {self.plan.world} processes, this group has {rank.world}")
        self.examples = task.data.examples
        # diffusers is imported here, not at module level, so that a stage that is already
        # done answers without paying for the import.
        from diffusers.training_utils import EMAModel

        self.model = task.build_model(settings.seed).to(self.device)
        self.model.train()
        self.ema = EMAModel(self.model.parameters(), decay=settings.recipe.ema_decay, foreach=True)
        self.optimizer, self.schedule = build_optimizer(self.model.parameters(), settings.recipe, device=self.device)
        self.autocast = _autocast(settings.precision, self.device)
        if settings.compile is not None:
            compile_blocks(self.model, backend=settings.compile)
        self.net: torch.nn.Module = self.model

    # --- the run ------------------------------------------------------------------------

    def run(self) -> TrainResult:
        start, resumed_from = self._resume()
        result = TrainResult(start_step=start, end_step=start, resumed_from=resumed_from, batch=self.plan)
        total = self.settings.total_steps
        if start >= total:
            log.info("already trained", stage=self.task.stage, expert=self.task.expert, step=start, total=total)
            return result
        if self.rank.distributed:
            self.net = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device] if self.device.type == "cuda" else None
            )
            if self.rank.main:
                log.info("DistributedDataParallel", ranks=self.rank.world, backend=torch.distributed.get_backend())
        telemetry = self._open_telemetry() if self.rank.main else None
        self._beat_start(start, resumed_from, telemetry)
        pulse = Pulse(
            self.heartbeat,
            global_batch=self.plan.global_batch,
            checkpoints=self.checkpoints,
            telemetry=telemetry,
            interval=self.settings.heartbeat_interval,
            log_progress=self.rank.main,
        )
        every = self.settings.recipe.checkpoint_every
        self.stream = ExampleStream(self.task.data, seed=self.settings.seed, global_batch=self.plan.global_batch)
        readback = LossReadback(self.device)
        try:
            with pulse:
                pulse.start(start)
                for step in range(start, total):
                    done = step + 1
                    readback.push(done, self._step(step))
                    checkpoint = done == total or done % every == 0
                    for settled, loss_sum in readback.settled(through=done if checkpoint else None):
                        loss = self._settle(settled, loss_sum, result, pulse)
                        if settled == done and checkpoint:
                            self._checkpoint(done, loss, final=done == total)
                        if self.on_step is not None:
                            self.on_step(settled, loss)
                if self.checkpoints is not None:
                    self.checkpoints.flush()
        finally:
            self.stream.close()
            if telemetry is not None:
                telemetry.close()
        result.samples_per_second = pulse.samples_per_second
        result.batch = self.plan
        if self.heartbeat is not None:
            self.heartbeat.done(**pulse.fields(), message=f"trained {total} steps")
        return result

    def _settle(self, step: int, loss_sum: float, result: TrainResult, pulse: Pulse) -> float:
        """Step `step`'s mean loss, now that it is known: checked, recorded, reported."""
        loss = loss_sum / self.plan.global_batch
        if math.isnan(loss):
            raise TrainingError(
                f"the loss became NaN at step {step}: lower {self.settings.section}.learningRate"
                " or check the data for NaNs"
            )
        result.losses.append(loss)
        result.end_step = step
        pulse.record(step, loss)
        return loss

    def _step(self, step: int) -> torch.Tensor:
        """Queue optimizer step `step` (0-based); its loss summed over the global batch, on the device."""
        while True:
            try:
                return self._try_step(step)
            except torch.OutOfMemoryError:
                smaller = self.plan.smaller() if self.plan.automatic and not self.rank.distributed else None
                if smaller is None:
                    raise TrainingError(
                        f"out of memory at micro-batch {self.plan.micro_batch} on {self.device}: set"
                        f" {self.settings.section}.microBatchSize lower (or use more GPUs)"
                    ) from None
                log.warning("out of memory: smaller micro-batch", micro_batch=smaller.micro_batch, step=step)
                self.optimizer.zero_grad(set_to_none=True)
                torch.cuda.empty_cache()
                self.plan = smaller

    def _try_step(self, step: int) -> torch.Tensor:
        plan, task = self.plan, self.task
        loss_sum = torch.zeros((), device=self.device)
        # DistributedDataParallel averages gradients over ranks: scale so the result is the
        # mean over the global batch, whatever the split.
        scale = self.rank.world / plan.global_batch
        slices = plan.micro_slices(self.rank.rank)
        for j, positions in enumerate(slices):
            draws = draw_examples(self.settings.seed, step, range(positions.start, positions.stop), task.latent_shape)
            last = j == len(slices) - 1
            sync = contextlib.nullcontext() if last or not self.rank.distributed else self.net.no_sync()  # type: ignore[operator]
            batch = self.stream.batch(step, positions)
            with sync:
                with self.autocast():
                    losses = task.losses(self.net, batch, draws, self.device)
                (losses.sum() * scale).backward()  # type: ignore[no-untyped-call]
            loss_sum += losses.detach().sum()
        all_reduce_sum(loss_sum, self.rank)
        if self.settings.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.settings.grad_clip)
        self.optimizer.step()
        self.schedule.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.ema.step(self.model.parameters())
        return loss_sum

    # --- checkpoints --------------------------------------------------------------------

    def _state(self, step: int, loss: float | None, *, final: bool) -> TrainerState:
        return TrainerState(
            step=step,
            total_steps=self.settings.total_steps,
            seed=self.settings.seed,
            global_batch=self.plan.global_batch,
            examples=self.examples,
            data_order=DATA_ORDER_VERSION,
            shuffle_buffer=self.task.data.window,
            micro_batch=self.plan.micro_batch,
            grad_accum=self.plan.grad_accum,
            world=self.plan.world,
            ema_step=self.ema.optimization_step,
            loss=loss,
            final=final,
            recipe=asdict(self.settings.recipe),
            task=self.task.describe(),
        )

    def _checkpoint(self, step: int, loss: float, *, final: bool) -> None:
        if self.checkpoints is None:
            return
        staged = Path(tempfile.mkdtemp(prefix=f"atoll-{self.task.stage}-step{step}-"))
        try:
            write_checkpoint(
                staged,
                model=self.model,
                ema_shadow=self.ema.shadow_params,
                optimizer=self.optimizer,
                schedule=self.schedule,
                state=self._state(step, loss, final=final),
            )
            metadata = {"final": final, "totalSteps": self.settings.total_steps, "loss": loss, "stage": self.task.stage}
            self.checkpoints.commit(step, staged, metadata=metadata)
        except BaseException:
            shutil.rmtree(staged, ignore_errors=True)
            raise

    def _resume(self) -> tuple[int, str | None]:
        """Load the newest valid checkpoint on every rank; (its step, its key) or (0, None)."""
        scratch = Path(tempfile.mkdtemp(prefix=f"atoll-{self.task.stage}-restore-")) if self.rank.main else None
        try:
            found = None
            if self.checkpoints is not None and scratch is not None:
                checkpoint = self.checkpoints.restore_latest(scratch)
                if checkpoint is not None:
                    found = (str(scratch), checkpoint.key)
            found = broadcast(found, self.rank)
            if found is None:
                return 0, None
            state = load_checkpoint(
                Path(found[0]),
                model=self.model,
                ema_shadow=self.ema.shadow_params,
                optimizer=self.optimizer,
                schedule=self.schedule,
            )
            state.check_compatible(self._state(state.step, None, final=False), section=self.settings.section)
            self.ema.optimization_step = state.ema_step
            if self.rank.main:
                log.info(
                    "resumed",
                    checkpoint=found[1],
                    step=state.step,
                    saved_split=f"{state.micro_batch}×{state.grad_accum}×{state.world}",
                    split=f"{self.plan.micro_batch}×{self.plan.grad_accum}×{self.plan.world}",
                )
            return state.step, found[1]
        finally:
            barrier(self.rank)
            if scratch is not None:
                shutil.rmtree(scratch, ignore_errors=True)

    # --- heartbeat ----------------------------------------------------------------------

    def _open_telemetry(self) -> GpuTelemetry | None:
        if self.device.type != "cuda":
            return None
        uuids = []
        for index in range(self.rank.world):
            uuid = getattr(torch.cuda.get_device_properties(index), "uuid", None)
            if uuid is not None:
                uuids.append(str(uuid))
        return GpuTelemetry.open(uuids, count=self.rank.world)

    def _beat_start(self, start: int, resumed_from: str | None, telemetry: GpuTelemetry | None) -> None:
        if self.heartbeat is None:
            return
        if self.device.type == "cuda":
            gpu = telemetry.product() if telemetry is not None else torch.cuda.get_device_name(self.device)
        else:
            gpu = "cpu"
        self.heartbeat.update(
            state="running",
            force=True,
            step=start,
            total_steps=self.settings.total_steps,
            gpu=gpu,
            gpus=self.rank.world if self.device.type == "cuda" else 0,
            micro_batch=self.plan.micro_batch,
            grad_accum=self.plan.grad_accum,
            message=f"resumed from {resumed_from}" if resumed_from else "training from scratch",
            telemetry=telemetry.read() if telemetry is not None else {},
        )


def _autocast(precision: Precision, device: torch.device) -> Callable[[], contextlib.AbstractContextManager[object]]:
    """The forward pass's autocast: bf16 on GPUs that support it (precision auto/bf16), fp32 otherwise."""
    if device.type != "cuda":
        if precision == "bf16":
            log.warning("precision bf16 applies to GPUs; training in fp32 on the CPU")
        return contextlib.nullcontext
    if precision == "fp32":
        return contextlib.nullcontext
    # Native bf16 only (compute capability ≥ 8): torch's default check also counts the slow
    # emulation on T4/V100, where fp32 is faster — and the planner assumes fp32 there.
    if not torch.cuda.is_bf16_supported(including_emulation=False):
        if precision == "bf16":
            raise TrainingError(f"{torch.cuda.get_device_name(device)} does not support bf16: set precision fp32")
        return contextlib.nullcontext
    # TF32 for the fp32 parts (optimizer, norms): DiT measured no quality loss, large speed-up.
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
