"""The built-in datasets for runs without network: real handwritten digits and procedural shapes.

`builtin://digits` is scikit-learn's bundled copy of the UCI handwritten digits (1797 real
8×8 scans); `builtin://shapes` draws shape × colour × background images whose factors are
known exactly, deterministic by dataset.seed. Neither downloads anything.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from PIL import Image, ImageDraw

from atoll.trainer.data.base import ImageDataset


class DigitsDataset(ImageDataset):
    """scikit-learn's handwritten digits: grey 8×8 scans (0..16) upsampled to R, grey in all 3 channels."""

    def __init__(self, resolution: int) -> None:
        from sklearn.datasets import load_digits

        digits = load_digits()
        self.uri = "builtin://digits"
        self.resolution = resolution
        self.class_names = tuple(str(d) for d in range(10))
        scans = torch.from_numpy(np.asarray(digits.images, dtype=np.float32)) / 8.0 - 1.0  # 0..16 → -1..1
        grey = scans.unsqueeze(1)
        if resolution != grey.shape[-1]:
            grey = F.interpolate(grey, size=(resolution, resolution), mode="bilinear", align_corners=False)
        self._images = grey.clamp(-1.0, 1.0).expand(-1, 3, -1, -1).contiguous()
        self._labels = [int(t) for t in digits.target]

    def __len__(self) -> int:
        return len(self._labels)

    def image(self, i: int) -> torch.Tensor:
        return self._images[self._check(i)].clone()

    def images(self, indices: Sequence[int]) -> torch.Tensor:
        return self._images[torch.as_tensor([self._check(int(i)) for i in indices], dtype=torch.long)].clone()

    def caption(self, i: int) -> str:
        return f"a handwritten {self._labels[self._check(i)]}"

    def label(self, i: int) -> int:
        return self._labels[self._check(i)]


SHAPES = ("circle", "square", "triangle", "diamond", "cross")
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 70, 220),
    "yellow": (240, 210, 40),
    "magenta": (200, 50, 200),
    "cyan": (40, 200, 210),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
}
SHAPES_SIZE = 4096


@dataclass(frozen=True, slots=True)
class ShapeFactors:
    """The generating factors of one shapes example."""

    shape: str
    colour: str
    background: str
    size: float
    """Circumradius as a fraction of the image side."""
    x: float
    """Centre, as fractions of the side."""
    y: float
    angle: float
    """Rotation in degrees (circles ignore it)."""


class ShapesDataset(ImageDataset):
    """Procedural shape × colour × background images; label = shape index, captions name all three."""

    def __init__(self, resolution: int, seed: int, size: int = SHAPES_SIZE) -> None:
        self.uri = "builtin://shapes"
        self.resolution = resolution
        self.seed = seed
        self.size = size
        self.class_names = SHAPES

    def __len__(self) -> int:
        return self.size

    def factors(self, i: int) -> ShapeFactors:
        """Example i's factors: a pure function of (dataset.seed, i)."""
        rng = np.random.default_rng([self.seed, self._check(i)])
        colours = list(COLOURS)
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        colour = colours[int(rng.integers(len(colours)))]
        others = [c for c in colours if c != colour]
        background = others[int(rng.integers(len(others)))]
        size = float(rng.uniform(0.22, 0.4))
        x, y = (float(v) for v in rng.uniform(size + 0.02, 1.0 - size - 0.02, size=2))
        angle = float(rng.uniform(0.0, 360.0))
        return ShapeFactors(shape=shape, colour=colour, background=background, size=size, x=x, y=y, angle=angle)

    def image(self, i: int) -> torch.Tensor:
        f = self.factors(i)
        supersample = 4 if self.resolution <= 256 else 1  # draw large, then box-filter down: anti-aliased edges
        side = self.resolution * supersample
        canvas = Image.new("RGB", (side, side), COLOURS[f.background])
        draw = ImageDraw.Draw(canvas)
        cx, cy, r = f.x * side, f.y * side, f.size * side
        if f.shape == "circle":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=COLOURS[f.colour])
        else:
            draw.polygon(shape_polygon(f.shape, cx, cy, r, f.angle), fill=COLOURS[f.colour])
        if supersample > 1:
            canvas = canvas.resize((self.resolution, self.resolution), Image.Resampling.BOX)
        array = np.asarray(canvas, dtype=np.float32) / 127.5 - 1.0
        return torch.from_numpy(array).permute(2, 0, 1).contiguous()

    def caption(self, i: int) -> str:
        f = self.factors(i)
        return f"a {f.colour} {f.shape} on a {f.background} background"

    def label(self, i: int) -> int:
        return SHAPES.index(self.factors(i).shape)


def shape_polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    """Vertices of a regular shape of circumradius r around (cx, cy), rotated by angle degrees."""
    if shape == "square":
        unit = [(math.cos(a), math.sin(a)) for a in (math.pi / 4 + k * math.pi / 2 for k in range(4))]
    elif shape == "triangle":
        unit = [(math.cos(a), math.sin(a)) for a in (-math.pi / 2 + k * 2 * math.pi / 3 for k in range(3))]
    elif shape == "diamond":
        unit = [(0.0, -1.0), (0.6, 0.0), (0.0, 1.0), (-0.6, 0.0)]
    elif shape == "cross":
        w = 0.35
        unit = [
            (-w, -1),
            (w, -1),
            (w, -w),
            (1, -w),
            (1, w),
            (w, w),
            (w, 1),
            (-w, 1),
            (-w, w),
            (-1, w),
            (-1, -w),
            (-w, -w),
        ]
    else:
        raise ValueError(f"unknown shape {shape!r}")
    cos, sin = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    return [(cx + r * (u * cos - v * sin), cy + r * (u * sin + v * cos)) for u, v in unit]
