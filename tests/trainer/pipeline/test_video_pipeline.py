"""A video DDMPipeline: clips in diffusers' video output conventions, routing per clip (one set of experts
for every frame of a clip), image-to-video that keeps the given first frame, and diffusers' own loader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from atoll.trainer.pipeline import DDMPipeline

CLIP = (3, 4, 8, 8)
PROMPTS = ["a 1 moving left", "a 2 moving up", "a 3 moving right"]


def video_pipeline(experts: int = 3, *, first_frame: bool = True, preset: str = "video-tiny") -> DDMPipeline:
    """K random experts (video-tiny, or `preset`) and a per-clip router over identity-VAE clips [3, 4, 8, 8]."""
    from atoll.trainer.encoders import text_encoder_for, vae_for
    from atoll.trainer.models.expert import build_expert
    from atoll.trainer.models.router import build_router
    from atoll.trainer.pipeline import flow_match_scheduler

    text = text_encoder_for("hashed-bow")
    pipeline = DDMPipeline(
        vae=vae_for("identity").model,
        text_encoder=text.model,
        scheduler=flow_match_scheduler(),
        router=build_router(preset, clusters=experts, latent_shape=CLIP, seed=99),
        experts=[build_expert(preset, latent_shape=CLIP, text_dim=text.dim, seed=k) for k in range(experts)],
        default_strategy="top-1",
        default_steps=3,
        default_guidance=2.0,
        latent_shape=CLIP,
        first_frame_conditioning=first_frame,
    )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def test_clips_come_in_diffusers_video_conventions() -> None:
    pipeline = video_pipeline()
    assert pipeline.is_video
    pil = pipeline(PROMPTS, generator=0)
    assert pil.images is None
    assert len(pil.frames) == 3
    assert all(len(clip) == 4 and clip[0].size == (8, 8) for clip in pil.frames)
    array = pipeline(PROMPTS, generator=0, output_type="np").frames
    assert isinstance(array, np.ndarray)
    assert array.shape == (3, 4, 8, 8, 3)
    tensor = pipeline(PROMPTS, generator=0, output_type="pt").frames
    assert tensor.shape == (3, 4, 3, 8, 8)
    np.testing.assert_allclose(array, tensor.permute(0, 1, 3, 4, 2).numpy(), atol=1e-6)
    assert float(tensor.min()) >= 0.0
    assert float(tensor.max()) <= 1.0


def test_every_frame_of_a_clip_goes_to_the_same_experts() -> None:
    """The router gives one distribution per clip: each selected expert denoises whole clips, and each
    clip's velocity comes from the experts chosen for it, in every frame."""
    pipeline = video_pipeline(3)
    seen: list[list[tuple[int, ...]]] = [[] for _ in range(3)]
    for k, expert in enumerate(pipeline.experts):
        expert.register_forward_hook(lambda _m, args, _out, k=k: seen[k].append(tuple(args[0].shape)))
    out = pipeline(PROMPTS * 2, strategy="top-1", guidance_scale=1.0, return_usage=True, generator=1)
    for calls in seen:
        assert all(shape[1:] == CLIP for shape in calls)  # whole clips: every frame, never a frame alone
    for step in out.usage or []:
        assert sum(step["selected"]) == pytest.approx(1.0)  # top-1: one expert per clip and step
    assert sum(shape[0] for calls in seen for shape in calls) == 3 * len(PROMPTS * 2)

    x = torch.randn(4, *CLIP)
    sigma = torch.full((4,), 0.6)
    captions = pipeline._captions(PROMPTS[:2] * 2, None, None, 1)
    weights = pipeline._route(pipeline_strategy("top-1"), x, sigma, captions)
    velocities = pipeline._expert_velocities(x, sigma, weights, captions, 1.0, given=None)
    chosen = weights.argmax(1)
    for b in range(4):
        own = velocities[int(chosen[b])]
        assert own is not None
        for k, other in enumerate(velocities):
            if k != int(chosen[b]) and other is not None:
                assert torch.all(other[b] == 0)  # an expert not chosen for clip b leaves all its frames alone
        assert torch.all(own[b].abs().sum(dim=(0, 2, 3)) > 0)  # the chosen one moves every frame


def pipeline_strategy(name: str):  # type: ignore[no-untyped-def]
    from atoll.trainer.strategies import parse_strategy

    return parse_strategy(name)


def test_image_to_video_keeps_the_given_first_frame() -> None:
    pipeline = video_pipeline()
    first = torch.linspace(-1, 1, 3 * 8 * 8).reshape(3, 8, 8)
    out = pipeline(PROMPTS, image=first, generator=3, output_type="pt", strategy="top-2")
    assert out.frames is not None
    torch.testing.assert_close(out.frames[:, 0], ((first + 1) / 2).expand(3, -1, -1, -1))
    assert not torch.allclose(out.frames[:, 1], out.frames[:, 0])  # the rest is generated
    picture = PIL.Image.fromarray(np.full((16, 16, 3), 255, dtype=np.uint8))  # resized to the model's side
    assert torch.all(pipeline(PROMPTS[0], image=picture, generator=3, output_type="pt").frames[:, 0] == 1.0)
    with pytest.raises(ValueError, match="not trained to start from a given first frame"):
        video_pipeline(first_frame=False)(PROMPTS[0], image=first)
    with pytest.raises(ValueError, match=r"image must be \[3, 8, 8\]"):
        pipeline(PROMPTS[0], image=torch.zeros(3, 4, 4))


@pytest.mark.parametrize("preset", ["video-tiny", "video-nano"])  # video-nano: absolute 3-D positions
def test_video_model_directory_loads_through_diffusers(tmp_path: Path, preset: str) -> None:
    from diffusers import DiffusionPipeline

    pipeline = video_pipeline(2, preset=preset)
    expected = pipeline(PROMPTS, generator=5, return_latents=True).latents
    pipeline.save_pretrained(tmp_path / "model")
    assert (tmp_path / "model" / "pipeline_ddm.py").is_file()
    ours = DDMPipeline.from_pretrained(tmp_path / "model")
    theirs = DiffusionPipeline.from_pretrained(tmp_path / "model", trust_remote_code=True)
    for loaded in (ours, theirs):
        assert isinstance(loaded, DDMPipeline)
        loaded.set_progress_bar_config(disable=True)
        assert loaded.latent_shape == CLIP
        assert loaded.config.first_frame_conditioning is True
        torch.testing.assert_close(loaded(PROMPTS, generator=5, return_latents=True).latents, expected)
