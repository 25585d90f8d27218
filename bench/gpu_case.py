"""One case of bench/gpu.py: the real expert (or router) loop of one preset, compile on or off.

In this process, in this order: the FLOPs of one sample, counted by torch.utils.flop_counter
on an eager forward and backward of the stage's own loss; a bare step (forward, loss,
backward, optimizer step) on one fixed batch already on the device, with the loop's
precision, compile setting and optimizer; then the real stage path (`run_training` on a
synthetic run in a local store: streamed shards, per-example noise, autocast, gradient
clipping, EMA, heartbeat, a checkpoint half-way and one at the end) timed step by step, with
its peak device memory against the planner's estimate and CUDA's count of host syncs.
Returns one JSON-able dict; bench/gpu.py runs each case in a process of its own on a GPU.
"""

from __future__ import annotations

import contextlib
import gc
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from atoll.api.presets import PRESETS
from atoll.operator.placement.workload import Workload
from atoll.store import LocalStore
from atoll.trainer.context import StageContext
from atoll.trainer.training.runner import TrainingJob, run_training
from tests.trainer.training.synthetic import synthetic_spec, write_synthetic_run

Model = Literal["expert", "router"]
MIB = 1024**2
COUNTED_SAMPLES = 2
"""Samples of the FLOP-counting pass (FLOPs are linear in the batch; a small pass is enough)."""


@dataclass(frozen=True, kw_only=True)
class Case:
    """What one case measures."""

    model: Model
    preset: str
    compile: bool
    latent: tuple[int, ...]
    text: tuple[int, int]
    warmup: int
    """Steps not timed (compilation, allocator and kernel-choice warm-up)."""
    steps: int
    """Timed steps before the mid-run checkpoint, and again after it."""
    batch: int | None = None
    """Global batch; the preset's recipe when None."""
    peak_tflops: float | None = None
    """The device's dense peak (bf16 on GPUs) for MFU; None: no MFU."""

    def describe(self) -> str:
        return f"{self.model} {self.preset} compile {'on' if self.compile else 'off'}"


def run_case(case: Case, device: torch.device) -> dict[str, Any]:
    """Measure one case; returns its record (bench/gpu.py's `runs` entries)."""
    from atoll.trainer.training.distributed import configure_threads

    started = time.perf_counter()
    cuda = device.type == "cuda"
    configure_threads(1)  # what the loop sets: the bare step must run with the same CPU threads
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True  # what the loop sets for bf16 training
        torch.backends.cudnn.allow_tf32 = True
    batch = case.batch or PRESETS[case.preset].recipe.global_batch_size
    workload = Workload(
        preset=PRESETS[case.preset], latent_shape=case.latent, text_tokens=case.text[0], text_dim=case.text[1]
    )
    record: dict[str, Any] = {
        "model": case.model,
        "preset": case.preset,
        "compile": case.compile,
        "device": device.type,
        "latentShape": list(case.latent),
        "textShape": list(case.text),
        "globalBatch": batch,
        "precision": "bf16" if cuda else "fp32",
        "error": None,
    }
    micro = batch
    if cuda:
        memory_mib = torch.cuda.get_device_properties(device).total_memory // MIB
        split = workload.split_batch(batch, 1, memory_mib, bf16=True)
        if split is None:
            record["error"] = f"the planner finds no micro-batch of {case.preset} that fits {memory_mib} MiB"
            return record
        micro = split[0]
    record.update(microBatch=micro, gradAccum=batch // micro)
    every = case.warmup + case.steps
    total = every + case.steps
    preset_every = PRESETS[case.preset].recipe.checkpoint_every
    record["steps"] = {
        "warmup": case.warmup,
        "timed": total - case.warmup - 1,
        "checkpointEvery": every,
        "presetCheckpointEvery": preset_every,
    }
    with tempfile.TemporaryDirectory(prefix="atoll-bench-gpu-") as tmp:
        store = LocalStore(Path(tmp) / "run")
        job = _job(case, store, batch=batch, micro=micro, total=total, every=every)
        flops, attention = count_flops(job, store, device, micro)
        planner_flops = workload.flops_per_sample()
        record["flopsPerSample"] = {
            "counted": flops,
            "planner": planner_flops,
            "countedOverPlanner": flops / planner_flops,
        }
        record["attentionKernels"] = attention
        record["bare"] = bare_step(case, job, store, device, micro=micro, batch=batch)
        _release(device)
        loop = loop_steps(case, job, store, device, every=every, total=total)
    steady, extra = loop["steadySeconds"], loop["checkpointExtraSeconds"]
    amortised = steady + extra / preset_every
    record["stepSeconds"] = {"steady": steady, "checkpointExtra": extra, "amortised": amortised}
    record["samplesPerSecond"] = {"steady": batch / steady, "amortised": batch / amortised}
    record["loopOverBare"] = steady / record["bare"]["stepSeconds"]
    achieved = flops * batch / steady
    record["achievedTflops"] = achieved / 1e12
    record["peakTflops"] = case.peak_tflops
    record["mfu"] = achieved / (case.peak_tflops * 1e12) if case.peak_tflops else None
    record["loss"] = loop["loss"]
    record["hostSyncs"] = loop["hostSyncs"]
    record["memory"] = _memory_record(loop.get("memory"), workload.memory_bytes(micro, 1, bf16=cuda), case.model)
    record["seconds"] = time.perf_counter() - started
    return record


def _job(case: Case, store: LocalStore, *, batch: int, micro: int, total: int, every: int) -> TrainingJob:
    """The stage's own job on a synthetic run of two clusters (the router needs two)."""
    from atoll.trainer.stages.expert import expert_job
    from atoll.trainer.stages.router import router_job

    settings = {
        "preset": case.preset,
        "learningRate": None,
        "warmupSteps": None,
        "globalBatchSize": batch,
        "microBatchSize": micro,
        "checkpointEvery": every,
        "compile": case.compile,
    }
    video = case.model == "expert" and len(case.latent) == 4  # a clip latent [C, T, H, W]
    spec = synthetic_spec(
        steps=total,
        router_steps=total,
        expert=settings,
        router=settings,
        global_batch=batch,
        checkpoint_every=every,
        dataset={"uri": "builtin://moving-shapes", "frames": case.latent[1]} if video else None,
    )
    size = max(2 * batch, 16)
    write_synthetic_run(
        store, spec=spec, sizes=(size, size), shard_size=max(batch, 16), latent_shape=case.latent, text_shape=case.text
    )
    ctx = StageContext(spec=spec, store=store, expert=0 if case.model == "expert" else None, micro_batch=micro)
    return expert_job(ctx) if case.model == "expert" else router_job(ctx)


def _autocast(device: torch.device) -> contextlib.AbstractContextManager[object]:
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()


def count_flops(job: TrainingJob, store: LocalStore, device: torch.device, micro: int) -> tuple[float, list[str]]:
    """FLOPs per sample of one forward and backward of the task's own loss, counted (eager), and
    the attention kernels that ran."""
    from torch.utils.flop_counter import FlopCounterMode

    from atoll.trainer.training.data_order import draw_examples
    from atoll.trainer.training.stream import ExampleStream

    task = job.make_task(store)
    model = task.build_model(job.settings.seed).to(device)
    m = min(COUNTED_SAMPLES, micro)
    with ExampleStream(task.data, seed=job.settings.seed, global_batch=job.settings.batch.global_batch) as stream:
        examples = stream.batch(0, slice(0, m))
    draws = draw_examples(job.settings.seed, 0, range(m), task.latent_shape)
    counter = FlopCounterMode(display=False)
    with counter:
        with _autocast(device):
            losses = task.losses(model, examples, draws, device)
        losses.sum().backward()
    attention = sorted({str(op) for op in counter.get_flop_counts()["Global"] if "attention" in str(op)})
    return counter.get_total_flops() / m, attention


def bare_step(
    case: Case, job: TrainingJob, store: LocalStore, device: torch.device, *, micro: int, batch: int
) -> dict[str, Any]:
    """Forward, loss, backward and optimizer step on one fixed batch already on the device: no data,
    noise, clipping, EMA, heartbeat or checkpoint. Same model, precision, compile and optimizer as the loop."""
    from torch.nn import functional

    from atoll.trainer import flow
    from atoll.trainer.training.gpu import compile_blocks
    from atoll.trainer.training.optim import build_optimizer

    task = job.make_task(store)
    model = task.build_model(job.settings.seed).to(device).train()
    if case.compile:
        compile_blocks(model)
    optimizer, _ = build_optimizer(model.parameters(), job.settings.recipe, device=device)
    generator = torch.Generator().manual_seed(0)
    x0 = torch.randn(batch, *case.latent, generator=generator).to(device)
    noise = torch.randn(batch, *case.latent, generator=generator).to(device)
    sigma = torch.rand(batch, generator=generator).to(device)
    text = torch.randn(batch, *case.text, generator=generator).to(device)
    mask = torch.ones(batch, case.text[0], dtype=torch.bool, device=device)
    labels = torch.randint(0, 2, (batch,), generator=generator).to(device)
    x_t = flow.add_noise(x0, noise, sigma)

    def loss_of(part: slice) -> torch.Tensor:
        if case.model == "expert":
            from atoll.trainer.models.expert import velocity

            prediction = velocity(model, x_t[part], sigma[part], text[part], mask[part])
            return flow.flow_matching_loss(prediction, x0[part], noise[part])
        from atoll.trainer.models.router import router_logits

        logits = router_logits(model, x_t[part], sigma[part], text[part], mask[part])
        return functional.cross_entropy(logits.float(), labels[part], reduction="none")

    def step() -> None:
        for start in range(0, batch, micro):
            with _autocast(device):
                losses = loss_of(slice(start, start + micro))
            (losses.sum() / batch).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    first = _timed(step, device, 1)
    _timed(step, device, max(0, case.warmup - 1))
    seconds = _timed(step, device, case.steps) / case.steps
    return {"stepSeconds": seconds, "samplesPerSecond": batch / seconds, "firstStepSeconds": first}


def _timed(step: Callable[[], None], device: torch.device, count: int) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    for _ in range(count):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - started


def loop_steps(
    case: Case, job: TrainingJob, store: LocalStore, device: torch.device, *, every: int, total: int
) -> dict[str, Any]:
    """Time the real stage path step by step: the time at which each step's loss reached the host."""
    marks: dict[int, float] = {}
    losses: dict[int, float] = {}
    cuda = device.type == "cuda"
    sync_window = (case.warmup, every - 1)  # steady steps before the mid-run checkpoint

    def on_step(step: int, loss: float) -> None:
        marks[step] = time.perf_counter()
        losses[step] = loss
        if cuda and step == sync_window[0]:
            torch.cuda.set_sync_debug_mode("warn")
        if cuda and step == sync_window[1]:
            torch.cuda.set_sync_debug_mode("default")

    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_training(job, store, on_step=on_step)
    syncs = [str(w.message).splitlines()[0] for w in caught if "synchroniz" in str(w.message).lower()]
    steady = (marks[every - 1] - marks[case.warmup]) / (every - 1 - case.warmup)
    span = marks[total - 1] - marks[case.warmup]
    extra = max(0.0, span - steady * (total - 1 - case.warmup))
    out: dict[str, Any] = {
        "steadySeconds": steady,
        "checkpointExtraSeconds": extra,
        "loss": {"first": losses[1], "last": losses[total], "median": statistics.median(losses.values())},
        "hostSyncs": {
            "perStep": len(syncs) / (sync_window[1] - sync_window[0]) if cuda else None,
            "messages": sorted(set(syncs))[:5],
        },
    }
    if cuda:
        free, device_total = torch.cuda.mem_get_info(device)
        context = (device_total - free) - torch.cuda.memory_reserved(device)
        out["memory"] = {
            "peakAllocatedBytes": torch.cuda.max_memory_allocated(device),
            "peakReservedBytes": torch.cuda.max_memory_reserved(device),
            "contextBytes": context,
        }
    return out


def _memory_record(measured: dict[str, Any] | None, planner: float, model: Model) -> dict[str, Any]:
    """Peak memory of the process (CUDA context + the allocator's peak) against the planner's estimate."""
    out: dict[str, Any] = {"plannerBytes": planner}
    if model == "router":
        out["note"] = "the planner places only experts; this is its expert formula for the same preset"
    if measured is None:
        out["measuredBytes"] = None
        out["plannerUnderEstimate"] = None
        return out
    total = measured["contextBytes"] + measured["peakReservedBytes"]
    out.update(measured, measuredBytes=total, plannerUnderEstimate=(total - planner) / total)
    return out


def _release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
