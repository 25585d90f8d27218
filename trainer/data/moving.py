"""The built-in video datasets: real handwritten digits and coloured shapes in motion, procedurally.

`builtin://moving-digits` moves scikit-learn's digit scans across a black canvas
("a 7 moving left"); `builtin://moving-shapes` moves, grows, shrinks or rotates coloured
shapes ("a red square moving up"). Speed, start and direction are drawn per clip from
(dataset.seed, i); in `builtin://bouncing-digits` and `bouncing-shapes` half the moving clips
bounce off the walls ("… and bouncing back"). Labels combine content and motion. Never
downloads anything.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from PIL import Image, ImageDraw

from atoll.trainer.data.builtin import COLOURS, SHAPES, shape_polygon
from atoll.trainer.data.clips import VideoDataset

MOVING_SIZE = 4096
"""Clips in each built-in video dataset."""
DIRECTIONS = ("left", "right", "up", "down")
_STEP = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}
SHAPE_MOTIONS = ("moving left", "moving right", "moving up", "moving down", "growing", "shrinking", "rotating")
SHAPE_COLOURS = tuple(c for c in COLOURS if c != "black")
SYMMETRY_DEGREES = {"square": 90.0, "cross": 90.0, "triangle": 120.0, "diamond": 180.0}
"""The smallest rotation that maps each (rotatable) shape onto itself."""
SPEED = (0.3, 0.6)
"""Speed of moving content, in canvas sides per second."""


@dataclass(frozen=True, slots=True)
class Path2D:
    """Straight motion of a point inside [0, free]², reflected at the walls when it bounces."""

    x: float
    y: float
    dx: float
    """Velocity, pixels per second."""
    dy: float
    free: float

    def at(self, t: float) -> tuple[float, float]:
        return _reflect(self.x + self.dx * t, self.free), _reflect(self.y + self.dy * t, self.free)

    def bounces(self, duration: float) -> bool:
        """Whether the path hits a wall before `duration` seconds."""
        ends = (self.x + self.dx * duration, self.y + self.dy * duration)
        return any(e < -1e-9 or e > self.free + 1e-9 for e in ends)


def _reflect(p: float, free: float) -> float:
    if free <= 0:
        return 0.0
    period = 2 * free
    p = p % period
    return period - p if p > free else p


def _path(rng: np.random.Generator, direction: str, *, free: float, duration: float, bounce: bool, side: int) -> Path2D:
    """A path moving in `direction`: inside the canvas all clip long, or (bounce) hitting a wall."""
    ux, uy = _STEP[direction]
    speed = float(rng.uniform(*SPEED)) * side
    across = float(rng.uniform(0.0, free))
    if bounce:  # reach the wall it heads for a third to two thirds into the clip, then come back
        distance = float(rng.uniform(0.3, 0.6)) * free
        speed = distance / (float(rng.uniform(0.35, 0.65)) * max(duration, 1e-9))
        along = free - distance
    else:
        travel = min(speed * duration, free)
        speed = travel / max(duration, 1e-9)
        along = float(rng.uniform(0.0, free - travel))
    start = free - along if ux + uy < 0 else along  # `along` is measured from the wall it leaves
    x, y = (start, across) if uy == 0 else (across, start)
    return Path2D(x=x, y=y, dx=ux * speed, dy=uy * speed, free=free)


def _options(bounce: float) -> float:
    if not 0.0 <= bounce <= 1.0:
        raise ValueError(f"bounce must lie in [0, 1], got {bounce}")
    return bounce


@dataclass(frozen=True, slots=True)
class DigitClip:
    """The generating factors of one moving-digits clip."""

    scan: int
    """Index of the digit scan in scikit-learn's digits."""
    digit: int
    direction: str
    path: Path2D
    bounces: bool


class MovingDigitsDataset(VideoDataset):
    """scikit-learn's digit scans (side R/2) moving across a black R×R canvas; label = digit × direction."""

    def __init__(
        self, resolution: int, frames: int, fps: float, seed: int, *, bounce: float = 0.0, size: int = MOVING_SIZE
    ) -> None:
        from sklearn.datasets import load_digits

        digits = load_digits()
        self.uri = "builtin://moving-digits"
        self.resolution, self.frames, self.fps, self.seed, self.size = resolution, frames, fps, seed, size
        self.bounce = _options(bounce)
        self.label_factors = (("digit", 10), ("direction", len(DIRECTIONS)))
        self.class_names = tuple(f"{d} moving {m}" for d in range(10) for m in DIRECTIONS)
        self.digit_side = max(4, resolution // 2)
        scans = torch.from_numpy(np.asarray(digits.images, dtype=np.float32)).unsqueeze(1) / 16.0  # 0..1
        self._scans = F.interpolate(scans, size=(self.digit_side, self.digit_side), mode="bilinear").clamp(0, 1)[:, 0]
        self._targets = [int(t) for t in digits.target]

    def __len__(self) -> int:
        return self.size

    def factors(self, i: int) -> DigitClip:
        """Clip i's factors: a pure function of (dataset.seed, i)."""
        rng = np.random.default_rng([self.seed, self._check(i), 1])
        scan = int(rng.integers(len(self._targets)))
        direction = DIRECTIONS[int(rng.integers(len(DIRECTIONS)))]
        wants_bounce = bool(rng.uniform() < self.bounce)
        duration = (self.frames - 1) / self.fps
        free = float(self.resolution - self.digit_side)
        path = _path(rng, direction, free=free, duration=duration, bounce=wants_bounce, side=self.resolution)
        return DigitClip(
            scan=scan, digit=self._targets[scan], direction=direction, path=path, bounces=path.bounces(duration)
        )

    def clip(self, i: int) -> torch.Tensor:
        f = self.factors(i)
        side, d = self.resolution, self.digit_side
        out = torch.full((3, self.frames, side, side), -1.0)
        scan = self._scans[f.scan] * 2 - 1
        for k in range(self.frames):
            x, y = f.path.at(k / self.fps)
            left, top = round(x), round(y)
            out[:, k, top : top + d, left : left + d] = torch.maximum(out[:, k, top : top + d, left : left + d], scan)
        return out

    def caption(self, i: int) -> str:
        f = self.factors(i)
        return f"a {f.digit} moving {f.direction}" + (" and bouncing back" if f.bounces else "")

    def label(self, i: int) -> int:
        f = self.factors(i)
        return f.digit * len(DIRECTIONS) + DIRECTIONS.index(f.direction)


@dataclass(frozen=True, slots=True)
class ShapeClip:
    """The generating factors of one moving-shapes clip."""

    shape: str
    colour: str
    motion: str
    size: float
    """Circumradius at the start, as a fraction of the side."""
    growth: float
    """Circumradius change per second, as a fraction of the side (growing > 0, shrinking < 0)."""
    angle: float
    spin: float
    """Degrees per second (rotating only)."""
    path: Path2D
    """Motion of the shape's bounding box's corner, in pixels."""
    bounces: bool


class MovingShapesDataset(VideoDataset):
    """Coloured shapes on black that move, grow, shrink or rotate; label = shape × motion."""

    def __init__(
        self, resolution: int, frames: int, fps: float, seed: int, *, bounce: float = 0.0, size: int = MOVING_SIZE
    ) -> None:
        self.uri = "builtin://moving-shapes"
        self.resolution, self.frames, self.fps, self.seed, self.size = resolution, frames, fps, seed, size
        self.bounce = _options(bounce)
        self.label_factors = (("shape", len(SHAPES)), ("motion", len(SHAPE_MOTIONS)))
        self.class_names = tuple(f"{s} {m}" for s in SHAPES for m in SHAPE_MOTIONS)

    def __len__(self) -> int:
        return self.size

    def factors(self, i: int) -> ShapeClip:
        """Clip i's factors: a pure function of (dataset.seed, i)."""
        rng = np.random.default_rng([self.seed, self._check(i), 2])
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        colour = SHAPE_COLOURS[int(rng.integers(len(SHAPE_COLOURS)))]
        motions = [m for m in SHAPE_MOTIONS if not (shape == "circle" and m == "rotating")]  # a turning circle is still
        motion = motions[int(rng.integers(len(motions)))]
        duration = (self.frames - 1) / self.fps
        size = float(rng.uniform(0.15, 0.22))
        growth, spin, angle = 0.0, 0.0, float(rng.uniform(0.0, 360.0))
        if motion in ("growing", "shrinking"):
            change = float(rng.uniform(0.08, 0.14))  # radius change over the clip, fraction of the side
            growth = (change if motion == "growing" else -change) / max(duration, 1e-9)
            size = size if motion == "growing" else size + change
        if motion == "rotating":  # less than half a symmetry turn, so the last frame differs from the first
            turn = float(rng.uniform(0.3, 0.45)) * SYMMETRY_DEGREES[shape]
            spin = float(rng.choice([-1.0, 1.0])) * turn / max(duration, 1e-9)
        largest = size + max(0.0, growth * duration)
        free = self.resolution * (1 - 2 * largest)
        if motion.startswith("moving"):
            direction = motion.removeprefix("moving ")
            wants_bounce = bool(rng.uniform() < self.bounce)
            path = _path(rng, direction, free=free, duration=duration, bounce=wants_bounce, side=self.resolution)
        else:
            x, y = (float(v) for v in rng.uniform(0.0, free, size=2))
            path = Path2D(x=x, y=y, dx=0.0, dy=0.0, free=free)
        return ShapeClip(
            shape=shape,
            colour=colour,
            motion=motion,
            size=size,
            growth=growth,
            angle=angle,
            spin=spin,
            path=path,
            bounces=path.bounces(duration),
        )

    def clip(self, i: int) -> torch.Tensor:
        f = self.factors(i)
        supersample = 4
        side = self.resolution * supersample
        largest = f.size + max(0.0, f.growth * (self.frames - 1) / self.fps)
        frames = []
        for k in range(self.frames):
            t = k / self.fps
            x, y = f.path.at(t)
            r = (f.size + f.growth * t) * side
            cx = (x / self.resolution + largest) * side
            cy = (y / self.resolution + largest) * side
            canvas = Image.new("RGB", (side, side), COLOURS["black"])
            draw = ImageDraw.Draw(canvas)
            if f.shape == "circle":
                draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=COLOURS[f.colour])
            else:
                draw.polygon(shape_polygon(f.shape, cx, cy, r, f.angle + f.spin * t), fill=COLOURS[f.colour])
            canvas = canvas.resize((self.resolution, self.resolution), Image.Resampling.BOX)
            frames.append(torch.from_numpy(np.asarray(canvas, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1))
        return torch.stack(frames, dim=1).contiguous()

    def caption(self, i: int) -> str:
        f = self.factors(i)
        return f"a {f.colour} {f.shape} {f.motion}" + (" and bouncing back" if f.bounces else "")

    def label(self, i: int) -> int:
        f = self.factors(i)
        return SHAPES.index(f.shape) * len(SHAPE_MOTIONS) + SHAPE_MOTIONS.index(f.motion)
