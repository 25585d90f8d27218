"""The cluster shard contract: what the writer stores, the readers give back."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from atoll.store import LocalStore
from atoll.trainer import clusterdata as cd


def _batch(n: int, start: int) -> cd.ClusterData:
    return cd.ClusterData(
        latents=torch.randn(n, 3, 4, 4),
        text=torch.randn(n, 5, 8),
        text_mask=torch.rand(n, 5) > 0.5,
        labels=torch.arange(n) % 3,
        index=torch.arange(start, start + n),
    )


def test_write_then_read_round_trips(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    batches = {0: [_batch(5, 0), _batch(4, 5)], 1: [_batch(3, 9)]}
    for k, parts in batches.items():
        writer = cd.ClusterWriter(store, k, shard_size=4)
        for part in parts:
            writer.add(part)
        assert not cd.cluster_complete(store, k)  # index.json is the commit marker
        assert writer.finish() == sum(len(p) for p in parts)
        assert cd.cluster_complete(store, k)
    cd.write_null_text(store, torch.zeros(5, 8), torch.ones(5, dtype=torch.bool))
    info = cd.DataInfo(
        latent_shape=(3, 4, 4),
        text_shape=(5, 8),
        vae="identity",
        text_encoder="hashed-bow",
        resolution=4,
        clusters=2,
        examples=12,
        sizes=(9, 3),
        class_names=("a", "b", "c"),
        class_captions={0: "an a"},
    )
    cd.write_info(store, info)

    assert cd.read_info(store) == info
    assert store.get_json("data/cluster-0/index.json")["shards"][2] == {
        "key": "data/cluster-0/shard-00002.safetensors",
        "examples": 1,
    }
    cluster0 = cd.read_cluster(store, 0)
    expected = cd.ClusterData.concat(batches[0])
    assert len(cluster0) == 9
    assert cluster0.text.dtype == torch.float16
    assert cluster0.text_mask.dtype == torch.bool
    torch.testing.assert_close(cluster0.latents, expected.latents)
    torch.testing.assert_close(cluster0.text.float(), expected.text, atol=2e-3, rtol=2e-3)
    assert torch.equal(cluster0.index, torch.arange(9))
    everything, labels = cd.read_all_clusters(store)
    assert len(everything) == 12
    assert labels.tolist() == [0] * 9 + [1] * 3
    text, mask = cd.read_null_text(store)
    assert text.shape == (1, 5, 8)
    assert mask.shape == (1, 5)
    assert bool(mask.all())


def test_missing_data_names_the_stage(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    with pytest.raises(cd.ClusterDataError, match="partition stage"):
        cd.read_info(store)
    with pytest.raises(cd.ClusterDataError, match="cluster 3"):
        cd.read_cluster(store, 3)


def test_partial_cluster_is_cleared(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    writer = cd.ClusterWriter(store, 0, shard_size=2)
    writer.add(_batch(3, 0))  # one shard written, no index: interrupted
    assert store.exists(cd.shard_key(0, 0))
    assert not cd.cluster_complete(store, 0)
    cd.clear_cluster(store, 0)
    assert store.list_objects("data/") == []
