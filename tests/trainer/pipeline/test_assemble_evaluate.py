"""The assemble and evaluate stages on a really trained (tiny) run.

Assemble must check the contract, write a model/ that DDMPipeline loads, never leave a
half-written model/ that looks finished, and be idempotent; evaluate must write grids and
a metrics.json whose numbers mean what they say.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

from atoll import layout
from atoll.store import LocalStore
from atoll.trainer.context import StageContext
from atoll.trainer.heartbeat import read_progress
from atoll.trainer.models import ModelConfigError
from atoll.trainer.pipeline import MARKER, DDMPipeline
from atoll.trainer.stages import assemble, evaluate
from atoll.trainer.stages.assemble import ContractError, model_complete, open_model

from .conftest import copy_run


def _root(ctx: StageContext) -> Path:
    assert isinstance(ctx.store, LocalStore)
    return ctx.store.root


def test_assemble_writes_a_loadable_model_once(trained_run: StageContext, tmp_path: Path) -> None:
    ctx = copy_run(trained_run, tmp_path / "run")
    assemble.run(ctx)
    model = _root(ctx) / "model"
    assert model_complete(ctx.store)
    marker_time = (model / MARKER).stat().st_mtime_ns
    progress = read_progress(ctx.store, "assemble")
    assert progress is not None
    assert progress.state == "done"

    pipeline = DDMPipeline.from_pretrained(model)
    pipeline.set_progress_bar_config(disable=True)
    assert pipeline.num_experts == 2
    assert pipeline.config.default_strategy == "top-1"
    assert pipeline.latent_shape == (3, 8, 8)
    out = pipeline("a handwritten 4", num_images_per_prompt=2, generator=0, return_usage=True)
    assert len(out.images) == 2
    assert all(sum(step["selected"]) == pytest.approx(1.0) for step in out.usage or [])

    # the experts' weights are the EMA weights of their final checkpoints
    from atoll.trainer.models import load_expert_for_sampling

    final = load_expert_for_sampling(ctx.store, 1)
    for name, tensor in final.state_dict().items():
        torch.testing.assert_close(pipeline.experts[1].state_dict()[name], tensor, rtol=0, atol=0)

    assemble.run(ctx)  # idempotent: the finished model is left alone
    assert (model / MARKER).stat().st_mtime_ns == marker_time


def test_half_written_model_is_never_taken_for_finished(trained_run: StageContext, tmp_path: Path) -> None:
    ctx = copy_run(trained_run, tmp_path / "run")
    # an assembly interrupted while uploading: some files, no marker
    ctx.store.put_bytes("model/model_index.json", b"{}")
    ctx.store.put_bytes("model/expert_0/config.json", b"{}")
    assert not model_complete(ctx.store)
    with pytest.raises(Exception, match="not assembled yet"), open_model(ctx.store):
        pass
    assemble.run(ctx)
    assert model_complete(ctx.store)
    index = json.loads((_root(ctx) / "model" / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_ddm", "DDMPipeline"]  # diffusers loads the class from pipeline_ddm.py

    # a file that lost bytes after the marker was written makes the model incomplete again
    weights = next((_root(ctx) / "model" / "expert_0").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:100])
    assert not model_complete(ctx.store)


def test_contract_mismatch_is_refused_and_nothing_written(trained_run: StageContext, tmp_path: Path) -> None:
    ctx = copy_run(trained_run, tmp_path / "run")
    info = ctx.store.get_json("data/info.json")
    info["textShape"] = [info["textShape"][0], info["textShape"][1] + 1]
    ctx.store.put_json("data/info.json", info)
    with pytest.raises(ContractError, match="text encoder hashed-bow makes embeddings"):
        assemble.run(ctx)
    assert not ctx.store.exists("model/model_index.json")
    progress = read_progress(ctx.store, "assemble")
    assert progress is not None
    assert progress.state == "failed"


def test_unfinished_expert_is_refused(trained_run: StageContext, tmp_path: Path) -> None:
    ctx = copy_run(trained_run, tmp_path / "run")
    checkpoints = sorted((_root(ctx) / layout.checkpoints(layout.expert(1))).iterdir())
    import shutil

    shutil.rmtree(checkpoints[-1])  # drop the final checkpoint: expert 1 looks interrupted
    with pytest.raises(ModelConfigError, match="has not finished training"):
        assemble.run(ctx)


def _inception_stand_in(path: Path) -> None:
    """A TorchScript module with the Inception FID network's call signature (uint8 in, features out)."""

    class Features(torch.nn.Module):
        def forward(self, images: torch.Tensor, return_features: bool = False) -> torch.Tensor:
            x = images.float() / 255.0
            return torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3)), x[:, :, ::2, ::2].flatten(1)[:, :10]], dim=1)

    with warnings.catch_warnings():  # TorchScript is deprecated, but it is the format NVIDIA ships
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.script(Features()).save(str(path))


def test_evaluate_writes_grids_and_metrics(
    trained_run: StageContext, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, weights_dir: Path
) -> None:
    ctx = copy_run(trained_run, tmp_path / "run")
    assemble.run(ctx)
    inception = tmp_path / "inception-2015-12-05.pt"
    _inception_stand_in(inception)
    monkeypatch.setenv("ATOLL_INCEPTION_WEIGHTS", str(inception))
    evaluate.run(ctx)

    metrics = ctx.store.get_json("eval/metrics.json")
    assert set(metrics["strategies"]) == {"top-1", "full"}
    top1, full = metrics["strategies"]["top-1"], metrics["strategies"]["full"]
    assert top1["expertsPerStep"] == pytest.approx(1.0)
    assert full["expertsPerStep"] == pytest.approx(2.0)
    assert sum(top1["expertUsage"]) == pytest.approx(1.0)
    assert sum(full["expertWeight"]) == pytest.approx(1.0)
    for row in (top1, full):
        assert row["frechetDistance"] > 0
        assert row["fid"] is not None
        assert -1 <= row["clipSimilarity"] <= 1  # a tiny random CLIP: computed, not meaningful
        png = (_root(ctx) / row["grid"]).read_bytes()
        assert png.startswith(b"\x89PNG")
    assert top1["grid"] == "eval/grid-top-1.png"
    assert metrics["reference"]["frechetDistance"] >= 0
    assert metrics["fid"]["available"] is True
    assert metrics["clipSimilarity"] == {
        "available": True,
        "model": "openai/clip-vit-large-patch14",
        "weights": str(weights_dir / "clip-vitl14"),
    }
    assert -1 <= metrics["reference"]["clipSimilarity"] <= 1
    assert metrics["classifier"]["classes"] == 10
    assert metrics["router"]["available"] is True
    assert len(metrics["router"]["accuracyBySigma"]) == 10
    assert metrics["samples"] == 24

    evaluate.run(ctx)  # idempotent
    assert ctx.store.get_json("eval/metrics.json") == metrics


def test_fid_unavailable_without_inception_weights(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from atoll.trainer.evaluation.inception import find_inception

    monkeypatch.delenv("ATOLL_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.setenv("ATOLL_WEIGHTS_DIR", str(tmp_path))
    path, reason = find_inception()
    assert path is None
    assert f"{tmp_path}/inception-2015-12-05.pt" in reason
    assert "ATOLL_INCEPTION_WEIGHTS" in reason
    (tmp_path / "inception-2015-12-05.pt").write_bytes(b"weights")
    assert find_inception() == (tmp_path / "inception-2015-12-05.pt", "")
