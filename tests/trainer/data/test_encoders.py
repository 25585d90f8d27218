"""Encoders: real loading code over tiny random-init models, offline stand-ins, save/load, missing weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from atoll.trainer.encoders import (
    HashedBowTextEncoder,
    WeightsNotFoundError,
    feature_encoder_for,
    load_text_encoder,
    load_vae,
    save_text_encoder,
    save_vae,
    text_encoder_for,
    vae_for,
)

IMAGES = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1


def test_pixel_features_are_the_pooled_image() -> None:
    encoder = feature_encoder_for("pixels", 32)
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    features = encoder.encode(images)
    assert encoder.dim == 768
    assert features.shape == (2, 768)
    torch.testing.assert_close(features[0, 0], images[0, 0, :2, :2].mean())


@pytest.mark.parametrize(("name", "dim"), [("dinov2-vitl14", 32), ("clip-vitl14", 24)])
def test_real_feature_encoders_load_from_atoll_weights_dir(weights_dir: Path, name: str, dim: int) -> None:
    encoder = feature_encoder_for(name, 16)
    features = encoder.encode(IMAGES)
    assert encoder.dim == dim
    assert features.shape == (3, dim)
    assert features.dtype == torch.float32
    assert bool(torch.isfinite(features).all())
    assert not torch.allclose(features[0], features[1])  # different images, different features
    torch.testing.assert_close(encoder.encode(IMAGES[:1]), features[:1], atol=1e-4, rtol=1e-4)


def test_clip_text_encoder_round_trips_through_model_directories(weights_dir: Path, tmp_path: Path) -> None:
    encoder = text_encoder_for("clip-vitl14")
    text, mask = encoder.encode_prompts(["a red circle", ""])
    assert encoder.shape == (12, 32)
    assert text.shape == (2, 12, 32)
    assert mask.dtype == torch.bool
    assert mask.sum(1).tolist()[1] < mask.sum(1).tolist()[0]  # the empty prompt has fewer tokens
    save_text_encoder(encoder, tmp_path / "text_encoder", tmp_path / "tokenizer")
    loaded = load_text_encoder(tmp_path / "text_encoder", tmp_path / "tokenizer")
    again, again_mask = loaded.encode_prompts(["a red circle", ""])
    assert loaded.name == "clip-vitl14"
    torch.testing.assert_close(again, text)
    assert torch.equal(again_mask, mask)


def test_hashed_bow_is_deterministic_ordered_and_saves_like_a_diffusers_model(tmp_path: Path) -> None:
    encoder = text_encoder_for("hashed-bow")
    prompts = ["a red circle on a blue background", "a blue circle on a red background", ""]
    text, mask = encoder.encode_prompts(prompts)
    assert text.shape == (3, *encoder.shape)
    assert mask.sum(1).tolist() == [8, 8, 1]  # start token + words; the empty caption keeps its start token
    assert not torch.allclose(text[0], text[1])  # word order matters
    assert bool((text[2, 1:] == 0).all())
    fresh, _ = text_encoder_for("hashed-bow").encode_prompts(prompts)
    assert torch.equal(fresh, text)
    save_text_encoder(encoder, tmp_path / "text_encoder", None)
    assert (tmp_path / "text_encoder" / "config.json").exists()
    loaded = load_text_encoder(tmp_path / "text_encoder")
    assert isinstance(loaded.model, HashedBowTextEncoder)
    assert torch.equal(loaded.encode_prompts(prompts)[0], text)
    assert torch.equal(
        HashedBowTextEncoder.from_pretrained(str(tmp_path / "text_encoder")).encode_prompts(prompts)[0], text
    )


def test_sd_vae_scales_latents_and_round_trips(weights_dir: Path, tmp_path: Path) -> None:
    codec = vae_for("sd-vae-ft-mse")
    latents = codec.encode(IMAGES)
    assert codec.scaling_factor == pytest.approx(0.18215)
    assert codec.latent_shape(16) == (4, 8, 8)
    assert latents.shape == (3, 4, 8, 8)
    mean = codec.model.encode(IMAGES).latent_dist.mean
    torch.testing.assert_close(latents, mean * 0.18215)
    assert codec.decode(latents).shape == (3, 3, 16, 16)
    save_vae(codec, tmp_path / "vae")
    loaded = load_vae(tmp_path / "vae")
    torch.testing.assert_close(loaded.encode(IMAGES), latents)


def test_identity_vae_is_pixel_space_with_the_autoencoder_interface(tmp_path: Path) -> None:
    codec = vae_for("identity")
    assert codec.latent_shape(16) == (3, 16, 16)
    assert torch.equal(codec.encode(IMAGES), IMAGES)
    assert torch.equal(codec.model.encode(IMAGES).latent_dist.sample(), IMAGES)
    assert torch.equal(codec.decode(IMAGES), IMAGES)
    save_vae(codec, tmp_path / "vae")
    loaded = load_vae(tmp_path / "vae")
    assert loaded.name == "identity"
    assert torch.equal(loaded.decode(IMAGES), IMAGES)


@pytest.mark.parametrize(
    ("load", "name", "field"),
    [
        (lambda: feature_encoder_for("dinov2-vitl14", 16), "dinov2-vitl14", "partition.features"),
        (lambda: feature_encoder_for("clip-vitl14", 16), "clip-vitl14", "partition.features"),
        (lambda: text_encoder_for("clip-vitl14"), "clip-vitl14", "dataset.textEncoder"),
        (lambda: vae_for("sd-vae-ft-mse"), "sd-vae-ft-mse", "dataset.vae"),
    ],
)
def test_missing_weights_name_the_model_and_how_to_provide_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, load: object, name: str, field: str
) -> None:
    monkeypatch.setenv("ATOLL_WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))  # an empty cache, whatever this machine has
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(WeightsNotFoundError) as error:
        load()  # type: ignore[operator]
    message = str(error.value)
    assert f"model {name}" in message
    assert field in message
    assert f"ATOLL_WEIGHTS_DIR/{name}" in message
    assert "hf download" in message
