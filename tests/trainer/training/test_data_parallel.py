"""Data parallelism: two gloo processes on the CPU train exactly like one process."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from atoll import layout
from atoll.store import LocalStore
from atoll.store.checkpoint import CheckpointStore
from atoll.trainer.context import StageContext
from atoll.trainer.heartbeat import read_progress
from atoll.trainer.stages import expert
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
