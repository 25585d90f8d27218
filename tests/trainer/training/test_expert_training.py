"""The expert stage through the shared loop, in-process: it learns, resumes exactly (also with
another micro-batch × accumulation split), honours stepsPolicy and hands EMA weights to sampling."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from atoll import layout
from atoll.store import LocalStore
from atoll.store.checkpoint import CheckpointStore
from atoll.trainer.context import StageContext
from atoll.trainer.heartbeat import read_progress
from atoll.trainer.models import ModelConfigError, load_expert_for_sampling
from atoll.trainer.stages import expert
from atoll.trainer.training.runner import run_training
from atoll.trainer.training.state import CheckpointMismatchError
from tests.trainer.training.synthetic import synthetic_spec, write_synthetic_run


class CrashError(Exception):
    """Stands in for a kill at a given step."""


def crash_at(step: int):  # type: ignore[no-untyped-def]
    def hook(done: int, loss: float) -> None:
        if done == step:
            raise CrashError(f"killed after step {done}")

    return hook


def train_expert(store: LocalStore, *, k: int = 0, on_step=None, **ctx_args):  # type: ignore[no-untyped-def]
    spec = read_spec(store)
    return run_training(
        expert.expert_job(StageContext(spec=spec, store=store, expert=k, **ctx_args)), store, on_step=on_step
    )


def read_spec(store: LocalStore):  # type: ignore[no-untyped-def]
    from atoll.api.load import load_spec_json

    return load_spec_json(store.get_bytes(layout.SPEC))


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[LocalStore, list[float]]:
    """Expert 0 trained 40 steps on its synthetic cluster."""
    store = LocalStore(tmp_path_factory.mktemp("trained"))
    write_synthetic_run(store, steps=40, checkpoint_every=20, global_batch=8, expert={"learningRate": 2e-3})
    result = train_expert(store)
    assert result is not None
    return store, result.losses


def test_expert_learns_its_cluster(trained: tuple[LocalStore, list[float]]) -> None:
    store, losses = trained
    assert len(losses) == 40
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.7 * first, f"loss went from {first:.3f} to {last:.3f}"
    progress = read_progress(store, "expert", 0)
    assert progress is not None
    assert progress.state == "done"
    assert progress.step == 40
    assert progress.gpu == "cpu"
    assert progress.micro_batch == 8
    assert progress.grad_accum == 1
    assert progress.last_checkpoint is not None
    assert progress.last_checkpoint.step == 40
    steps = [c.step for c in CheckpointStore(store, layout.expert(0), read_only=True).list()]
    assert steps == [20, 40]


def test_finished_expert_is_idempotent_and_loads_for_sampling(trained: tuple[LocalStore, list[float]]) -> None:
    store, _ = trained
    started = time.monotonic()
    assert train_expert(store) is None  # already done: returns without training
    assert time.monotonic() - started < 5
    model = load_expert_for_sampling(store, 0)
    assert not model.training
    final = CheckpointStore(store, layout.expert(0), read_only=True).latest()
    assert final is not None
    assert final.metadata["final"] is True
    ema = load_file(store.root / final.files["ema/diffusion_pytorch_model.safetensors"].key)
    raw = load_file(store.root / final.files["model/diffusion_pytorch_model.safetensors"].key)
    for name, value in model.state_dict().items():
        assert torch.equal(value, ema[name]), name
    assert any(not torch.equal(ema[name], raw[name]) for name in ema)  # EMA, not the raw weights
    state = json.loads((store.root / final.files["trainer_state.json"].key).read_text())
    assert state["step"] == 40
    assert state["final"]
    assert state["task"]["preset"] == "tiny"


def test_exact_resume_after_a_crash(tmp_path: Path) -> None:
    spec = synthetic_spec(steps=8, checkpoint_every=3)
    reference = LocalStore(tmp_path / "reference")
    write_synthetic_run(reference, spec=spec)
    uninterrupted = train_expert(reference)
    assert uninterrupted is not None

    store = LocalStore(tmp_path / "crashed")
    write_synthetic_run(store, spec=spec)
    with pytest.raises(CrashError):
        train_expert(store, on_step=crash_at(5))
    assert read_progress(store, "expert", 0).state == "failed"  # type: ignore[union-attr]
    resumed = train_expert(store)
    assert resumed is not None
    assert resumed.start_step == 3
    assert resumed.resumed_from is not None
    torch.testing.assert_close(resumed.losses, uninterrupted.losses[3:], rtol=1e-6, atol=1e-7)
    assert (
        load_expert_for_sampling(store, 0).state_dict().keys()
        == load_expert_for_sampling(reference, 0).state_dict().keys()
    )
    for a, b in zip(
        load_expert_for_sampling(store, 0).parameters(),
        load_expert_for_sampling(reference, 0).parameters(),
        strict=True,
    ):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_resume_with_another_split_keeps_the_loss_curve(tmp_path: Path) -> None:
    spec = synthetic_spec(steps=6, checkpoint_every=2)
    reference = LocalStore(tmp_path / "reference")
    write_synthetic_run(reference, spec=spec)
    whole = train_expert(reference)  # one pass of 16
    assert whole is not None

    store = LocalStore(tmp_path / "split")
    write_synthetic_run(store, spec=spec)
    with pytest.raises(CrashError):
        train_expert(store, on_step=crash_at(3), micro_batch=8)  # 8 × 2
    resumed = train_expert(store, micro_batch=4, grad_accum=4)  # 4 × 4 from the step-2 checkpoint
    assert resumed is not None
    assert resumed.start_step == 2
    assert resumed.batch is not None
    assert (resumed.batch.micro_batch, resumed.batch.grad_accum) == (4, 4)
    # Same examples and noise per step; only the float summation order differs.
    torch.testing.assert_close(resumed.losses, whole.losses[2:], rtol=1e-4, atol=1e-5)
    progress = read_progress(store, "expert", 0)
    assert progress is not None
    assert (progress.micro_batch, progress.grad_accum) == (4, 4)


def test_a_changed_global_batch_is_refused_on_resume(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    write_synthetic_run(store, spec=synthetic_spec(steps=4, checkpoint_every=2))
    with pytest.raises(CrashError):
        train_expert(store, on_step=crash_at(3))
    write_synthetic_run(store, spec=synthetic_spec(steps=4, checkpoint_every=2, global_batch=8))
    with pytest.raises(CheckpointMismatchError, match=r"expert.globalBatchSize changed"):
        train_expert(store)
    with pytest.raises(ModelConfigError, match="has not finished training: its newest checkpoint is step 2 of 4"):
        load_expert_for_sampling(store, 0)


def test_steps_policy_proportional(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    spec = write_synthetic_run(
        store, sizes=(48, 32), spec=synthetic_spec(steps=5, expert={"stepsPolicy": "proportional"})
    )
    jobs = [expert.expert_job(StageContext(spec=spec, store=store, expert=k)) for k in (0, 1)]
    assert [job.settings.total_steps for job in jobs] == [6, 4]  # 5 × 2 × 48/80, 5 × 2 × 32/80
    result = run_training(jobs[1], store)
    assert result is not None
    assert result.end_step == 4
    final = CheckpointStore(store, layout.expert(1), read_only=True).latest()
    assert final is not None
    assert final.step == 4
    assert final.metadata["final"]


def test_bad_arguments_name_the_problem(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    spec = synthetic_spec()
    with pytest.raises(
        expert.StageInputError, match=r"partition/stats\.json is missing: run the partition stage first"
    ):
        expert.expert_job(StageContext(spec=spec, store=store, expert=0))
    write_synthetic_run(store, spec=spec)
    with pytest.raises(expert.StageInputError, match=r"--expert 2 is out of range: the partition has 2 clusters"):
        expert.expert_job(StageContext(spec=spec, store=store, expert=2))
    with pytest.raises(expert.StageInputError, match="needs --expert K"):
        expert.expert_job(StageContext(spec=spec, store=store))
    from atoll.trainer.training.batching import BatchPlanError

    with pytest.raises(BatchPlanError, match=r"micro-batch 5 does not divide expert\.globalBatchSize"):
        expert.expert_job(StageContext(spec=spec, store=store, expert=0, micro_batch=5))
