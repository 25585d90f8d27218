"""The domain classifier (the evaluator) whose features the domain Fréchet distance is measured in.

A small CNN trained at evaluation time, quickly on the CPU and deterministically, to
predict the dataset's labels from real examples: for images a 2-D CNN (digit class, shape,
or the partition cluster when the data has no labels); for clips a 3-D CNN with one head
per label factor (content and motion, e.g. digit and direction), so its features must see
what moves and where to. Its penultimate activations play the role Inception's (or I3D's)
pool features play for FID (FVD), but in this dataset's own domain. Never sees generated
samples during training. A classifier near chance on held-out data is flagged unreliable:
distances in its feature space are then not scores.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

MAX_SIDE = 64
"""Images are resized to at most this side before classification (cost stays CPU-sized)."""
MAX_CLIP_SIDE = 32
"""Clip frames are resized to at most this side (a 3-D CNN costs frames × more)."""
EPOCHS, MIN_STEPS, MAX_STEPS = 60, 100, 400
"""Default training length: ~60 epochs, at least 100 and at most 400 steps (~2 s of CPU per 100 on images)."""
CLIP_BATCH, CLIP_MAX_STEPS = 64, 250
"""Clips cost frames × an image: half the batch and at most 250 steps (moving digits: digit ≈ 0.8, direction 1.0)."""
RELIABLE_MARGIN = 0.5
"""A factor is recognised reliably when its held-out accuracy is at least halfway from chance to 1."""


class MeanMaxPool(nn.Module):
    """Feature maps [n, c, T, H, W] → [n, 2c]: the mean and the max over time and space."""

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        return torch.cat([maps.mean(dim=(2, 3, 4)), maps.amax(dim=(2, 3, 4))], dim=1)


class DomainClassifier(nn.Module):
    """Three strided convolutions (2-D for images, 3-D for clips), global pooling, a 64-d feature layer
    and a linear head per label factor.

    Small on purpose: 64 features keep the Fréchet distance's finite-sample floor low at a
    few hundred samples (measured on digits, 512 samples: real vs real ≈ 1.2–1.6, blurred
    ≈ 9–12, one class missing ≈ 3.5–4.3) and train in seconds (clips: a minute) on a CPU.
    """

    def __init__(self, classes: int | Sequence[int], width: int = 16, features: int = 64, video: bool = False) -> None:
        super().__init__()
        self.video = video
        layers: list[nn.Module]
        if video:
            # Per-frame (1, 3, 3) convolutions see content; the last one spans 3 frames and sees
            # motion (a few pixels per frame). Time is never strided away (clips are short), space
            # only once: a digit of 8 pixels keeps 4 × 4 cells. Mean and max pooling together: a
            # small digit on a large black canvas is diluted by the mean alone (measured on
            # moving digits, 600 training clips, 200 steps: digit accuracy 0.27 with one more
            # stride and the mean only, 0.81 like this; direction 1.0 either way).
            layers = [
                nn.Conv3d(3, width, (1, 3, 3), padding=(0, 1, 1)),
                nn.GELU(),
                nn.Conv3d(width, 2 * width, (1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
                nn.GELU(),
                nn.Conv3d(2 * width, 4 * width, 3, padding=1),
                nn.GELU(),
                MeanMaxPool(),
            ]
        else:
            layers = [
                nn.Conv2d(3, width, 3, padding=1),
                nn.GELU(),
                nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
                nn.GELU(),
                nn.Conv2d(2 * width, 4 * width, 3, stride=2, padding=1),
                nn.GELU(),
                nn.AdaptiveAvgPool2d(1),
            ]
        pooled = 8 * width if video else 4 * width
        self.body = nn.Sequential(*layers, nn.Flatten(), nn.Linear(pooled, features), nn.GELU())
        sizes = [classes] if isinstance(classes, int) else list(classes)
        self.heads = nn.ModuleList(nn.Linear(features, size) for size in sizes)

    def features(self, examples: torch.Tensor) -> torch.Tensor:
        """Feature vectors [n, 64] of images [n, 3, R, R] (or clips [n, 3, F, R, R]) in [-1, 1]."""
        side = MAX_CLIP_SIDE if self.video else MAX_SIDE
        if examples.shape[-1] > side:
            if self.video:
                examples = F.interpolate(examples, size=(examples.shape[2], side, side), mode="trilinear")
            else:
                examples = F.interpolate(examples, size=(side, side), mode="bilinear", antialias=True)
        out: torch.Tensor = self.body(examples)
        return out

    def forward(self, examples: torch.Tensor) -> list[torch.Tensor]:
        """Logits [n, classes] of every label factor."""
        features = self.features(examples)
        return [head(features) for head in self.heads]


@dataclass(frozen=True)
class TrainedClassifier:
    """A trained domain classifier and how well it recognises each label factor on held-out real data."""

    model: DomainClassifier
    classes: tuple[int, ...]
    """Classes per factor."""
    accuracies: tuple[float, ...]
    """Held-out accuracy per factor."""
    chances: tuple[float, ...]
    """Per factor, the accuracy of always guessing the most frequent held-out class."""
    joint_accuracy: float
    """Held-out share with every factor right."""
    train_examples: int
    held_out: int

    @property
    def accuracy(self) -> float:
        """Held-out accuracy of the whole label (every factor right)."""
        return self.joint_accuracy

    @property
    def reliable(self) -> bool:
        """Whether every factor is recognised well above chance (see RELIABLE_MARGIN)."""
        return all(a >= c + RELIABLE_MARGIN * (1 - c) for a, c in zip(self.accuracies, self.chances, strict=True))

    @torch.no_grad()
    def features(self, examples: torch.Tensor, batch: int = 256) -> torch.Tensor:
        """Features [n, 64] of images or clips in [-1, 1], in batches."""
        self.model.eval()
        parts = [self.model.features(examples[i : i + batch].float()) for i in range(0, examples.shape[0], batch)]
        return torch.cat(parts)

    @torch.no_grad()
    def predict(self, examples: torch.Tensor, batch: int = 256) -> torch.Tensor:
        """Predicted class of every factor: [n, factors]."""
        self.model.eval()
        parts = []
        for i in range(0, examples.shape[0], batch):
            logits = self.model(examples[i : i + batch].float())
            parts.append(torch.stack([lg.argmax(1) for lg in logits], dim=1))
        return torch.cat(parts)


def train_classifier(
    examples: torch.Tensor,
    labels: torch.Tensor,
    *,
    seed: int = 0,
    steps: int | None = None,
    batch: int | None = None,
    learning_rate: float = 2e-3,
    held_out_share: float = 0.15,
) -> TrainedClassifier:
    """Train on real images [n, 3, R, R] or clips [n, 3, F, R, R] with labels [n] (one factor) or
    [n, factors], each 0..C-1; deterministic in `seed`.

    steps: about EPOCHS passes over the training examples, within [MIN_STEPS, MAX_STEPS]
    (CLIP_MAX_STEPS for clips) when unset (digits: ~360 steps, held-out accuracy ≈ 0.9);
    batch: 128 images or CLIP_BATCH clips when unset.
    """
    if labels.ndim == 1:
        labels = labels.unsqueeze(1)
    if examples.shape[0] != labels.shape[0] or examples.shape[0] < 4:
        raise ValueError(
            f"need at least 4 labelled examples, got {examples.shape[0]} examples, {labels.shape[0]} labels"
        )
    classes = tuple(int(labels[:, f].max().item()) + 1 for f in range(labels.shape[1]))
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(examples.shape[0], generator=generator)
    held = max(1, int(examples.shape[0] * held_out_share))
    test, train = order[:held], order[held:]
    video = examples.ndim == 5
    batch = batch or (CLIP_BATCH if video else 128)
    if steps is None:
        steps = min(CLIP_MAX_STEPS if video else MAX_STEPS, max(MIN_STEPS, EPOCHS * int(train.shape[0]) // batch))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DomainClassifier(classes, video=video)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=learning_rate, total_steps=steps)
    model.train()
    for _ in range(steps):
        rows = train[torch.randint(0, train.shape[0], (min(batch, train.shape[0]),), generator=generator)]
        logits = model(examples[rows].float())
        loss = sum(F.cross_entropy(lg, labels[rows, f]) for f, lg in enumerate(logits))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[union-attr]
        optimizer.step()
        schedule.step()
    trained = TrainedClassifier(
        model=model.eval(),
        classes=classes,
        accuracies=(),
        chances=(),
        joint_accuracy=0.0,
        train_examples=int(train.shape[0]),
        held_out=held,
    )
    right = trained.predict(examples[test]) == labels[test]
    chances = tuple(
        float(torch.bincount(labels[test, f], minlength=classes[f]).max()) / held for f in range(len(classes))
    )
    return TrainedClassifier(
        model=trained.model,
        classes=classes,
        accuracies=tuple(float(right[:, f].float().mean()) for f in range(len(classes))),
        chances=chances,
        joint_accuracy=float(right.all(dim=1).float().mean()),
        train_examples=trained.train_examples,
        held_out=held,
    )
