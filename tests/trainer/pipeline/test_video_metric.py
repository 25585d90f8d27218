"""Domain FVD on moving digits: a 3-D evaluator that learns content and motion, a real-vs-real floor,
real clips with shuffled frames far above it (the metric sees time), alignment that recognises what
captions ask for, temporal consistency — and evaluators near chance flagged unreliable (images too)."""

from __future__ import annotations

import pytest
import torch

from atoll.trainer.data import DigitsDataset, MovingDigitsDataset
from atoll.trainer.evaluation.classifier import train_classifier
from atoll.trainer.evaluation.domain import DomainMetric, RealData, build_domain_metric
from atoll.trainer.evaluation.video import shuffle_frames, temporal_consistency


@pytest.fixture(scope="module")
def moving(_one_torch_thread: None) -> tuple[RealData, DomainMetric]:
    dataset = MovingDigitsDataset(16, 6, 6.0, seed=0, size=1200)
    indices = list(range(len(dataset)))
    real = RealData(
        images=dataset.examples(indices),
        labels=torch.tensor([dataset.label(i) for i in indices]),
        label_kind="class",
        text=torch.zeros(len(indices), 1, 1),
        text_mask=torch.ones(len(indices), 1, dtype=torch.bool),
        class_names=dataset.class_names,
        factors=dataset.label_factors,
    )
    return real, build_domain_metric(real, samples=256, seed=0)


def test_the_evaluator_learns_content_and_motion(moving: tuple[RealData, DomainMetric]) -> None:
    real, metric = moving
    classifier = metric.classifier
    assert classifier.classes == (10, 4)
    digit, direction = classifier.accuracies
    assert direction > 0.9, classifier.accuracies  # motion from a 3-D CNN: near perfect
    assert digit > 0.5, classifier.accuracies
    assert classifier.reliable
    both, per_factor = metric.recognised(
        real.images[metric.sample_rows], real.factor_labels(real.labels[metric.sample_rows])
    )
    assert per_factor[1] > 0.9
    assert both > 0.45


def test_shuffled_frames_score_far_above_the_floor(moving: tuple[RealData, DomainMetric]) -> None:
    real, metric = moving
    sample = real.images[metric.sample_rows]
    floor = metric.distance(sample)
    shuffled = metric.distance(shuffle_frames(sample, seed=0))
    assert shuffled > 5 * floor, (floor, shuffled)
    assert shuffled > 1.0
    # The mean frame alone cannot tell: a per-frame shuffle keeps it exactly.
    torch.testing.assert_close(shuffle_frames(sample, seed=0).mean(2), sample.mean(2))
    # Reversing time maps the set of clips onto itself (every direction is as likely as its
    # opposite), so no unconditional distance can see it; alignment, which reads the captions,
    # must: the evaluator finds the captioned direction in real clips, not in reversed ones.
    wanted = real.factor_labels(real.labels[metric.sample_rows])
    _, forward = metric.recognised(sample, wanted)
    _, backward = metric.recognised(sample.flip(2), wanted)
    assert forward[1] > 0.9
    assert backward[1] < 0.2


def test_temporal_consistency_tells_smooth_motion_from_flicker(moving: tuple[RealData, DomainMetric]) -> None:
    real, _ = moving
    clips = real.images[:64]
    still = clips[:, :, :1].expand_as(clips)
    noise = torch.rand(clips.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert temporal_consistency(still) == 1.0
    assert temporal_consistency(clips) > temporal_consistency(shuffle_frames(clips, seed=1)) - 1e-6
    # Uniform noise in [-1, 1] changes by 2/3 on average between frames: consistency 1 − 1/3.
    assert abs(temporal_consistency(noise) - 2 / 3) < 0.01
    assert temporal_consistency(clips) > temporal_consistency(noise) + 0.2


@pytest.mark.usefixtures("_one_torch_thread")
def test_an_evaluator_near_chance_is_unreliable() -> None:
    """Images too: a classifier that cannot tell the classes apart must not make a score."""
    dataset = DigitsDataset(8)
    images = dataset.examples(list(range(600)))
    labels = torch.tensor([dataset.label(i) for i in range(600)])
    good = train_classifier(images, labels, seed=0, steps=150)
    assert good.reliable, good.accuracies
    shuffled = labels[torch.randperm(600, generator=torch.Generator().manual_seed(0))]
    chance = train_classifier(images, shuffled, seed=0, steps=150)
    assert chance.accuracies[0] < 0.3
    assert not chance.reliable
