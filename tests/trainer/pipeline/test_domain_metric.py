"""The domain Fréchet distance separates real from degraded images on digits.

Real vs real (two disjoint samples) must score near the noise floor; a generator whose
images are blurred, or that never draws one class, must score clearly worse; the Fréchet
formula itself must agree with the closed form for Gaussians.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from atoll.trainer.data import DigitsDataset
from atoll.trainer.evaluation.domain import DomainMetric, RealData, build_domain_metric
from atoll.trainer.evaluation.frechet import FeatureStats, feature_stats, frechet_distance
from atoll.trainer.evaluation.grid import grid_order, tensor_to_images, to_grid


@pytest.fixture(scope="module")
def digits(_one_torch_thread: None) -> tuple[RealData, DomainMetric]:
    dataset = DigitsDataset(16)
    indices = list(range(len(dataset)))
    labels = torch.tensor([dataset.label(i) for i in indices])
    real = RealData(
        images=dataset.images(indices),
        labels=labels,
        label_kind="class",
        text=torch.zeros(len(indices), 1, 1),
        text_mask=torch.ones(len(indices), 1, dtype=torch.bool),
        class_names=dataset.class_names,
    )
    return real, build_domain_metric(real, samples=512, seed=0)


def test_real_scores_near_zero_and_degraded_generators_clearly_worse(digits: tuple[RealData, DomainMetric]) -> None:
    real, metric = digits
    assert metric.classifier.accuracy > 0.8
    sample = real.images[metric.sample_rows]
    floor = metric.distance(sample)

    blurred = F.avg_pool2d(F.pad(sample, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    # a generator that never draws a 3: real images outside the reference half, 3s left out
    outside = torch.arange(len(real.labels))[~torch.isin(torch.arange(len(real.labels)), metric.reference_rows)]
    without_three = outside[real.labels[outside] != 3][: len(metric.sample_rows)]
    missing_class = metric.distance(real.images[without_three])
    blur = metric.distance(blurred)
    noise = torch.randn(sample.shape, generator=torch.Generator().manual_seed(0)).clamp(-1, 1)

    assert floor < 0.4 * missing_class, (floor, missing_class)
    assert floor < 0.2 * blur, (floor, blur)
    assert metric.distance(noise) > 5 * blur
    # and "near 0" in absolute terms: small against the spread of the real features
    assert floor < 0.1 * float(np.trace(metric.reference.covariance))


def test_frechet_distance_closed_form() -> None:
    a = FeatureStats(mean=np.zeros(2), covariance=np.diag([1.0, 4.0]), count=100)
    b = FeatureStats(mean=np.array([3.0, 0.0]), covariance=np.diag([4.0, 1.0]), count=100)
    # ‖Δμ‖² + Σ (√a_i − √b_i)² for diagonal covariances
    assert frechet_distance(a, b) == pytest.approx(9 + (1 - 2) ** 2 + (2 - 1) ** 2)
    assert frechet_distance(a, a) == pytest.approx(0, abs=1e-9)
    # singular covariances (dead features) are fine
    singular = feature_stats(np.stack([np.arange(10.0), np.zeros(10)], axis=1))
    assert frechet_distance(singular, singular) == pytest.approx(0, abs=1e-9)


def test_grid_one_row_per_class() -> None:
    labels = torch.tensor([1, 0, 1, 2, 0, 1])
    order, columns = grid_order(labels, per_row=2)
    assert columns == 2
    assert order == [1, 4, 0, 2, 3, -1]
    images = tensor_to_images(torch.zeros(6, 3, 16, 16))
    grid = to_grid(images, columns=2)
    assert grid.size == (2 * 64 + 2, 3 * 64 + 2 * 2)  # tiles 2 px apart
    unlabeled, _ = grid_order(torch.full((100,), -1))
    assert unlabeled == list(range(64))
