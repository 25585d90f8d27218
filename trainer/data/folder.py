"""Image folders with `.txt` caption sidecars, read through atoll.store (a local directory or s3://).

`cat/001.png` is captioned by `cat/001.txt`. An image without a sidecar gets the empty
caption (it then trains only the unconditional model, like caption dropout) and one
warning names how many lacked one. When every image sits in a first-level sub-directory,
the sub-directory names are the class labels (torchvision ImageFolder's convention).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import PurePosixPath

import torch

from atoll.log import get_logger
from atoll.store import Store
from atoll.trainer.data.base import IMAGE_EXTENSIONS, ImageDataset, decode_image

log = get_logger(__name__)


class FolderDataset(ImageDataset):
    """Every image under a store prefix, sorted by key; captions from same-name .txt files."""

    def __init__(self, uri: str, store: Store, keys: Sequence[str], resolution: int) -> None:
        self.uri = uri
        self.store = store
        self.resolution = resolution
        all_keys = set(keys)
        self._images = sorted(k for k in keys if is_image_key(k))
        self._captions = [_sidecar(k) if _sidecar(k) in all_keys else None for k in self._images]
        missing = sum(c is None for c in self._captions)
        if missing:
            first = next(k for k, c in zip(self._images, self._captions, strict=True) if c is None)
            log.warning("images without a .txt caption get the empty caption", uri=uri, count=missing, first=first)
        folders = [PurePosixPath(k).parts[:-1] for k in self._images]
        if folders and all(len(parts) == 1 for parts in folders):
            self.class_names = tuple(sorted({parts[0] for parts in folders}))
            self._labels = [self.class_names.index(parts[0]) for parts in folders]
        else:
            self.class_names = ()
            self._labels = [-1] * len(self._images)

    def __len__(self) -> int:
        return len(self._images)

    def image(self, i: int) -> torch.Tensor:
        key = self._images[self._check(i)]
        return decode_image(self.store.get_bytes(key), self.resolution, self.store.uri_of(key))

    def caption(self, i: int) -> str:
        key = self._captions[self._check(i)]
        return "" if key is None else self.store.get_bytes(key).decode("utf-8", errors="replace").strip()

    def label(self, i: int) -> int:
        return self._labels[self._check(i)]


def is_image_key(key: str) -> bool:
    """Whether a key names an image file (not hidden)."""
    name = PurePosixPath(key).name
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def _sidecar(key: str) -> str:
    return str(PurePosixPath(key).with_suffix(".txt"))
