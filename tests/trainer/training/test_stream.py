"""Streaming training data: a bounded shuffle window whose order is a pure function of the seed.

The order visits every example once per epoch, mixes clusters in proportion in every window,
and gives the same examples to the same positions whatever the micro-batch × accumulation ×
GPU split, with or without reading ahead, and in a stream built afresh (a resume).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch

from atoll.store import LocalStore
from atoll.trainer.clusterdata import ClusterDataError, ClusterWriter, ShardRef, cluster_shards
from atoll.trainer.training.batching import plan_batch
from atoll.trainer.training.data_order import WindowedOrder
from atoll.trainer.training.stream import (
    ExampleStream,
    StreamData,
    StreamSource,
    read_window,
    training_rows,
)
from tests.trainer.training.synthetic import cluster_examples

SIZES = (230, 70, 41)
SHARD = 32


def _store(tmp_path: Path, sizes: tuple[int, ...] = SIZES, shard: int = SHARD) -> LocalStore:
    store = LocalStore(tmp_path)
    first = 0
    for k, n in enumerate(sizes):
        writer = ClusterWriter(store, k, shard_size=shard)
        writer.add(cluster_examples(k, n, first_index=first))
        writer.finish()
        first += n
    return store


def _data(
    store: LocalStore, clusters: int, *, window: int, held: dict[int, tuple[int, ...]] | None = None
) -> StreamData:
    sources = tuple(
        StreamSource(tuple(cluster_shards(store, k)), held if held is not None and k == 0 else {})
        for k in range(clusters)
    )
    return StreamData(store=store, sources=sources, tensors=("latents", "index"), window=window)


def _epoch(order: WindowedOrder, epoch: int) -> list[tuple[int, int, int]]:
    """(source, shard, row) of every position of one epoch, in order."""
    out = []
    for w in range(order.windows):
        plan = order.plan(epoch, w)
        rows = [(p.source, p.shard, r) for p in plan.pieces for r in range(p.start, p.stop)]
        out.extend(rows[int(i)] for i in plan.permutation)
    return out


def test_every_epoch_visits_every_example_once_in_a_fresh_order() -> None:
    shards = [[32] * 7 + [6], [32, 32, 6], [32, 9]]
    order = WindowedOrder(shards, seed=5, window=50)
    assert order.examples == 341
    assert order.windows == 7
    everything = {(k, j, r) for k, source in enumerate(shards) for j, n in enumerate(source) for r in range(n)}
    first, second = _epoch(order, 0), _epoch(order, 1)
    assert len(first) == len(set(first)) == 341
    assert set(first) == set(second) == everything
    assert first != second
    # Pure: a second instance, asked in another order, agrees.
    again = WindowedOrder(shards, seed=5, window=50)
    assert _epoch(again, 1) == second
    assert _epoch(WindowedOrder(shards, seed=6, window=50), 0) != first


def test_windows_are_bounded_and_mix_the_sources_in_proportion() -> None:
    shards = [[32] * 7 + [6], [32, 32, 6], [32, 9]]
    order = WindowedOrder(shards, seed=0, window=50)
    for w in range(order.windows):
        plan = order.plan(3, w)
        assert len(plan) == order.size(w) <= 50 + len(shards)
        per_source = Counter(p.source for p in plan.pieces for _ in range(len(p)))
        for k, n in enumerate(order.sizes):  # the w-th seventh of each source, to within one example
            assert abs(per_source[k] - n / order.windows) < 1
    positions = torch.arange(0, 3 * 341)
    epoch, window, offset = order.locate(positions)
    assert epoch.tolist() == [p // 341 for p in range(3 * 341)]
    assert all(0 <= int(o) < order.size(int(w)) for w, o in zip(window, offset, strict=True))


def test_a_small_dataset_is_one_window_reshuffled_every_epoch() -> None:
    order = WindowedOrder([[10, 10]], seed=1, window=4096)
    assert order.windows == 1
    assert len(order.plan(0, 0)) == 20
    assert not torch.equal(order.plan(0, 0).permutation, order.plan(1, 0).permutation)


@pytest.mark.parametrize("prefetch", [True, False])
def test_same_examples_per_step_for_any_split_and_after_a_resume(tmp_path: Path, prefetch: bool) -> None:
    store = _store(tmp_path)
    data = _data(store, 3, window=40)
    batch, steps = 24, 40  # 960 positions: almost three epochs, many windows
    whole = ExampleStream(data, seed=9, global_batch=batch, prefetch=prefetch)
    reference = [whole.batch(step, slice(0, batch))["index"] for step in range(steps)]
    whole.close()
    seen = torch.cat(reference[: 341 // batch])
    assert len(set(seen.tolist())) == len(seen)  # no repeats inside the first epoch
    for micro, accum, world in [(24, 1, 1), (4, 3, 2), (1, 6, 4), (3, 1, 8)]:
        plan = plan_batch(batch, world=world, micro_batch=micro, grad_accum=accum)
        resume_at = 17
        streams = [ExampleStream(data, seed=9, global_batch=batch, prefetch=prefetch) for _ in range(world)]
        for step in range(resume_at, steps):  # a fresh stream per rank: a resumed run with another split
            parts = [streams[r].batch(step, s)["index"] for r in range(world) for s in plan.micro_slices(r)]
            assert torch.equal(torch.cat(parts), reference[step]), (micro, accum, world, step)
        for stream in streams:
            stream.close()


def test_memory_stays_within_two_windows(tmp_path: Path) -> None:
    store = _store(tmp_path, sizes=(2000,), shard=100)
    data = _data(store, 1, window=64)
    with ExampleStream(data, seed=0, global_batch=16) as stream:
        for step in range(2 * 2000 // 16):  # two epochs
            stream.batch(step, slice(0, 16))
        assert stream.peak_rows <= 2 * (64 + 1)
        assert stream.loads >= 2 * 2000 // 64


def test_held_out_rows_are_never_streamed(tmp_path: Path) -> None:
    store = _store(tmp_path, sizes=(100,), shard=32)
    held = {0: (0, 5, 31), 2: (10,)}
    data = _data(store, 1, window=30, held=held)
    assert data.examples == 96
    held_index = {0, 5, 31, 64 + 10}
    with ExampleStream(data, seed=2, global_batch=8) as stream:
        streamed = torch.cat([stream.batch(step, slice(0, 8))["index"] for step in range(12)])
    assert sorted(streamed.tolist()) == sorted(set(range(100)) - held_index)
    assert training_rows((0, 5, 31), 0, 4).tolist() == [1, 2, 3, 4]
    assert training_rows((0, 5, 31), 4, 7).tolist() == [6, 7, 8]
    assert training_rows((0, 5, 31), 28, 30).tolist() == [30, 32]


def test_a_shard_that_disagrees_with_its_index_is_a_clear_error(tmp_path: Path) -> None:
    store = _store(tmp_path, sizes=(50,), shard=32)
    forged = StreamSource((ShardRef("data/cluster-0/shard-00000.safetensors", 40), *cluster_shards(store, 0)[1:]))
    data = StreamData(store=store, sources=(forged,), tensors=("latents",), window=100)
    with (
        ExampleStream(data, seed=0, global_batch=8) as stream,
        pytest.raises(ClusterDataError, match=r"shard-00000\.safetensors holds 32 rows of latents, index.json says 40"),
    ):
        stream.batch(0, slice(0, 8))
    wrong_shape = StreamData(
        store=store,
        sources=(StreamSource(tuple(cluster_shards(store, 0))),),
        tensors=("latents",),
        window=100,
        row_shapes={"latents": (3, 16, 16)},
    )
    from atoll.trainer.shardfiles import ShardFiles

    with ShardFiles(store) as files, pytest.raises(ClusterDataError, match=r"data/info.json says \[3, 16, 16\]"):
        read_window(files, wrong_shape, wrong_shape.order(0).plan(0, 0))
