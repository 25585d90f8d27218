"""Datasets: `open_dataset(spec.dataset)` → an ImageDataset of images, captions and labels.

Sources: builtin://digits, builtin://shapes, a folder of images with .txt sidecars, and
WebDataset-style .tar shards, each local (path or file://) or in s3:// through atoll.store.
Example i is the same in every process. Opening never downloads from the internet.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from atoll.api.spec import DatasetSpec
from atoll.store import Store, StoreError, open_store
from atoll.trainer.data.base import DatasetError, DatasetUnreachableError, ImageDataset, Limited
from atoll.trainer.data.builtin import COLOURS, SHAPES, DigitsDataset, ShapeFactors, ShapesDataset
from atoll.trainer.data.folder import FolderDataset, is_image_key
from atoll.trainer.data.webdataset import TarShardDataset

__all__ = [
    "COLOURS",
    "SHAPES",
    "DatasetError",
    "DigitsDataset",
    "FolderDataset",
    "ImageDataset",
    "ShapeFactors",
    "ShapesDataset",
    "TarShardDataset",
    "open_dataset",
]


def open_dataset(spec: DatasetSpec, store_opener: Callable[[str], Store] = open_store) -> ImageDataset:
    """The dataset spec.uri names, at spec.resolution, limited to spec.maxExamples."""
    dataset = _open(spec, store_opener)
    if len(dataset) == 0:
        raise DatasetError(f"dataset.uri {spec.uri!r} holds no examples")
    if spec.max_examples is not None and spec.max_examples < len(dataset):
        return Limited(dataset, spec.max_examples)
    return dataset


def _open(spec: DatasetSpec, store_opener: Callable[[str], Store]) -> ImageDataset:
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
        return TarShardDataset(uri, store, [name], spec.resolution)
    shards = [k for k in keys if k.endswith(".tar")]
    if shards:  # shards win over loose images (e.g. a preview next to the shards)
        return TarShardDataset(uri, store, shards, spec.resolution)
    if any(is_image_key(k) for k in keys):
        return FolderDataset(uri, store, keys, spec.resolution)
    if not keys:
        raise DatasetError(f"dataset.uri {uri!r} does not exist or is empty")
    raise DatasetError(f"dataset.uri {uri!r} holds no images (.png, .jpg, .jpeg, .webp) and no .tar shards")


def _open_builtin(spec: DatasetSpec) -> ImageDataset:
    name = spec.uri[len("builtin://") :]
    if name == "digits":
        return DigitsDataset(spec.resolution)
    if name == "shapes":
        return ShapesDataset(spec.resolution, spec.seed)
    raise DatasetError(f"dataset.uri {spec.uri!r}: unknown built-in dataset (builtin://digits, builtin://shapes)")
