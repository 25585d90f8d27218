"""Image or video folders with `.txt` caption sidecars, read through atoll.store (a local directory or s3://).

`cat/001.png` (or `cat/001.mp4`) is captioned by `cat/001.txt`. A file without a sidecar
gets the empty caption (it then trains only the unconditional model, like caption
dropout) and one warning names how many lacked one. When every file sits in a first-level
sub-directory, the sub-directory names are the class labels (torchvision ImageFolder's
convention).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import PurePosixPath

import torch

from atoll.log import get_logger
from atoll.store import Store
from atoll.trainer.data.base import IMAGE_EXTENSIONS, ImageDataset, decode_image
from atoll.trainer.data.clips import VideoDataset, decode_clip, is_video_key

log = get_logger(__name__)


class FolderIndex:
    """The media files under a store prefix, sorted by key, with their caption keys and class labels."""

    def __init__(self, uri: str, store: Store, keys: Sequence[str], is_media: Callable[[str], bool]) -> None:
        self.store = store
        all_keys = set(keys)
        self.media = sorted(k for k in keys if is_media(k))
        self.captions = [_sidecar(k) if _sidecar(k) in all_keys else None for k in self.media]
        missing = sum(c is None for c in self.captions)
        if missing:
            first = next(k for k, c in zip(self.media, self.captions, strict=True) if c is None)
            log.warning("files without a .txt caption get the empty caption", uri=uri, count=missing, first=first)
        folders = [PurePosixPath(k).parts[:-1] for k in self.media]
        if folders and all(len(parts) == 1 for parts in folders):
            self.class_names: tuple[str, ...] = tuple(sorted({parts[0] for parts in folders}))
            self.labels = [self.class_names.index(parts[0]) for parts in folders]
        else:
            self.class_names = ()
            self.labels = [-1] * len(self.media)

    def caption(self, i: int) -> str:
        key = self.captions[i]
        return "" if key is None else self.store.get_bytes(key).decode("utf-8", errors="replace").strip()


class FolderDataset(ImageDataset):
    """Every image under a store prefix, sorted by key; captions from same-name .txt files."""

    def __init__(self, uri: str, store: Store, keys: Sequence[str], resolution: int) -> None:
        self.uri = uri
        self.store = store
        self.resolution = resolution
        self.index = FolderIndex(uri, store, keys, is_image_key)
        self.class_names = self.index.class_names

    def __len__(self) -> int:
        return len(self.index.media)

    def image(self, i: int) -> torch.Tensor:
        key = self.index.media[self._check(i)]
        return decode_image(self.store.get_bytes(key), self.resolution, self.store.uri_of(key))

    def caption(self, i: int) -> str:
        return self.index.caption(self._check(i))

    def label(self, i: int) -> int:
        return self.index.labels[self._check(i)]


class VideoFolderDataset(VideoDataset):
    """Every video under a store prefix, sorted by key; captions from same-name .txt files."""

    def __init__(
        self, uri: str, store: Store, keys: Sequence[str], resolution: int, *, frames: int, fps: float
    ) -> None:
        self.uri = uri
        self.store = store
        self.resolution, self.frames, self.fps = resolution, frames, fps
        self.index = FolderIndex(uri, store, keys, is_video_key)
        self.class_names = self.index.class_names

    def __len__(self) -> int:
        return len(self.index.media)

    def clip(self, i: int) -> torch.Tensor:
        key = self.index.media[self._check(i)]
        return decode_clip(
            self.store.get_bytes(key),
            frames=self.frames,
            fps=self.fps,
            resolution=self.resolution,
            where=self.store.uri_of(key),
        )

    def caption(self, i: int) -> str:
        return self.index.caption(self._check(i))

    def label(self, i: int) -> int:
        return self.index.labels[self._check(i)]


def is_image_key(key: str) -> bool:
    """Whether a key names an image file (not hidden)."""
    name = PurePosixPath(key).name
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def _sidecar(key: str) -> str:
    return str(PurePosixPath(key).with_suffix(".txt"))
