"""The loop's GPU paths as far as a CPU can check them: the loss read-back keeps the step order and
values, compiled transformer blocks train like eager ones and keep checkpoints loadable, and the
spec's `compile` reaches the loop."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from atoll import layout
from atoll.store import LocalStore
from atoll.store.checkpoint import CheckpointStore
from atoll.trainer.context import StageContext
from atoll.trainer.models.expert import build_expert
from atoll.trainer.models.router import build_router
from atoll.trainer.stages import expert
from atoll.trainer.training.gpu import LossReadback, compile_blocks, repeated_blocks, to_device
from atoll.trainer.training.runner import run_training
from tests.trainer.training.synthetic import synthetic_spec, write_synthetic_run


def test_loss_readback_on_the_cpu_settles_each_step_at_once_in_order() -> None:
    readback = LossReadback(torch.device("cpu"), ahead=2)
    assert not readback.asynchronous
    settled = []
    for step, value in enumerate([0.5, 0.25, float("nan")], start=1):
        readback.push(step, torch.tensor(value))
        settled += list(readback.settled())
        assert len(readback) == 0  # nothing is ever left pending on the CPU
    assert settled[:2] == [(1, 0.5), (2, 0.25)]
    assert settled[2][0] == 3
    assert settled[2][1] != settled[2][1]  # NaN is handed back as NaN: the loop's check sees it


def test_to_device_on_the_cpu_is_the_plain_tensor() -> None:
    tensor = torch.arange(4.0)
    assert to_device(tensor, torch.device("cpu")) is tensor


def test_repeated_blocks_are_the_transformer_blocks_of_experts_and_routers() -> None:
    model = build_expert("tiny", latent_shape=(3, 8, 8), text_dim=16, seed=0)
    assert repeated_blocks(model) == list(model.transformer_blocks)
    router = build_router("tiny", clusters=2, latent_shape=(3, 8, 8), seed=0)
    assert len(repeated_blocks(router)) == 2
    with pytest.raises(ValueError, match="no repeated transformer blocks"):
        compile_blocks(torch.nn.Linear(2, 2))


def test_spec_compile_reaches_the_loop_as_the_inductor_backend(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    write_synthetic_run(store, spec=synthetic_spec(steps=2))
    assert expert.expert_job(StageContext(spec=synthetic_spec(steps=2), store=store, expert=0)).settings.compile is None
    spec = synthetic_spec(steps=2, expert={"compile": True})
    assert expert.expert_job(StageContext(spec=spec, store=store, expert=0)).settings.compile == "inductor"


# Dynamo probes `.grad` of the block's non-leaf input while tracing, inside a filter meant to hide
# the resulting warning; pytest's warnings-as-errors filter still sees it.
@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf Tensor:UserWarning")
def test_compiled_blocks_train_like_eager_and_checkpoint_the_same_weights(tmp_path: Path) -> None:
    # aot_eager traces the blocks (forward and backward) like inductor does, without generating C++:
    # the test checks the wiring and the checkpoints, the GPU benchmark measures the speed.
    spec = synthetic_spec(steps=3, checkpoint_every=3)
    runs = {}
    for name, backend in (("eager", None), ("compiled", "aot_eager")):
        store = LocalStore(tmp_path / name)
        write_synthetic_run(store, spec=spec)
        job = expert.expert_job(StageContext(spec=spec, store=store, expert=0))
        job = dataclasses.replace(job, settings=dataclasses.replace(job.settings, compile=backend))
        result = run_training(job, store)
        assert result is not None
        final = CheckpointStore(store, layout.expert(0), read_only=True).latest()
        assert final is not None
        weights = load_file(store.root / final.files["model/diffusion_pytorch_model.safetensors"].key)
        runs[name] = (result.losses, weights)
    (eager_losses, eager_weights), (compiled_losses, compiled_weights) = runs["eager"], runs["compiled"]
    torch.testing.assert_close(compiled_losses, eager_losses, rtol=1e-4, atol=1e-5)
    assert compiled_weights.keys() == eager_weights.keys()  # no `_orig_mod.` prefixes: loads into plain models
    for key, value in eager_weights.items():
        torch.testing.assert_close(compiled_weights[key], value, rtol=1e-4, atol=1e-5)
