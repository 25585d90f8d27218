"""The domain Fréchet distance: generated vs real images in a classifier's feature space.

The real data are split once (by seed) into a reference half, on which the domain
classifier is trained and the reference Gaussian is fitted, and a pool from which the
real-vs-real noise floor and the captions that condition the generated samples are drawn.
Neither the floor sample nor generated images are ever seen in training.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from atoll.store import Store
from atoll.trainer.clusterdata import ClusterData, read_all_clusters, read_info
from atoll.trainer.encoders import LatentCodec, vae_for
from atoll.trainer.evaluation.classifier import TrainedClassifier, train_classifier
from atoll.trainer.evaluation.frechet import FeatureStats, feature_stats, frechet_distance
from atoll.trainer.evaluation.inception import InceptionFeatures

LabelKind = Literal["class", "cluster"]


@dataclass(frozen=True)
class RealData:
    """Every real example of a run: images, labels and the captions it was encoded with."""

    images: torch.Tensor
    """[n, 3, R, R] in [-1, 1] (the latents decoded by the run's VAE)."""
    labels: torch.Tensor
    """[n] class labels, or the partition cluster where the data has no labels."""
    label_kind: LabelKind
    text: torch.Tensor
    """[n, L, D] caption embeddings."""
    text_mask: torch.Tensor
    """[n, L]."""
    class_names: tuple[str, ...]


def read_real_data(store: Store, codec: LatentCodec | None = None, batch: int = 256) -> RealData:
    """All pre-encoded examples of the run, decoded back to images, in dataset order.

    Dataset order (not cluster order) makes the reference split, the classifier and the
    evaluation captions the same for any partition of the same data, so runs with
    different K (a DDM and its monolith baseline) are scored on identical terms.
    """
    info = read_info(store)
    by_cluster, cluster_of = read_all_clusters(store)
    order = torch.argsort(by_cluster.index)
    data = ClusterData(**{name: tensor[order] for name, tensor in by_cluster.tensors().items()})
    clusters = cluster_of[order]
    codec = codec or vae_for(info.vae)
    images = torch.cat([codec.decode(data.latents[i : i + batch]) for i in range(0, len(data), batch)]).clamp(-1, 1)
    labelled = bool((data.labels >= 0).all())
    return RealData(
        images=images,
        labels=data.labels if labelled else clusters,
        label_kind="class" if labelled else "cluster",
        text=data.text.float(),
        text_mask=data.text_mask,
        class_names=info.class_names if labelled else tuple(f"cluster {k}" for k in range(info.clusters)),
    )


@dataclass
class DomainMetric:
    """The trained classifier, the fitted reference and the rows of the real sample."""

    classifier: TrainedClassifier
    reference: FeatureStats
    reference_rows: torch.Tensor
    sample_rows: torch.Tensor
    inception: InceptionFeatures | None = None
    inception_reference: FeatureStats | None = None

    def distance(self, images: torch.Tensor) -> float:
        """Domain Fréchet distance of images [n, 3, R, R] in [-1, 1] to the real reference."""
        return frechet_distance(self.reference, feature_stats(self.classifier.features(images)))

    def fid(self, images: torch.Tensor) -> float | None:
        """Inception FID to the real reference, or None without Inception weights."""
        if self.inception is None or self.inception_reference is None:
            return None
        return frechet_distance(self.inception_reference, feature_stats(self.inception(images)))


def build_domain_metric(
    real: RealData,
    *,
    samples: int,
    seed: int,
    classifier_steps: int | None = None,
    inception: InceptionFeatures | None = None,
) -> DomainMetric:
    """Split the real data, train the classifier on the reference half and fit the reference."""
    n = real.images.shape[0]
    if n < 8:
        raise ValueError(f"evaluation needs at least 8 real examples, the run has {n}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    reference_rows, pool = order[: n // 2], order[n // 2 :]
    sample_rows = pool[: max(2, min(samples, pool.shape[0]))]
    labels = real.labels[reference_rows]
    _, dense = torch.unique(labels, return_inverse=True)  # classes absent from the half are dropped
    classifier = train_classifier(real.images[reference_rows], dense, seed=seed, steps=classifier_steps)
    reference = feature_stats(classifier.features(real.images[reference_rows]))
    metric = DomainMetric(
        classifier=classifier, reference=reference, reference_rows=reference_rows, sample_rows=sample_rows
    )
    if inception is not None:
        metric.inception = inception
        metric.inception_reference = feature_stats(inception(real.images[reference_rows]))
    return metric
