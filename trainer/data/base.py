"""The one interface every dataset offers the partition stage: examples, captions, labels by index.

Datasets are read-only, random-access and deterministic: example i is the same image (or
clip) and caption in every process, which is what lets partition assignments refer to
examples by index. Images are float tensors [3, R, R] in [-1, 1] at the spec's resolution,
clips [3, F, R, R] (channels, then time: diffusers' video layout without the batch axis).
"""

from __future__ import annotations

import io
from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from atoll.errors import AtollError, BadInputError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")


class DatasetError(BadInputError):
    """The dataset does not exist, is empty, or holds an example that cannot be read."""


class DatasetUnreachableError(AtollError):
    """The dataset's store cannot be read now (an outage: retried, never bad input)."""


LabelFactor = tuple[str, int]
"""A named factor of a class label and its number of values, e.g. ("digit", 10)."""


class Dataset(ABC):
    """Examples (images or clips) with captions and optional class labels, in a fixed order."""

    uri: str
    """Where the data comes from (dataset.uri)."""
    resolution: int
    """Side R of the square images (or frames) returned by `example`."""
    class_names: tuple[str, ...] = ()
    """Names of the class labels (`label(i)` indexes into this); empty when unlabelled."""
    label_factors: tuple[LabelFactor, ...] = ()
    """When a label combines factors (content and motion), their names and sizes, first factor
    most significant: label = ((f0 · n1) + f1) · n2 + f2 …; empty for a plain class label."""
    frames: int = 1
    """Frames per example: 1 for images, F for clips."""

    @abstractmethod
    def __len__(self) -> int:
        """Number of examples."""

    @abstractmethod
    def example(self, i: int) -> torch.Tensor:
        """Example i: an image [3, R, R] or a clip [3, F, R, R], float32 in [-1, 1]."""

    @abstractmethod
    def caption(self, i: int) -> str:
        """Example i's caption ('' when it has none)."""

    def label(self, i: int) -> int:
        """Example i's class label, -1 when unknown."""
        return -1

    @property
    def example_shape(self) -> tuple[int, ...]:
        """[3, R, R] for images, [3, F, R, R] for clips."""
        r = self.resolution
        return (3, r, r) if self.frames == 1 else (3, self.frames, r, r)

    def examples(self, indices: Sequence[int]) -> torch.Tensor:
        """A batch [n, *example_shape] of the given examples."""
        if not indices:
            return torch.empty(0, *self.example_shape)
        return torch.stack([self.example(int(i)) for i in indices])

    def _check(self, i: int) -> int:
        if not 0 <= i < len(self):
            raise IndexError(f"example {i} out of range for {len(self)} examples of {self.uri}")
        return i


class ImageDataset(Dataset):
    """Images with captions and optional class labels, in a fixed order."""

    @abstractmethod
    def image(self, i: int) -> torch.Tensor:
        """Example i as float32 [3, R, R] in [-1, 1]."""

    def images(self, indices: Sequence[int]) -> torch.Tensor:
        """A batch [n, 3, R, R] of the given examples."""
        return Dataset.examples(self, indices)

    def example(self, i: int) -> torch.Tensor:
        return self.image(i)

    def examples(self, indices: Sequence[int]) -> torch.Tensor:
        return self.images(indices)


class Limited(Dataset):
    """The first `n` examples of another dataset (dataset.maxExamples)."""

    def __init__(self, base: Dataset, n: int) -> None:
        self.base = base
        self.n = min(n, len(base))
        self.uri = base.uri
        self.resolution = base.resolution
        self.class_names = base.class_names
        self.label_factors = base.label_factors
        self.frames = base.frames

    def __len__(self) -> int:
        return self.n

    def example(self, i: int) -> torch.Tensor:
        return self.base.example(self._check(i))

    def examples(self, indices: Sequence[int]) -> torch.Tensor:
        for i in indices:
            self._check(int(i))
        return self.base.examples(indices)

    def caption(self, i: int) -> str:
        return self.base.caption(self._check(i))

    def label(self, i: int) -> int:
        return self.base.label(self._check(i))


def pil_to_tensor(image: Image.Image, resolution: int) -> torch.Tensor:
    """RGB, centre-cropped to a square, resized to R×R (Lanczos), as [3, R, R] in [-1, 1]."""
    image = image.convert("RGB")
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    image = image.crop((left, top, left + side, top + side))
    if side != resolution:
        image = image.resize((resolution, resolution), Image.Resampling.LANCZOS)
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def decode_image(data: bytes, resolution: int, where: str) -> torch.Tensor:
    """Decode PNG/JPEG/WebP bytes into [3, R, R] in [-1, 1]; a DatasetError naming `where` if unreadable."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return pil_to_tensor(image, resolution)
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise DatasetError(f"cannot decode image {where}: {error}") from None
