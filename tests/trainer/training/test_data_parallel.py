"""Data parallelism: two gloo processes on the CPU train exactly like one process, and a stage that
torchrun starts joins torchrun's group (DistributedDataParallel even with one process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from atoll import layout
from atoll.store import LocalStore
from atoll.store.checkpoint import CheckpointStore
from atoll.trainer.context import StageContext
from atoll.trainer.heartbeat import read_progress
from atoll.trainer.stages import expert
from atoll.trainer.training.batching import BatchPlanError
from atoll.trainer.training.runner import run_training
from tests.trainer.training.synthetic import synthetic_spec, write_synthetic_run


def test_two_processes_follow_the_single_process_loss_curve(tmp_path: Path) -> None:
    spec = synthetic_spec(steps=3, checkpoint_every=2)
    single = LocalStore(tmp_path / "single")
    write_synthetic_run(single, spec=spec)
    reference = run_training(expert.expert_job(StageContext(spec=spec, store=single, expert=0)), single)
    assert reference is not None

    store = LocalStore(tmp_path / "ddp")
    write_synthetic_run(store, spec=spec)
    job = expert.expert_job(StageContext(spec=spec, store=store, expert=0, gpus=2, micro_batch=4))
    assert (job.settings.batch.world, job.settings.batch.grad_accum) == (2, 2)
    result = run_training(job, store)  # spawns 2 processes (gloo): rank 0 checkpoints and reports

    assert result is not None
    assert result.end_step == 3
    torch.testing.assert_close(result.losses, reference.losses, rtol=1e-4, atol=1e-5)
    final = CheckpointStore(store, layout.expert(0), read_only=True).latest()
    assert final is not None
    assert final.step == 3
    state = json.loads((store.root / final.files["trainer_state.json"].key).read_text())
    assert (state["world"], state["micro_batch"], state["grad_accum"]) == (2, 4, 2)
    progress = read_progress(store, "expert", 0)
    assert progress is not None
    assert progress.state == "done"


def test_a_stage_started_by_torchrun_trains_in_its_group_like_a_single_process(tmp_path: Path) -> None:
    spec = synthetic_spec(steps=3, checkpoint_every=2)
    single = LocalStore(tmp_path / "single")
    write_synthetic_run(single, spec=spec)
    reference = run_training(expert.expert_job(StageContext(spec=spec, store=single, expert=0)), single)
    assert reference is not None

    store = LocalStore(tmp_path / "torchrun")
    write_synthetic_run(store, spec=spec)
    command = [
        *(sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1"),
        *("-m", "--", "atoll.trainer", "expert", "--run", str(store.root / layout.SPEC), "--store", str(store.root)),
        *("--expert", "0"),
    ]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    # One process, yet the model trains wrapped in DistributedDataParallel over torchrun's gloo group.
    assert "DistributedDataParallel" in done.stderr
    assert "backend=gloo ranks=1" in done.stderr
    final = CheckpointStore(store, layout.expert(0), read_only=True).latest()
    assert final is not None
    assert final.step == 3
    assert final.metadata["loss"] == pytest.approx(reference.losses[-1], rel=1e-4)
    progress = read_progress(store, "expert", 0)
    assert progress is not None
    assert progress.state == "done"


def test_torchrun_with_another_process_count_than_gpus_is_refused_before_joining(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = synthetic_spec(steps=2)
    store = LocalStore(tmp_path)
    write_synthetic_run(store, spec=spec)
    for name, value in {"TORCHELASTIC_RUN_ID": "test", "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(name, value)
    job = expert.expert_job(StageContext(spec=spec, store=store, expert=0))
    with pytest.raises(BatchPlanError, match="torchrun started 2 processes but the stage was given --gpus 1"):
        run_training(job, store)
    assert not torch.distributed.is_initialized()
    assert CheckpointStore(store, layout.expert(0), read_only=True).latest() is None


def test_an_expert_resumes_exactly_on_more_gpus_then_on_fewer(tmp_path: Path) -> None:
    """What an elastic expert does at checkpoint boundaries: 1 process to the step-2 checkpoint,
    2 from there to step 6, 1 again from the 2 processes' step-4 checkpoint — the same global
    batch, examples and noise per step as one process all along."""
    spec = synthetic_spec(steps=6, checkpoint_every=2)
    whole = LocalStore(tmp_path / "whole")
    write_synthetic_run(whole, spec=spec)
    reference = run_training(expert.expert_job(StageContext(spec=spec, store=whole, expert=0)), whole)
    assert reference is not None

    def stop_after_step_3(done: int, loss: float) -> None:
        if done == 3:
            raise RuntimeError("stopped after step 3")

    store = LocalStore(tmp_path / "elastic")
    write_synthetic_run(store, spec=spec)
    with pytest.raises(RuntimeError, match="stopped after step 3"):
        run_training(
            expert.expert_job(StageContext(spec=spec, store=store, expert=0)), store, on_step=stop_after_step_3
        )
    grown = run_training(
        expert.expert_job(StageContext(spec=spec, store=store, expert=0, gpus=2, micro_batch=4)), store
    )
    assert grown is not None
    assert grown.start_step == 2
    assert grown.batch is not None
    assert (grown.batch.world, grown.batch.micro_batch, grown.batch.grad_accum) == (2, 4, 2)
    torch.testing.assert_close(grown.losses, reference.losses[2:], rtol=1e-4, atol=1e-5)

    checkpoints = CheckpointStore(store, layout.expert(0), read_only=True)
    final = checkpoints.latest()
    assert final is not None
    assert final.step == 6
    # As if the 2-process attempt had stopped before committing its last checkpoint.
    (store.root / final.files["trainer_state.json"].key).parents[1].joinpath("manifest.json").unlink()
    latest = checkpoints.latest()
    assert latest is not None
    assert latest.step == 4
    shrunk = run_training(expert.expert_job(StageContext(spec=spec, store=store, expert=0)), store)
    assert shrunk is not None
    assert shrunk.start_step == 4
    assert shrunk.batch is not None
    assert (shrunk.batch.world, shrunk.batch.grad_accum * shrunk.batch.micro_batch) == (1, 16)
    torch.testing.assert_close(shrunk.losses, reference.losses[4:], rtol=1e-4, atol=1e-5)
