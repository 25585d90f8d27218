"""Experts (PixArt transformers for images, Wan transformers for video) and routers built from every
preset; save/load round trips; per-clip routing; the first-frame condition of image-to-video."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from atoll.api.presets import PRESET_NAMES, PRESETS
from atoll.trainer.models import (
    ModelConfigError,
    build_expert,
    expert_parameter_count,
    model_from_config,
    model_from_directory,
    velocity,
)
from atoll.trainer.models.router import build_router, router_logits, router_parameter_count


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_every_preset_has_the_published_size(name: str) -> None:
    # Built on the meta device: dit-xl/2 is counted exactly without allocating 2.4 GB.
    video = PRESETS[name].architecture.video
    latent = (16, 4, 32, 32) if video else (4, 32, 32)
    experts = expert_parameter_count(name, latent_shape=latent, text_dim=768)
    assert experts == pytest.approx(PRESETS[name].architecture.approx_parameters(latent[0], 768), rel=0.02)
    routers = router_parameter_count(name, clusters=8, latent_shape=latent)
    assert 0.4 * experts < routers < experts  # no cross-attention, no caption projection


def test_video_presets_match_wan() -> None:
    # Wan 2.1 T2V-1.3B: 16 latent channels, umT5 captions of width 4096; ~1.42 B parameters.
    assert expert_parameter_count("wan-1.3b", latent_shape=(16, 21, 60, 60), text_dim=4096) == pytest.approx(
        1.42e9, rel=0.01
    )
    # video-tiny with the offline caption encoder: the CPU-sized expert (~1.2 M parameters).
    assert expert_parameter_count("video-tiny", latent_shape=(3, 8, 16, 16), text_dim=64) == pytest.approx(
        1.24e6, rel=0.01
    )


def test_dit_xl_matches_pixart_alpha() -> None:
    # PixArt-α XL/2 (DiT-XL/2 with cross-attention to T5 captions) has about 611M parameters.
    assert expert_parameter_count("dit-xl/2", latent_shape=(4, 32, 32), text_dim=4096) == pytest.approx(611e6, rel=0.01)


def test_tiny_expert_forward_backward() -> None:
    expert = build_expert("tiny", latent_shape=(3, 16, 16), text_dim=32, seed=0)
    assert expert.config.caption_channels == 32
    assert expert.config.sample_size == 16
    x_t = torch.randn(4, 3, 16, 16)
    text = torch.randn(4, 6, 32).half()
    mask = torch.ones(4, 6, dtype=torch.bool)
    out = velocity(expert, x_t, torch.rand(4), text, mask)
    assert out.shape == x_t.shape
    out.square().mean().backward()
    assert all(p.grad is not None for p in expert.parameters() if p.requires_grad)
    # Same seed, same initial weights; the caption changes the prediction.
    twin = build_expert("tiny", latent_shape=(3, 16, 16), text_dim=32, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(expert.state_dict().values(), twin.state_dict().values(), strict=True))
    with torch.no_grad():
        sigma = torch.full((4,), 0.5)
        assert not torch.allclose(velocity(twin, x_t, sigma, text, mask), velocity(twin, x_t, sigma, -text, mask))


@pytest.mark.parametrize("text_dim", [None, 32])
def test_tiny_router_save_load(tmp_path: Path, text_dim: int | None) -> None:
    router = build_router("tiny", clusters=5, latent_shape=(3, 8, 8), text_dim=text_dim, seed=0).eval()
    x_t, sigma = torch.randn(3, 3, 8, 8), torch.rand(3)
    text, mask = torch.randn(3, 4, 32), torch.ones(3, 4, dtype=torch.bool)
    logits = router_logits(router, x_t, sigma, text, mask)
    assert logits.shape == (3, 5)
    router.save_pretrained(tmp_path)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").is_file()
    loaded = model_from_directory(tmp_path)
    assert type(loaded).__name__ == "RouterModel"
    torch.testing.assert_close(router_logits(loaded, x_t, sigma, text, mask), logits)


def test_clear_errors_for_bad_shapes(tmp_path: Path) -> None:
    with pytest.raises(ModelConfigError, match="unknown preset 'dit-xxl'"):
        build_expert("dit-xxl", latent_shape=(3, 16, 16), text_dim=8)
    with pytest.raises(ModelConfigError, match="not a multiple of preset tiny's patch size 2"):
        build_expert("tiny", latent_shape=(3, 15, 15), text_dim=8)
    with pytest.raises(ModelConfigError, match="needs square latents"):
        build_router("tiny", clusters=2, latent_shape=(3, 8, 16))
    with pytest.raises(ModelConfigError, match=r"config\.json is missing"):
        model_from_directory(tmp_path)


def test_model_from_config_builds_the_architecture_only(tmp_path: Path) -> None:
    expert = build_expert("tiny", latent_shape=(3, 8, 8), text_dim=16, seed=0)
    expert.save_pretrained(tmp_path)
    fresh = model_from_config(tmp_path)
    assert type(fresh).__name__ == "PixArtTransformer2DModel"
    assert fresh.config.caption_channels == 16
    assert fresh.state_dict().keys() == expert.state_dict().keys()
