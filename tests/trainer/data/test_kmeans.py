"""Balanced two-level k-means: balance on real digits against plain k-means, structure, determinism."""

from __future__ import annotations

import torch

from atoll.api.spec import DatasetSpec
from atoll.trainer import kmeans
from atoll.trainer.data import open_dataset
from atoll.trainer.encoders import feature_encoder_for


def _digit_features() -> torch.Tensor:
    dataset = open_dataset(DatasetSpec(uri="builtin://digits", resolution=16))
    return feature_encoder_for("pixels", 16).encode(dataset.images(list(range(len(dataset)))))


def test_digits_k4_balanced_against_plain_kmeans_in_the_same_run() -> None:
    features = _digit_features()
    balanced = kmeans.two_level_kmeans(features, 4, seed=0)
    plain_sizes = kmeans.cluster_sizes(kmeans.plain_kmeans(features, 4, seed=0), 4)
    unbalanced = kmeans.two_level_kmeans(features, 4, seed=0, balanced=False)
    print(
        f"digits K=4: balanced two-level {balanced.sizes} max/min {balanced.balance:.3f};"
        f" plain Lloyd {plain_sizes} max/min {kmeans.balance(plain_sizes):.3f};"
        f" unbalanced two-level {unbalanced.sizes} max/min {unbalanced.balance:.3f}"
    )
    assert sum(balanced.sizes) == 1797
    assert balanced.balance <= 1.5
    assert balanced.balance <= kmeans.balance(plain_sizes)
    assert balanced.balance <= unbalanced.balance


def test_unequal_mixture_plain_kmeans_is_unbalanced_balanced_is_not() -> None:
    generator = torch.Generator().manual_seed(1)
    centres = torch.randn(9, 32, generator=generator) * 3
    counts, stds = [1000] + [125] * 8, [0.5] + [1.0] * 8  # one big tight mode, eight small ones
    features = torch.cat(
        [c + s * torch.randn(n, 32, generator=generator) for c, n, s in zip(centres, counts, stds, strict=True)]
    )
    balanced = kmeans.two_level_kmeans(features, 4, fine_clusters=128, seed=0)
    plain_sizes = kmeans.cluster_sizes(kmeans.plain_kmeans(features, 4, seed=0), 4)
    print(f"mixture K=4: balanced {balanced.sizes} {balanced.balance:.3f}; plain {plain_sizes}")
    assert balanced.balance <= 1.05
    assert kmeans.balance(plain_sizes) > 1.5


def test_every_example_goes_through_its_nearest_fine_centroid() -> None:
    features = torch.randn(600, 8, generator=torch.Generator().manual_seed(2))
    p = kmeans.two_level_kmeans(features, 3, fine_clusters=40, sample_size=300, seed=5)
    assert p.sample_size == 300
    assert p.fine_centroids.shape == (40, 8)
    assert p.coarse_centroids.shape == (3, 8)
    normalised, _ = kmeans.normalize_features(features, p.mean)
    nearest, _ = kmeans.nearest(normalised, p.fine_centroids, torch.device("cpu"))
    assert torch.equal(p.fine_assignments, nearest)
    assert torch.equal(p.assignments, p.fine_to_coarse[p.fine_assignments])
    torch.testing.assert_close(p.fine_centroids.norm(dim=1), torch.ones(40))
    again = kmeans.two_level_kmeans(features, 3, fine_clusters=40, sample_size=300, seed=5)
    assert torch.equal(again.assignments, p.assignments)
    other = kmeans.two_level_kmeans(features, 3, fine_clusters=40, sample_size=300, seed=6)
    assert not torch.equal(other.fine_centroids, p.fine_centroids)


def test_fine_clusters_are_capped_at_a_quarter_of_the_sample_but_at_least_k() -> None:
    features = torch.randn(40, 4, generator=torch.Generator().manual_seed(3))
    assert kmeans.two_level_kmeans(features, 2, fine_clusters=1024, seed=0).fine_centroids.shape[0] == 10
    assert kmeans.two_level_kmeans(features, 16, fine_clusters=1024, seed=0).fine_centroids.shape[0] == 16


def test_repair_moves_weight_until_loads_are_even() -> None:
    sim = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.7, 0.6], [0.6, 0.5]])
    weights = torch.tensor([1.0, 1.0, 1.0, 1.0])
    labels = kmeans.repair_balance(sim, weights, torch.zeros(4, dtype=torch.int64), 2)
    assert torch.bincount(labels, minlength=2).tolist() == [2, 2]
    assert labels.tolist() == [0, 0, 1, 1]  # the fine clusters that lose least similarity moved


def test_plain_kmeans_is_seeded_with_kmeans_plus_plus() -> None:
    """One big and three small far-apart blobs: k-means++ seeds one centre in each, so the
    baseline finds them all; seeds drawn uniformly from the rows would almost all land in the
    big blob (each small blob holds under 3 % of the rows)."""
    generator = torch.Generator().manual_seed(0)
    centres = torch.eye(4) * 10
    sizes = (1000, 30, 30, 30)
    features = torch.cat(
        [c + 0.03 * torch.randn(n, 4, generator=generator) for c, n in zip(centres, sizes, strict=True)]
    )
    for seed in range(5):
        labels = kmeans.plain_kmeans(features, 4, seed=seed, device="cpu")
        assert sorted(kmeans.cluster_sizes(labels, 4)) == [30, 30, 30, 1000], seed
