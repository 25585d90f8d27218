"""DDMPipeline mechanics on random tiny experts: save/load, determinism, routing, guidance.

No training here: the point is that the sampler runs exactly the experts a strategy picks,
guides each expert before combining, and round-trips through the diffusers layout.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from atoll.trainer import flow
from atoll.trainer.models.expert import velocity
from atoll.trainer.models.router import router_logits
from atoll.trainer.pipeline import MARKER, DDMPipeline, ModelDirError
from atoll.trainer.strategies import StrategyError, parse_strategy

PROMPTS = ["a handwritten 3", "a handwritten 7", "a handwritten 0", "a handwritten 1"]


def _count_rows(pipeline: DDMPipeline) -> list[list[int]]:
    """Install hooks recording the batch size of every expert call; returns the per-expert lists."""
    calls: list[list[int]] = [[] for _ in range(pipeline.num_experts)]
    for k, expert in enumerate(pipeline.experts):
        expert.register_forward_hook(lambda _m, args, _out, k=k: calls[k].append(int(args[0].shape[0])))
    return calls


def test_save_load_round_trip_is_deterministic(make_pipeline: Callable[..., DDMPipeline], tmp_path: Path) -> None:
    pipeline = make_pipeline(3)
    first = pipeline(PROMPTS, generator=7, return_latents=True)
    again = pipeline(PROMPTS, generator=7, return_latents=True)
    other = pipeline(PROMPTS, generator=8, return_latents=True)
    assert torch.equal(first.latents, again.latents)
    assert not torch.equal(first.latents, other.latents)

    pipeline.save_pretrained(tmp_path / "model")
    index = json.loads((tmp_path / "model" / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_ddm", "DDMPipeline"]  # diffusers' custom-pipeline convention
    assert [name for name in sorted(index) if name.startswith("expert_")] == ["expert_0", "expert_1", "expert_2"]
    assert index["scheduler"] == ["diffusers", "FlowMatchEulerDiscreteScheduler"]
    for folder in ("expert_0", "expert_2", "router", "vae", "text_encoder", "scheduler"):
        assert (tmp_path / "model" / folder).is_dir(), folder

    loaded = DDMPipeline.from_pretrained(tmp_path / "model")
    loaded.set_progress_bar_config(disable=True)
    assert loaded.num_experts == 3
    assert loaded.config.default_strategy == "top-2"
    reloaded = loaded(PROMPTS, generator=7, return_latents=True)
    assert torch.equal(first.latents, reloaded.latents)
    assert len(reloaded.images) == 4
    assert reloaded.images[0].size == (8, 8)

    # diffusers' own entry point finds the class through the model directory's pipeline_ddm.py.
    from diffusers import DiffusionPipeline

    through_diffusers = DiffusionPipeline.from_pretrained(tmp_path / "model", trust_remote_code=True)
    assert isinstance(through_diffusers, DDMPipeline)
    through_diffusers.set_progress_bar_config(disable=True)
    assert through_diffusers.num_experts == 3
    assert torch.equal(through_diffusers(PROMPTS, generator=7, return_latents=True).latents, first.latents)


def test_only_selected_experts_run(make_pipeline: Callable[..., DDMPipeline]) -> None:
    pipeline = make_pipeline(3)
    calls = _count_rows(pipeline)
    out = pipeline(PROMPTS, strategy="top-1", num_inference_steps=3, guidance_scale=2.0, return_usage=True)
    # every sample runs on exactly one expert per step, twice (caption and empty caption)
    assert sum(sum(c) for c in calls) == 3 * len(PROMPTS) * 2
    assert all(sum(step["selected"]) == pytest.approx(1.0) for step in out.usage)

    calls = _count_rows(make_pipeline(3))
    pipeline = make_pipeline(3)
    calls = _count_rows(pipeline)
    pipeline(PROMPTS, strategy="top-2", num_inference_steps=3, guidance_scale=1.0)
    # guidance off: one pass per selected (sample, expert), two experts per sample
    assert sum(sum(c) for c in calls) == 3 * len(PROMPTS) * 2
    assert max(len(c) for c in calls) <= 3  # batched: at most one call per expert and step

    pipeline = make_pipeline(3)
    calls = _count_rows(pipeline)
    pipeline(PROMPTS, strategy="full", num_inference_steps=2, guidance_scale=2.0)
    assert calls == [[8, 8], [8, 8], [8, 8]]


def test_one_step_matches_guided_mixture(make_pipeline: Callable[..., DDMPipeline]) -> None:
    """x_final = x_1 − v with v = Σ_k w_k (u_k + g (c_k − u_k)): guidance per expert, then the mixture."""
    pipeline = make_pipeline(3)
    generator = torch.Generator().manual_seed(3)
    noise = torch.randn(len(PROMPTS), 3, 8, 8, generator=generator)
    guidance = 3.0
    for strategy in ("full", "top-2", "threshold:0.6"):
        out = pipeline(
            PROMPTS,
            latents=noise,
            strategy=strategy,
            num_inference_steps=1,
            guidance_scale=guidance,
            return_latents=True,
        )
        with torch.no_grad():
            text, mask = pipeline.text().encode_prompts(PROMPTS)
            null, null_mask = pipeline.text().encode_prompts([""] * len(PROMPTS))
            sigma = torch.ones(len(PROMPTS))
            weights = parse_strategy(strategy).weights(torch.softmax(router_logits(pipeline.router, noise, sigma), 1))
            guided = []
            for expert in pipeline.experts:
                conditional = velocity(expert, noise, sigma, text, mask)
                unconditional = velocity(expert, noise, sigma, null, null_mask)
                guided.append(unconditional + guidance * (conditional - unconditional))
            expected = noise - flow.combine(guided, weights)
        torch.testing.assert_close(out.latents, expected, atol=1e-5, rtol=1e-5)


def test_prompt_embeds_equal_prompts(make_pipeline: Callable[..., DDMPipeline]) -> None:
    pipeline = make_pipeline(2, strategy="top-1")
    text, mask = pipeline.text().encode_prompts(PROMPTS)
    by_prompt = pipeline(PROMPTS, generator=1, return_latents=True).latents
    by_embeds = pipeline(prompt_embeds=text, prompt_attention_mask=mask, generator=1, return_latents=True).latents
    assert torch.equal(by_prompt, by_embeds)
    with pytest.raises(ValueError, match="prompt"):
        pipeline(generator=1)


def test_num_images_per_prompt_and_pt_output(make_pipeline: Callable[..., DDMPipeline]) -> None:
    out = make_pipeline(2)(["a handwritten 5"], num_images_per_prompt=3, output_type="pt")
    images = out.images
    assert isinstance(images, torch.Tensor)
    assert images.shape == (3, 3, 8, 8)
    assert float(images.min()) >= 0.0
    assert float(images.max()) <= 1.0


def test_strategy_needing_more_experts_is_refused(make_pipeline: Callable[..., DDMPipeline]) -> None:
    with pytest.raises(StrategyError, match="selects 3 experts but the model has only 2"):
        make_pipeline(2)(PROMPTS, strategy="top-k:3")


def test_single_expert_model_has_no_router(make_pipeline: Callable[..., DDMPipeline], tmp_path: Path) -> None:
    pipeline = make_pipeline(1)
    assert pipeline.router is None
    before = pipeline(PROMPTS, strategy="top-2", generator=0, return_latents=True, return_usage=True)
    assert all(step["selected"] == [1.0] for step in before.usage)
    pipeline.save_pretrained(tmp_path / "monolith")
    assert not (tmp_path / "monolith" / "router").exists()
    loaded = DDMPipeline.from_pretrained(tmp_path / "monolith")
    loaded.set_progress_bar_config(disable=True)
    assert loaded.router is None
    after = loaded(PROMPTS, strategy="top-2", generator=0, return_latents=True)
    assert torch.equal(before.latents, after.latents)


def test_incomplete_or_damaged_model_directories(make_pipeline: Callable[..., DDMPipeline], tmp_path: Path) -> None:
    with pytest.raises(ModelDirError, match="not a model directory"):
        DDMPipeline.from_pretrained(tmp_path / "absent")
    model = tmp_path / "model"
    make_pipeline(2).save_pretrained(model)

    marker = json.loads((model / MARKER).read_text())
    (model / MARKER).unlink()
    with pytest.raises(ModelDirError, match="incomplete"):
        DDMPipeline.from_pretrained(model)
    (model / MARKER).write_text(json.dumps(marker))

    weights = next((model / "expert_1").glob("*.safetensors"))
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelDirError, match="damaged: expert_1/"):
        DDMPipeline.from_pretrained(model)
    weights.write_bytes(data)

    index = json.loads((model / "model_index.json").read_text())
    index.pop("expert_1")
    (model / "model_index.json").write_text(json.dumps(index))
    marker["files"]["model_index.json"] = (model / "model_index.json").stat().st_size
    (model / MARKER).write_text(json.dumps(marker))
    with pytest.raises(ModelDirError, match="disagree on the number of experts"):
        DDMPipeline.from_pretrained(model)


def test_router_must_match_the_experts(make_pipeline: Callable[..., DDMPipeline]) -> None:
    pipeline = make_pipeline(3)
    parts: dict[str, Any] = {
        "vae": pipeline.vae,
        "text_encoder": pipeline.text_encoder,
        "scheduler": pipeline.scheduler,
        "experts": pipeline.experts[:2],
    }
    with pytest.raises(ModelDirError, match="needs a router"):
        DDMPipeline(**parts)
    with pytest.raises(ModelDirError, match="classifies 3 clusters but there are 2 experts"):
        DDMPipeline(router=pipeline.router, **parts)


def test_atoll_sample_writes_a_png(
    make_pipeline: Callable[..., DDMPipeline], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import PIL.Image

    from atoll.cli import main as atoll_main

    make_pipeline(3).save_pretrained(tmp_path / "model")
    out = tmp_path / "samples" / "sevens.png"
    args = ["sample", str(tmp_path / "model"), "--prompt", "a handwritten 7", "--strategy", "top-2", "--steps", "3"]
    assert atoll_main([*args, "--seed", "4", "--num", "4", "--out", str(out)]) == 0
    assert "2.00 of 3 experts run per step" in capsys.readouterr().out
    with PIL.Image.open(out) as grid:
        assert grid.size == (4 * 64 + 3 * 2, 64)  # four 8×8 samples enlarged to 64 px, 2 px apart
    single = tmp_path / "one.png"
    assert atoll_main([*args, "--out", str(single)]) == 0
    with PIL.Image.open(single) as image:
        assert image.size == (8, 8)
    assert atoll_main([*args[:-2], "--strategy", "top-k:4", "--out", str(single)]) == 1
    assert "selects 4 experts but the model has only 3" in capsys.readouterr().err
