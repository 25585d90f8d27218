"""Tiny random-init copies of the real encoders (DINOv2, CLIP, the SD and Wan VAEs), saved like real weights.

Shared by the data tests (encoders, weights sources) and the evaluation tests (CLIP similarity).

`tiny_weights` is a directory laid out as $ATOLL_WEIGHTS_DIR expects (one save_pretrained
copy per Atoll model name), so the tests exercise the real transformers/diffusers loading.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from diffusers import AutoencoderKL, AutoencoderKLWan
    from transformers import (
        CLIPConfig,
        CLIPImageProcessorPil,
        CLIPModel,
        CLIPTokenizer,
        Dinov2Config,
        Dinov2Model,
    )

    root = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    tower = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}
    Dinov2Model(Dinov2Config(**tower, image_size=28, patch_size=14)).save_pretrained(root / "dinov2-vitl14")
    # Laid out like openai/clip-vit-large-patch14: one CLIPModel plus its tokenizer and image processor in the
    # same directory.
    clip = CLIPModel(
        CLIPConfig(
            text_config={**tower, "vocab_size": 80, "max_position_embeddings": 12, "projection_dim": 24},
            vision_config={**tower, "image_size": 28, "patch_size": 14, "projection_dim": 24},
            projection_dim=24,
        )
    )
    clip.save_pretrained(root / "clip-vitl14")
    symbols = list("abcdefghijklmnopqrstuvwxyz0123456789")
    vocab = {s: i for i, s in enumerate(symbols + [f"{s}</w>" for s in symbols])}
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    (root / "vocab.json").write_text(json.dumps(vocab))
    (root / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(
        vocab_file=str(root / "vocab.json"), merges_file=str(root / "merges.txt"), model_max_length=12
    )
    tokenizer.save_pretrained(root / "clip-vitl14")
    CLIPImageProcessorPil(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}).save_pretrained(
        root / "clip-vitl14"
    )
    AutoencoderKL(
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=8,
        layers_per_block=1,
        sample_size=16,
        scaling_factor=0.18215,
    ).save_pretrained(root / "sd-vae-ft-mse")
    # Wan 2.1's causal video VAE with diffusers' tester sizes: 16 latent channels, 8× in space, 4× in time.
    AutoencoderKLWan(
        base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
    ).save_pretrained(root / "wan2.1-vae")
    return root


@pytest.fixture
def weights_dir(tiny_weights: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """ATOLL_WEIGHTS_DIR pointing at the tiny models for one test."""
    monkeypatch.setenv("ATOLL_WEIGHTS_DIR", str(tiny_weights))
    return tiny_weights
