"""The domain classifier whose features the domain Fréchet distance is measured in.

A small CNN trained at evaluation time, quickly on the CPU and deterministically, to
predict the dataset's labels (digit class, shape factor, or the partition cluster when the
data has no labels) from real images. Its penultimate activations play the role
Inception's pool features play for FID, but in this dataset's own domain. Never sees
generated images during training.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

MAX_SIDE = 64
"""Images are resized to at most this side before classification (cost stays CPU-sized)."""
EPOCHS, MIN_STEPS, MAX_STEPS = 60, 100, 400
"""Default training length: ~60 epochs, at least 100 and at most 400 steps (~2 s of CPU per 100)."""


class DomainClassifier(nn.Module):
    """Three strided convolutions, global pooling, a 64-d feature layer and a linear head.

    Small on purpose: 64 features keep the Fréchet distance's finite-sample floor low at a
    few hundred samples (measured on digits, 512 samples: real vs real ≈ 1.2–1.6, blurred
    ≈ 9–12, one class missing ≈ 3.5–4.3) and train in seconds on a CPU.
    """

    def __init__(self, classes: int, width: int = 16, features: int = 64) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
            nn.GELU(),
            nn.Conv2d(2 * width, 4 * width, 3, stride=2, padding=1),
            nn.GELU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(4 * width, features),
            nn.GELU(),
        )
        self.head = nn.Linear(features, classes)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Feature vectors [n, 64] of images [n, 3, R, R] in [-1, 1]."""
        if images.shape[-1] > MAX_SIDE:
            images = F.interpolate(images, size=(MAX_SIDE, MAX_SIDE), mode="bilinear", antialias=True)
        out: torch.Tensor = self.body(images)
        return out

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits [n, classes]."""
        logits: torch.Tensor = self.head(self.features(images))
        return logits


@dataclass(frozen=True)
class TrainedClassifier:
    """A trained domain classifier and how well it classifies held-out real images."""

    model: DomainClassifier
    classes: int
    accuracy: float
    train_examples: int
    held_out: int

    @torch.no_grad()
    def features(self, images: torch.Tensor, batch: int = 512) -> torch.Tensor:
        """Features [n, 64] of images [n, 3, R, R] in [-1, 1], in batches."""
        self.model.eval()
        parts = [self.model.features(images[i : i + batch].float()) for i in range(0, images.shape[0], batch)]
        return torch.cat(parts)


def train_classifier(
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    seed: int = 0,
    steps: int | None = None,
    batch: int = 128,
    learning_rate: float = 2e-3,
    held_out_share: float = 0.15,
) -> TrainedClassifier:
    """Train on real images [n, 3, R, R] with labels [n] (0..C-1), deterministic in `seed`.

    steps: about EPOCHS passes over the training images, within [MIN_STEPS, MAX_STEPS]
    when unset (digits: ~360 steps, held-out accuracy ≈ 0.9).
    """
    if images.shape[0] != labels.shape[0] or images.shape[0] < 4:
        raise ValueError(f"need at least 4 labelled images, got {images.shape[0]} images, {labels.shape[0]} labels")
    classes = int(labels.max().item()) + 1
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(images.shape[0], generator=generator)
    held = max(1, int(images.shape[0] * held_out_share))
    test, train = order[:held], order[held:]
    if steps is None:
        steps = min(MAX_STEPS, max(MIN_STEPS, EPOCHS * int(train.shape[0]) // batch))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DomainClassifier(classes)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=learning_rate, total_steps=steps)
    model.train()
    for _ in range(steps):
        rows = train[torch.randint(0, train.shape[0], (min(batch, train.shape[0]),), generator=generator)]
        loss = F.cross_entropy(model(images[rows].float()), labels[rows])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        schedule.step()
    model.eval()
    with torch.no_grad():
        predicted = torch.cat([model(images[test[i : i + 512]].float()).argmax(1) for i in range(0, held, 512)])
    accuracy = float((predicted == labels[test]).float().mean())
    return TrainedClassifier(
        model=model, classes=classes, accuracy=accuracy, train_examples=int(train.shape[0]), held_out=held
    )
