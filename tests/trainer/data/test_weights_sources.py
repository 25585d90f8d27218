"""spec.weights decides where pretrained encoders come from, and the trainer honours it:
a mounted directory (volume), save_pretrained copies in the store (a local prefix or real
MinIO), the Hugging Face hub (cache only, offline here), or nothing (none) — and the
partition stage loads DINOv2 and the SD VAE from the store a spec names."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from atoll import layout
from atoll.api import DDMRunSpec
from atoll.api.load import dump_spec_json
from atoll.api.weights import WeightsSpec
from atoll.store import LocalStore, open_store
from atoll.trainer.__main__ import main
from atoll.trainer.encoders import WeightsNotFoundError, feature_encoder_for, text_encoder_for, vae_for
from atoll.trainer.encoders import weights as weights_module


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No ambient weights directory; the store cache under this test's tmp_path."""
    monkeypatch.delenv("ATOLL_WEIGHTS_DIR", raising=False)
    monkeypatch.setenv("ATOLL_WEIGHTS_CACHE", str(tmp_path / "cache"))


def upload(tiny_weights: Path, uri: str) -> None:
    store = open_store(uri)
    for path in sorted(tiny_weights.rglob("*")):
        if path.is_file() and path.parent != tiny_weights:
            store.put_file(path.relative_to(tiny_weights).as_posix(), path)


def test_volume_reads_the_mounted_directory(tiny_weights: Path) -> None:
    weights = WeightsSpec(source="volume", path=str(tiny_weights))
    assert feature_encoder_for("dinov2-vitl14", 16, weights=weights).dim == 32
    assert text_encoder_for("clip-vitl14", weights=weights).shape[1] == 32
    missing = WeightsSpec(source="volume", path="/nowhere")
    with pytest.raises(
        WeightsNotFoundError, match=r"/nowhere/sd-vae-ft-mse does not exist \(set by spec.weights.path\)"
    ):
        vae_for("sd-vae-ft-mse", weights=missing)


def test_volume_without_a_path_uses_atoll_weights_dir(tiny_weights: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    weights = WeightsSpec(source="volume")
    with pytest.raises(WeightsNotFoundError, match=r"neither spec.weights.path nor \$ATOLL_WEIGHTS_DIR"):
        vae_for("sd-vae-ft-mse", weights=weights)
    monkeypatch.setenv("ATOLL_WEIGHTS_DIR", str(tiny_weights))
    assert vae_for("sd-vae-ft-mse", weights=weights).latent_shape(16) == (4, 8, 8)


def test_none_refuses_every_pretrained_model() -> None:
    with pytest.raises(WeightsNotFoundError, match=r"chosen by partition.features.*spec.weights.source is none"):
        feature_encoder_for("dinov2-vitl14", 16, weights=WeightsSpec())
    assert feature_encoder_for("pixels", 16, weights=WeightsSpec()).dim == 3 * 16 * 16


def test_hub_uses_its_cache_and_says_so_when_the_model_is_not_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    weights = WeightsSpec(source="hub", path=str(tmp_path / "hf-cache"))
    with pytest.raises(
        WeightsNotFoundError, match=r"facebook/dinov2-large could not be loaded from the Hugging Face hub"
    ):
        feature_encoder_for("dinov2-vitl14", 16, weights=weights)


def test_store_copies_are_fetched_once_into_the_cache(tiny_weights: Path, tmp_path: Path) -> None:
    uri = str(tmp_path / "pretrained")
    upload(tiny_weights, uri)
    weights = WeightsSpec(source="store", uri=uri)
    assert vae_for("sd-vae-ft-mse", weights=weights).latent_shape(16) == (4, 8, 8)
    cached = weights_module.fetch_from_store(uri, "sd-vae-ft-mse")
    marker = cached / ".atoll-complete.json"
    stamp = marker.stat().st_mtime_ns
    assert weights_module.fetch_from_store(uri, "sd-vae-ft-mse") == cached
    assert marker.stat().st_mtime_ns == stamp, "a complete copy is not fetched again"
    with pytest.raises(WeightsNotFoundError, match="holds no clip-vitl14/"):
        text_encoder_for("clip-vitl14", weights=WeightsSpec(source="store", uri=str(tmp_path / "empty")))


@pytest.mark.minio
def test_partition_stage_loads_pretrained_encoders_from_an_s3_prefix(
    tiny_weights: Path, tmp_path: Path, minio_bucket: str, s3_env: dict[str, str]
) -> None:
    upload(tiny_weights, f"s3://{minio_bucket}/pretrained")
    spec = DDMRunSpec.model_validate(
        {
            "dataset": {"uri": "builtin://digits", "resolution": 16, "maxExamples": 64, "vae": "sd-vae-ft-mse"},
            "partition": {"clusters": 2, "features": "dinov2-vitl14", "fineClusters": 8, "sampleSize": 64},
            "weights": {"source": "store", "uri": f"s3://{minio_bucket}/pretrained"},
        }
    )
    (tmp_path / "spec.json").write_text(dump_spec_json(spec))
    assert main(["partition", "--run", str(tmp_path / "spec.json"), "--store", str(tmp_path / "run")]) == 0
    store = LocalStore(tmp_path / "run")
    assert store.get_json(layout.PARTITION_STATS)["features"] == "dinov2-vitl14"
    assert store.get_json("data/info.json")["latentShape"] == [4, 8, 8]
    assert sorted(p.name for p in (tmp_path / "cache").glob("*/*")) == ["dinov2-vitl14", "sd-vae-ft-mse"]
    shutil.rmtree(tmp_path / "run")


def test_a_spec_with_every_default_partitions_without_weights(tmp_path: Path) -> None:
    """Only dataset.uri set: the default features (pixels), VAE and caption encoder need nothing."""
    spec = DDMRunSpec.model_validate({"dataset": {"uri": "builtin://digits"}})
    (tmp_path / "spec.json").write_text(dump_spec_json(spec))
    assert main(["partition", "--run", str(tmp_path / "spec.json"), "--store", str(tmp_path / "run")]) == 0
    stats = LocalStore(tmp_path / "run").get_json(layout.PARTITION_STATS)
    assert (stats["features"], stats["clusters"], stats["examples"]) == ("pixels", 8, 1797)
