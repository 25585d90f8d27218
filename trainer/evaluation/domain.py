"""The domain Fréchet distance (FVD for clips): generated vs real examples in a classifier's feature space.

The real data are split once (by seed) into a reference half, on which the domain
classifier is trained and the reference Gaussian is fitted, and a pool from which the
real-vs-real noise floor and the captions that condition the generated samples are drawn.
Neither the floor sample nor generated examples are ever seen in training. Where labels
combine factors (content and motion), the classifier learns each, and `recognised` says
how often it finds in a generated clip what its caption asked for (text–video alignment).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

from atoll.store import Store
from atoll.trainer.clusterdata import ClusterData, read_all_clusters, read_info
from atoll.trainer.encoders import LatentCodec, vae_for
from atoll.trainer.evaluation.classifier import TrainedClassifier, train_classifier
from atoll.trainer.evaluation.frechet import FeatureStats, feature_stats, frechet_distance

LabelKind = Literal["class", "cluster"]
StandardFeatures = Callable[[torch.Tensor], torch.Tensor]
"""A published feature network (Inception for FID, I3D for FVD): examples in [-1, 1] → features [n, d]."""


@dataclass(frozen=True)
class RealData:
    """Every real example of a run: images (or clips), labels and the captions it was encoded with."""

    images: torch.Tensor
    """[n, 3, R, R] (clips: [n, 3, F, R, R]) in [-1, 1] (the latents decoded by the run's VAE)."""
    labels: torch.Tensor
    """[n] class labels, or the partition cluster where the data has no labels."""
    label_kind: LabelKind
    text: torch.Tensor
    """[n, L, D] caption embeddings."""
    text_mask: torch.Tensor
    """[n, L]."""
    class_names: tuple[str, ...]
    factors: tuple[tuple[str, int], ...] = ()
    """The factors class labels combine (name, size), most significant first; empty: one factor."""
    index: torch.Tensor | None = None
    """[n] each row's example id in the dataset (its caption is dataset.caption(id)); None when unknown."""

    def factor_labels(self, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Labels [n] split into their factors [n, m] (one column when the label is not composite)."""
        labels = self.labels if labels is None else labels
        if not self.factors or self.label_kind != "class":
            return labels.unsqueeze(1)
        columns, rest = [], labels.clone()
        for _, size in reversed(self.factors):
            columns.append(rest % size)
            rest = rest // size
        return torch.stack(list(reversed(columns)), dim=1)

    @property
    def factor_names(self) -> tuple[str, ...]:
        """Names of the label factors the classifier learns."""
        if self.factors and self.label_kind == "class":
            return tuple(name for name, _ in self.factors)
        return ("class",) if self.label_kind == "class" else ("cluster",)


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
        factors=info.label_factors,
        index=data.index,
    )


@dataclass
class DomainMetric:
    """The trained classifier, the fitted reference and the rows of the real sample."""

    classifier: TrainedClassifier
    reference: FeatureStats
    reference_rows: torch.Tensor
    sample_rows: torch.Tensor
    inception: StandardFeatures | None = None
    """Inception (images) or I3D (clips) features, for FID / FVD, when their weights exist."""
    inception_reference: FeatureStats | None = None
    classes: tuple[torch.Tensor, ...] = ()
    """Per factor, the label values the classifier's classes 0…C−1 stand for."""

    def distance(self, images: torch.Tensor) -> float:
        """Domain Fréchet distance of images [n, 3, R, R] (or clips) in [-1, 1] to the real reference."""
        return frechet_distance(self.reference, feature_stats(self.classifier.features(images)))

    def recognised(self, examples: torch.Tensor, wanted: torch.Tensor) -> tuple[float, list[float]]:
        """How often the classifier finds in `examples` the factors `wanted` [n, m] asked for:
        (share with every factor right, share per factor)."""
        predicted = self.classifier.predict(examples)
        as_labels = torch.stack([self.classes[f][predicted[:, f]] for f in range(predicted.shape[1])], dim=1)
        right = as_labels == wanted
        return float(right.all(dim=1).float().mean()), [float(v) for v in right.float().mean(dim=0)]

    def fid(self, images: torch.Tensor) -> float | None:
        """Inception FID (I3D FVD for clips) to the real reference, or None without those weights."""
        if self.inception is None or self.inception_reference is None:
            return None
        return frechet_distance(self.inception_reference, feature_stats(self.inception(images)))


def build_domain_metric(
    real: RealData,
    *,
    samples: int,
    seed: int,
    classifier_steps: int | None = None,
    inception: StandardFeatures | None = None,
) -> DomainMetric:
    """Split the real data, train the classifier on the reference half and fit the reference."""
    n = real.images.shape[0]
    if n < 8:
        raise ValueError(f"evaluation needs at least 8 real examples, the run has {n}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    reference_rows, pool = order[: n // 2], order[n // 2 :]
    sample_rows = pool[: max(2, min(samples, pool.shape[0]))]
    factors = real.factor_labels(real.labels[reference_rows])
    classes, dense = [], []
    for f in range(factors.shape[1]):  # classes absent from the half are dropped
        values, inverse = torch.unique(factors[:, f], return_inverse=True)
        classes.append(values)
        dense.append(inverse)
    classifier = train_classifier(
        real.images[reference_rows], torch.stack(dense, dim=1), seed=seed, steps=classifier_steps
    )
    reference = feature_stats(classifier.features(real.images[reference_rows]))
    metric = DomainMetric(
        classifier=classifier,
        reference=reference,
        reference_rows=reference_rows,
        sample_rows=sample_rows,
        classes=tuple(classes),
    )
    if inception is not None:
        metric.inception = inception
        metric.inception_reference = feature_stats(inception(real.images[reference_rows]))
    return metric
