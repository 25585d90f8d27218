"""Video experts (diffusers' WanTransformer3DModel) and the per-clip router: shapes, any frame count,
the clean first frame of image-to-video, and routing that reads the whole clip."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from atoll.trainer import flow
from atoll.trainer.models import ModelConfigError, build_expert, model_from_directory, velocity
from atoll.trainer.models.common import seeded
from atoll.trainer.models.expert import POSITIONS_KEY, expert_class, expert_config, token_timesteps
from atoll.trainer.models.router import build_router, router_logits

CLIP = (3, 4, 8, 8)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def test_video_expert_is_a_wan_transformer_that_trains_and_reloads(tmp_path: Path) -> None:
    expert = build_expert("video-tiny", latent_shape=CLIP, text_dim=16, seed=0)
    assert type(expert).__name__ == "WanTransformer3DModel"
    assert tuple(expert.config.patch_size) == (1, 2, 2)
    x_t, sigma = torch.randn(2, *CLIP), torch.rand(2)
    text, mask = torch.randn(2, 5, 16), torch.ones(2, 5, dtype=torch.bool)
    out = velocity(expert, x_t, sigma, text, mask)
    assert out.shape == x_t.shape
    out.square().mean().backward()
    assert all(p.grad is not None for p in expert.parameters())
    # Wan's 3-D RoPE: the same expert denoises clips of another length.
    with torch.no_grad():
        assert velocity(expert, torch.randn(1, 3, 6, 8, 8), sigma[:1], text[:1], mask[:1]).shape == (1, 3, 6, 8, 8)
    expert.save_pretrained(tmp_path)
    loaded = model_from_directory(tmp_path)
    assert type(loaded).__name__ == "WanTransformer3DModel"
    with torch.no_grad():
        torch.testing.assert_close(
            velocity(loaded, x_t, sigma, text, mask), velocity(expert.eval(), x_t, sigma, text, mask)
        )


def test_first_frame_tokens_are_seen_at_timestep_zero() -> None:
    x_t = torch.randn(2, *CLIP)
    sigma = torch.tensor([0.5, 0.8])
    steps = token_timesteps(sigma, x_t, (1, 2, 2), torch.tensor([True, False]))
    assert steps.shape == (2, 4 * 4 * 4)  # 4 latent frames × (8/2)² tokens
    assert torch.all(steps[0, :16] == 0)  # clip 0: its first frame's 16 tokens are clean
    assert torch.all(steps[0, 16:] == 500)
    assert torch.all(steps[1] == 800)  # clip 1: text-to-video, one timestep everywhere
    expert = build_expert("video-tiny", latent_shape=CLIP, text_dim=16, seed=0).eval()
    text, mask = torch.randn(2, 5, 16), torch.ones(2, 5, dtype=torch.bool)
    with torch.no_grad():
        plain = velocity(expert, x_t, sigma, text, mask)
        given = velocity(expert, x_t, sigma, text, mask, first_frame_given=torch.tensor([True, False]))
    assert not torch.allclose(plain[0], given[0])
    torch.testing.assert_close(plain[1], given[1])
    image_expert = build_expert("tiny", latent_shape=(3, 8, 8), text_dim=16, seed=0)
    with pytest.raises(ModelConfigError, match="first-frame condition is for video experts"):
        velocity(
            image_expert,
            torch.randn(1, 3, 8, 8),
            sigma[:1],
            text[:1],
            mask[:1],
            first_frame_given=torch.ones(1, dtype=torch.bool),
        )


def test_first_frame_condition_in_the_forward_process_and_loss() -> None:
    x0, noise = torch.randn(2, *CLIP), torch.randn(2, *CLIP)
    x_t = flow.add_noise(x0, noise, torch.tensor([0.7, 0.7]))
    given = torch.tensor([True, False])
    conditioned = flow.give_first_frame(x_t, x0, given)
    torch.testing.assert_close(conditioned[0, :, 0], x0[0, :, 0])
    torch.testing.assert_close(conditioned[0, :, 1:], x_t[0, :, 1:])
    torch.testing.assert_close(conditioned[1], x_t[1])
    # A prediction wrong only on the given first frame costs nothing for that clip.
    prediction = flow.target_velocity(x0, noise).clone()
    prediction[:, :, 0] += 5.0
    loss = flow.flow_matching_loss(prediction, x0, noise, given)
    assert float(loss[0]) == 0.0
    assert float(loss[1]) == pytest.approx(25.0 / 4)  # one of four frames is off by 5


def test_video_router_gives_one_distribution_per_clip_and_reads_time() -> None:
    router = build_router("video-tiny", clusters=3, latent_shape=CLIP, text_dim=None, seed=0).eval()
    assert router.config.num_frames == 4
    clips, sigma = torch.randn(5, *CLIP), torch.full((5,), 0.3)
    with torch.no_grad():
        logits = router_logits(router, clips, sigma)
        reversed_time = router_logits(router, clips.flip(2), sigma)
    assert logits.shape == (5, 3)
    assert not torch.allclose(logits, reversed_time)  # 3-D positions: the order of frames matters
    with pytest.raises(ModelConfigError, match="not a multiple"):
        build_router("video-tiny", clusters=3, latent_shape=(3, 4, 7, 7))
    with pytest.raises(ValueError, match="built for 64 tokens per clip, got 128"), torch.no_grad():
        router_logits(router, torch.randn(1, 3, 8, 8, 8), sigma[:1])


def _patch_outputs(expert: torch.nn.Module, clip: tuple[int, ...]) -> torch.Tensor:
    """The expert's velocity for a constant clip, one row per 4 × 4 patch of every frame."""
    text, mask = torch.zeros(1, 5, 16), torch.ones(1, 5, dtype=torch.bool)
    with torch.no_grad():
        out = velocity(expert, torch.zeros(1, *clip), torch.tensor([0.9]), text, mask)[0]
    channels, frames, side = out.shape[0], out.shape[1], out.shape[-1] // 4
    return out.reshape(channels, frames, side, 4, side, 4).permute(1, 2, 4, 0, 3, 5).reshape(frames * side * side, -1)


def test_video_nano_experts_know_where_each_token_is() -> None:
    clip = (3, 4, 16, 16)
    expert = build_expert("video-nano", latent_shape=clip, text_dim=16, seed=0).eval()
    assert expert.config[POSITIONS_KEY] == "sincos-3d"
    # A constant clip: RoPE alone (relative offsets) gives every patch the same output …
    config = expert_config("video-nano", latent_shape=clip, text_dim=16)
    del config[POSITIONS_KEY]
    with seeded(0):
        plain = expert_class(config).from_config(config).eval()
    rope_only = _patch_outputs(plain, clip)
    torch.testing.assert_close(rope_only, rope_only[:1].expand_as(rope_only))
    # … absolute 3-D positions make every patch of every frame different.
    positioned = _patch_outputs(expert, clip)
    assert torch.cdist(positioned, positioned).fill_diagonal_(1.0).min() > 1e-3


def test_absolute_positions_are_saved_with_the_expert(tmp_path: Path) -> None:
    expert = build_expert("video-nano", latent_shape=(3, 4, 8, 8), text_dim=16, seed=0).eval()
    x_t, sigma = torch.randn(2, 3, 4, 8, 8), torch.rand(2)
    text, mask = torch.randn(2, 5, 16), torch.ones(2, 5, dtype=torch.bool)
    with torch.no_grad():
        expected = velocity(expert, x_t, sigma, text, mask)
    expert.save_pretrained(tmp_path)
    loaded = model_from_directory(tmp_path)
    assert loaded.config[POSITIONS_KEY] == "sincos-3d"
    with torch.no_grad():
        torch.testing.assert_close(velocity(loaded, x_t, sigma, text, mask), expected)
        # The same weights without the key: the positions were part of the output.
        rope_only = expert_class(loaded.config).from_pretrained(tmp_path)  # diffusers' loader alone
        rope_only.register_to_config(**{POSITIONS_KEY: None})
        assert not torch.allclose(velocity(rope_only, x_t, sigma, text, mask), expected)
