"""Datasets: `open_dataset(spec.dataset)` → a Dataset of images (or clips), captions and labels.

Sources: builtin://digits, builtin://shapes, builtin://moving-digits, builtin://moving-shapes
(and their bouncing- variants), a folder of images or videos with .txt sidecars, and WebDataset-style .tar shards, each
local (path or file://) or in s3:// through atoll.store. dataset.frames decides whether
examples are images (1) or clips (more). Example i is the same in every process. Opening
never downloads from the internet.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from atoll.api.spec import DatasetSpec, builtin_name
from atoll.store import Store, StoreError, open_store
from atoll.trainer.data.base import Dataset, DatasetError, DatasetUnreachableError, ImageDataset, Limited
from atoll.trainer.data.builtin import COLOURS, SHAPES, DigitsDataset, ShapeFactors, ShapesDataset
from atoll.trainer.data.clips import VideoDataset, is_video_key
from atoll.trainer.data.folder import FolderDataset, VideoFolderDataset, is_image_key
from atoll.trainer.data.moving import MovingDigitsDataset, MovingShapesDataset
from atoll.trainer.data.webdataset import TarShardDataset, TarVideoDataset

__all__ = [
    "COLOURS",
    "SHAPES",
    "Dataset",
    "DatasetError",
    "DigitsDataset",
    "FolderDataset",
    "ImageDataset",
    "MovingDigitsDataset",
    "MovingShapesDataset",
    "ShapeFactors",
    "ShapesDataset",
    "TarShardDataset",
    "TarVideoDataset",
    "VideoDataset",
    "VideoFolderDataset",
    "open_dataset",
]

BOUNCING_SHARE = 0.5
"""Share of the moving clips that bounce off the walls in builtin://bouncing-digits and bouncing-shapes."""


def open_dataset(spec: DatasetSpec, store_opener: Callable[[str], Store] = open_store) -> Dataset:
    """The dataset spec.uri names, at spec.resolution (and spec.frames, spec.fps), limited to spec.maxExamples."""
    dataset = _open(spec, store_opener)
    if len(dataset) == 0:
        raise DatasetError(f"dataset.uri {spec.uri!r} holds no examples")
    if spec.max_examples is not None and spec.max_examples < len(dataset):
        return Limited(dataset, spec.max_examples)
    return dataset


def _open(spec: DatasetSpec, store_opener: Callable[[str], Store]) -> Dataset:
    uri = spec.uri
    if uri.startswith("builtin://"):
        return _open_builtin(spec)
    single_shard = uri.endswith(".tar")
    if uri.startswith("s3://"):
        root = uri.rsplit("/", 1)[0] if single_shard else uri
    else:
        path = Path(uri.removeprefix("file://")).expanduser()
        if not path.exists():
            raise DatasetError(f"dataset.uri {uri!r} does not exist")
        if path.is_file() and not single_shard:
            raise DatasetError(f"dataset.uri {uri!r} is a file but not a .tar shard; give a folder or a .tar file")
        root = str(path.parent if single_shard else path)
    try:
        store = store_opener(root)
        keys = [info.key for info in store.list_objects("")]
    except StoreError as error:
        raise DatasetUnreachableError(f"dataset.uri {uri!r} cannot be read: {error}") from None
    if single_shard:
        name = uri.rsplit("/", 1)[-1]
        if name not in keys:
            raise DatasetError(f"dataset.uri {uri!r} does not exist")
        return _shards(spec, store, [name])
    shards = [k for k in keys if k.endswith(".tar")]
    if shards:  # shards win over loose files (e.g. a preview next to the shards)
        return _shards(spec, store, shards)
    return _folder(spec, store, keys)


def _folder(spec: DatasetSpec, store: Store, keys: list[str]) -> Dataset:
    """The images (frames = 1) or videos (frames > 1) of a folder, or why there are none to use."""
    uri = spec.uri
    videos, images = any(is_video_key(k) for k in keys), any(is_image_key(k) for k in keys)
    if spec.video and videos:
        return VideoFolderDataset(uri, store, keys, spec.resolution, frames=spec.frames, fps=spec.fps)
    if not spec.video and images:
        return FolderDataset(uri, store, keys, spec.resolution)
    if not keys:
        raise DatasetError(f"dataset.uri {uri!r} does not exist or is empty")
    if spec.video:
        raise DatasetError(
            f"dataset.uri {uri!r} holds no videos (.mp4, .gif, .webm, .mov, .mkv, .avi) and no .tar shards"
            + (" but images: set dataset.frames to 1 to train on them" if images else "")
        )
    raise DatasetError(
        f"dataset.uri {uri!r} holds no images (.png, .jpg, .jpeg, .webp) and no .tar shards"
        + (" but videos: set dataset.frames above 1 to train on clips" if videos else "")
    )


def _shards(spec: DatasetSpec, store: Store, shards: list[str]) -> Dataset:
    if spec.video:
        return TarVideoDataset(spec.uri, store, shards, spec.resolution, frames=spec.frames, fps=spec.fps)
    return TarShardDataset(spec.uri, store, shards, spec.resolution)


def _open_builtin(spec: DatasetSpec) -> Dataset:
    name = builtin_name(spec.uri)
    if name == "digits":
        return DigitsDataset(spec.resolution)
    if name == "shapes":
        return ShapesDataset(spec.resolution, spec.seed)
    bounce = BOUNCING_SHARE if name in ("bouncing-digits", "bouncing-shapes") else 0.0
    if name in ("moving-digits", "bouncing-digits"):
        return MovingDigitsDataset(spec.resolution, spec.frames, spec.fps, spec.seed, bounce=bounce)
    if name in ("moving-shapes", "bouncing-shapes"):
        return MovingShapesDataset(spec.resolution, spec.frames, spec.fps, spec.seed, bounce=bounce)
    raise DatasetError(
        f"dataset.uri {spec.uri!r}: unknown built-in dataset (builtin://digits, builtin://shapes,"
        " builtin://moving-digits, builtin://moving-shapes, builtin://bouncing-digits, builtin://bouncing-shapes)"
    )
