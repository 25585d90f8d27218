"""Wan 2.1's video VAE (AutoencoderKLWan) through the real loading code, with a tiny random-init copy:
clips of 1 + 4n frames become 16-channel latents, normalised per channel, and the partition stage
pre-encodes moving digits with it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from atoll.api import DDMRunSpec
from atoll.api.load import dump_spec_json
from atoll.api.weights import WeightsSpec
from atoll.errors import AtollError
from atoll.store import LocalStore
from atoll.trainer.clusterdata import cluster_shards, read_info
from atoll.trainer.context import StageContext
from atoll.trainer.encoders import load_vae, save_vae, vae_for
from atoll.trainer.stages import partition

CLIPS = torch.rand(2, 3, 5, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1


def test_wan_vae_encodes_clips_to_normalised_latents(weights_dir: Path, tmp_path: Path) -> None:
    codec = vae_for("wan2.1-vae", weights=WeightsSpec(source="volume", path=str(weights_dir)))
    assert codec.video
    assert codec.latent_shape(16, frames=5) == (16, 2, 2, 2)  # 1 + 4/4 latent frames, 16/8 pixels
    assert codec.latent_shape(16, frames=9) == (16, 3, 2, 2)
    with pytest.raises(AtollError, match=r"dataset\.frames 8 must be 1 \+ a multiple of 4"):
        codec.latent_shape(16, frames=8)
    latents = codec.encode(CLIPS)
    assert latents.shape == (2, 16, 2, 2, 2)
    config = codec.model.config
    mean = torch.tensor(config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(config.latents_std).view(1, -1, 1, 1, 1)
    torch.testing.assert_close(latents, (codec.model.encode(CLIPS).latent_dist.mean - mean) / std)
    assert codec.decode(latents).shape == (2, 3, 5, 16, 16)
    assert codec.decoded_side((16, 2, 2, 2)) == 16
    save_vae(codec, tmp_path / "vae")
    loaded = load_vae(tmp_path / "vae")
    assert loaded.name == "wan2.1-vae"
    torch.testing.assert_close(loaded.encode(CLIPS), latents)


def test_partition_pre_encodes_clips_with_the_wan_vae(weights_dir: Path, tmp_path: Path) -> None:
    spec = DDMRunSpec.model_validate(
        {
            "dataset": {
                "uri": "builtin://moving-digits",
                "resolution": 16,
                "frames": 5,
                "maxExamples": 24,
                "vae": "wan2.1-vae",
            },
            "weights": {"source": "volume", "path": str(weights_dir)},
            "partition": {"clusters": 2, "features": "pixels", "fineClusters": 4, "sampleSize": 24},
            "expert": {"preset": "video-tiny"},
        }
    )
    store = LocalStore(tmp_path / "run")
    store.put_bytes("spec.json", dump_spec_json(spec).encode())
    partition.run(StageContext(spec=spec, store=store))
    info = read_info(store)
    assert info.latent_shape == (16, 2, 2, 2)
    assert info.vae == "wan2.1-vae"
    assert (info.frames, info.fps) == (5, 8.0)
    assert info.label_factors == (("digit", 10), ("direction", 4))
    assert sum(info.sizes) == 24
    assert len(list(cluster_shards(store, 0))) >= 1
