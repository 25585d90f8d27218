"""The partition stage end to end on digits: every contract file, read back; idempotence, resume, bad K."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from pydantic import ValidationError
from safetensors.torch import load_file

from atoll import layout
from atoll.api import DDMRunSpec
from atoll.api.load import dump_spec_json
from atoll.errors import AtollError
from atoll.store import LocalStore
from atoll.trainer import clusterdata
from atoll.trainer.__main__ import main
from atoll.trainer.context import StageContext
from atoll.trainer.heartbeat import read_progress
from atoll.trainer.stages import partition


def _spec(**dataset: object) -> DDMRunSpec:
    return DDMRunSpec.model_validate(
        {
            "dataset": {"uri": "builtin://digits", "resolution": 8, **dataset},
            "partition": {"clusters": 4, "features": "pixels", "fineClusters": 64},
        }
    )


def test_partition_digits_writes_the_contract_and_the_readers_read_it(tmp_path: Path) -> None:
    spec = _spec(maxExamples=600)
    (tmp_path / "spec.json").write_text(dump_spec_json(spec))
    assert main(["partition", "--run", str(tmp_path / "spec.json"), "--store", str(tmp_path)]) == 0
    store = LocalStore(tmp_path)

    stats = store.get_json(layout.PARTITION_STATS)
    assert stats["clusters"] == 4
    assert stats["examples"] == 600
    assert sum(stats["sizes"]) == 600
    assert stats["balance"] == max(stats["sizes"]) / min(stats["sizes"])
    assert stats["balance"] <= 1.5
    assert stats["fineClusters"] == 64
    assert stats["features"] == "pixels"
    centroids = load_file(tmp_path / layout.PARTITION_CENTROIDS)
    assert centroids["fine"].shape == (64, 3 * 8 * 8)
    assert centroids["coarse"].shape == (4, 192)
    assert centroids["fine_to_coarse"].shape == (64,)
    assert centroids["mean"].shape == (192,)
    assignments = load_file(tmp_path / layout.PARTITION_ASSIGNMENTS)["cluster"]
    assert assignments.shape == (600,)
    assert assignments.dtype == torch.int64
    assert torch.bincount(assignments, minlength=4).tolist() == stats["sizes"]

    info = clusterdata.read_info(store)
    assert info.latent_shape == (3, 8, 8)
    assert info.text_shape == (16, 64)
    assert (info.vae, info.text_encoder, info.resolution, info.clusters, info.examples) == (
        "identity",
        "hashed-bow",
        8,
        4,
        600,
    )
    assert list(info.sizes) == stats["sizes"]
    assert info.class_captions[7] == "a handwritten 7"
    null_text, null_mask = clusterdata.read_null_text(store)
    assert null_text.shape == (1, 16, 64)
    assert null_mask.tolist()[0][:2] == [True, False]

    from atoll.trainer.data import open_dataset

    dataset = open_dataset(spec.dataset)
    for k in range(4):
        data = clusterdata.read_cluster(store, k)
        assert len(data) == stats["sizes"][k]
        assert data.latents.dtype == torch.float32
        assert data.text.dtype == torch.float16
        assert torch.equal(assignments[data.index], torch.full((len(data),), k))
        i = int(data.index[0])
        torch.testing.assert_close(data.latents[0], dataset.example(i))  # identity VAE: the image itself
        assert int(data.labels[0]) == dataset.label(i)
    everything, cluster_labels = clusterdata.read_all_clusters(store)
    assert sorted(everything.index.tolist()) == list(range(600))
    assert torch.equal(cluster_labels, assignments[everything.index])
    progress = read_progress(store, "partition")
    assert progress is not None
    assert progress.state == "done"
    assert progress.step == progress.total_steps == 1200


def test_finished_partition_is_idempotent_and_an_interrupted_one_resumes_per_cluster(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    ctx = StageContext(spec=_spec(maxExamples=300), store=store)
    partition.run(ctx)
    shard0, shard2 = tmp_path / clusterdata.shard_key(0, 0), tmp_path / clusterdata.shard_key(2, 0)
    before = {path: path.stat().st_mtime_ns for path in (shard0, shard2)}
    partition.run(ctx)  # done: nothing rewritten
    assert {path: path.stat().st_mtime_ns for path in before} == before

    # An attempt killed while writing cluster 2: a torn shard, no index, nothing after it.
    expected = clusterdata.read_cluster(store, 2)
    for key in (clusterdata.cluster_index_key(2), clusterdata.INFO, layout.PARTITION_DONE):
        store.delete(key)
    shard2.write_bytes(b"torn")
    partition.run(ctx)
    assert shard0.stat().st_mtime_ns == before[shard0]  # committed clusters are kept
    again = clusterdata.read_cluster(store, 2)
    assert torch.equal(again.index, expected.index)
    assert torch.equal(again.latents, expected.latents)
    assert store.exists(layout.PARTITION_DONE)


def test_more_clusters_than_examples_fails_naming_partition_clusters(tmp_path: Path) -> None:
    # Known from the spec alone: refused when the spec is read.
    with pytest.raises(ValidationError, match=r"partition\.clusters \(4\) exceeds dataset\.maxExamples \(3\)"):
        _spec(maxExamples=3)
    # Known only once the data is read: a folder of 3 images for 4 clusters.
    folder = tmp_path / "three"
    folder.mkdir()
    for index, colour in enumerate(("red", "green", "blue")):
        Image.new("RGB", (8, 8), colour).save(folder / f"{index}.png")
        (folder / f"{index}.txt").write_text(f"a {colour} square")
    store = LocalStore(tmp_path / "store")
    with pytest.raises(AtollError, match=r"partition\.clusters \(4\) exceeds the 3 examples"):
        partition.run(StageContext(spec=_spec(uri=str(folder)), store=store))
    progress = read_progress(store, "partition")
    assert progress is not None
    assert progress.state == "failed"
    assert "partition.clusters" in (progress.error or "")
    assert not store.exists(layout.PARTITION_STATS)


def test_partition_into_an_s3_store(minio_bucket: str, s3_env: dict[str, str]) -> None:
    from atoll.store import open_store

    store = open_store(f"s3://{minio_bucket}/runs/digits")
    spec = DDMRunSpec.model_validate(
        {
            "dataset": {"uri": "builtin://digits", "resolution": 8, "maxExamples": 200},
            "partition": {"clusters": 2, "features": "pixels", "fineClusters": 16},
        }
    )
    partition.run(StageContext(spec=spec, store=store))
    info = clusterdata.read_info(store)
    assert info.examples == 200
    data, labels = clusterdata.read_all_clusters(store)
    assert sorted(data.index.tolist()) == list(range(200))
    assert labels.bincount(minlength=2).tolist() == list(info.sizes)
    assert store.exists(layout.PARTITION_DONE)


def test_features_stream_through_the_sample_and_then_batch_by_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fine level is fitted on the sample's features; every example's features then pass in
    batches and are assigned as they come; the result is the in-memory algorithm's."""
    from atoll.trainer import kmeans
    from atoll.trainer.data import DigitsDataset
    from atoll.trainer.encoders.features import PixelFeatures

    batches: list[int] = []
    real_encode = PixelFeatures.encode

    def counting_encode(self: PixelFeatures, images: torch.Tensor) -> torch.Tensor:
        batches.append(int(images.shape[0]))
        return real_encode(self, images)

    monkeypatch.setattr(PixelFeatures, "encode", counting_encode)
    spec = DDMRunSpec.model_validate(
        {
            "dataset": {"uri": "builtin://digits", "resolution": 8},
            "partition": {"clusters": 4, "features": "pixels", "fineClusters": 32, "sampleSize": 300},
        }
    )
    store = LocalStore(tmp_path)
    partition.run(StageContext(spec=spec, store=store))
    assert sum(batches) == 300 + 1797  # the sample, then every example once
    assert max(batches) <= 1024
    stats = store.get_json(layout.PARTITION_STATS)
    assert stats["sampleSize"] == 300

    monkeypatch.setattr(PixelFeatures, "encode", real_encode)
    dataset = DigitsDataset(8)
    features = PixelFeatures(8).encode(dataset.images(list(range(len(dataset)))))
    in_memory = kmeans.two_level_kmeans(features, 4, fine_clusters=32, sample_size=300, seed=0, device="cpu")
    stored = load_file(tmp_path / layout.PARTITION_ASSIGNMENTS)
    assert torch.equal(stored["cluster"], in_memory.assignments)
    assert torch.equal(stored["fine"], in_memory.fine_assignments)
    assert stats["sizes"] == in_memory.sizes
