"""WebDataset-style tar shards (`*.tar` of key.{png,jpg,…} or key.{mp4,gif,…} + key.txt [+ key.cls]) from any store.

Shards in a local directory are read in place; shards in s3:// are downloaded once into a
temporary directory that lives as long as the dataset. Opening a dataset indexes every
shard (member offsets, captions, labels); images and clips are decoded on demand by
seeking into the shard. Examples come shard by shard (shards sorted by key), in member order.
"""

from __future__ import annotations

import shutil
import tarfile
import tempfile
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import torch

from atoll.log import get_logger
from atoll.store import LocalStore, Store
from atoll.trainer.data.base import IMAGE_EXTENSIONS, DatasetError, ImageDataset, decode_image
from atoll.trainer.data.clips import VIDEO_EXTENSIONS, VideoDataset, decode_clip

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class _Example:
    shard: Path
    key: str
    offset: int
    size: int
    caption: str
    label: int


class ShardIndex:
    """Where every example of a list of tar shards lies: shard, member offset and size, caption, label."""

    def __init__(self, store: Store, shard_keys: Sequence[str], extensions: Sequence[str]) -> None:
        self._downloads: Path | None = None
        self.examples: list[_Example] = []
        for shard_key in sorted(shard_keys):
            self.examples.extend(_index_shard(self._local_path(store, shard_key), store.uri_of(shard_key), extensions))
        labels = [e.label for e in self.examples]
        self.class_names = tuple(str(c) for c in range(max(labels) + 1)) if labels and max(labels) >= 0 else ()

    def _local_path(self, store: Store, key: str) -> Path:
        if isinstance(store, LocalStore):
            return store.root / key
        if self._downloads is None:
            self._downloads = Path(tempfile.mkdtemp(prefix="atoll-shards-"))
            weakref.finalize(self, shutil.rmtree, self._downloads, ignore_errors=True)
        path = self._downloads / key.replace("/", "__")
        store.get_file(key, path)
        return path

    def read(self, i: int) -> tuple[bytes, str]:
        """Example i's media bytes and a description of where they are (for errors)."""
        example = self.examples[i]
        with example.shard.open("rb") as handle:
            handle.seek(example.offset)
            return handle.read(example.size), f"{example.key} in {example.shard.name}"


class TarShardDataset(ImageDataset):
    """The images of a list of tar shards in one store."""

    def __init__(self, uri: str, store: Store, shard_keys: Sequence[str], resolution: int) -> None:
        self.uri = uri
        self.resolution = resolution
        self.index = ShardIndex(store, shard_keys, IMAGE_EXTENSIONS)
        self.class_names = self.index.class_names

    def __len__(self) -> int:
        return len(self.index.examples)

    def image(self, i: int) -> torch.Tensor:
        data, where = self.index.read(self._check(i))
        return decode_image(data, self.resolution, where)

    def caption(self, i: int) -> str:
        return self.index.examples[self._check(i)].caption

    def label(self, i: int) -> int:
        return self.index.examples[self._check(i)].label


class TarVideoDataset(VideoDataset):
    """The video clips of a list of tar shards in one store."""

    def __init__(
        self, uri: str, store: Store, shard_keys: Sequence[str], resolution: int, *, frames: int, fps: float
    ) -> None:
        self.uri = uri
        self.resolution, self.frames, self.fps = resolution, frames, fps
        self.index = ShardIndex(store, shard_keys, VIDEO_EXTENSIONS)
        self.class_names = self.index.class_names

    def __len__(self) -> int:
        return len(self.index.examples)

    def clip(self, i: int) -> torch.Tensor:
        data, where = self.index.read(self._check(i))
        return decode_clip(data, frames=self.frames, fps=self.fps, resolution=self.resolution, where=where)

    def caption(self, i: int) -> str:
        return self.index.examples[self._check(i)].caption

    def label(self, i: int) -> int:
        return self.index.examples[self._check(i)].label


def _index_shard(path: Path, where: str, extensions: Sequence[str]) -> list[_Example]:
    """One pass over a shard: group members by WebDataset key (basename up to its first '.')."""
    groups: dict[str, dict[str, tarfile.TarInfo]] = {}
    try:
        with tarfile.open(path, "r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                member_path = PurePosixPath(member.name)
                stem, dot, ext = member_path.name.partition(".")
                if not dot or stem.startswith("."):
                    continue
                groups.setdefault(str(member_path.parent / stem), {})[ext.lower()] = member
            examples = []
            no_media = 0
            for key, members in groups.items():
                image = next((members[e] for e in (x.lstrip(".") for x in extensions) if e in members), None)
                if image is None:
                    no_media += 1
                    continue
                examples.append(
                    _Example(
                        shard=path,
                        key=key,
                        offset=image.offset_data,
                        size=image.size,
                        caption=_text(tar, members.get("txt")),
                        label=_label(tar, members.get("cls"), f"{key}.cls in {where}"),
                    )
                )
    except (tarfile.TarError, OSError) as error:
        raise DatasetError(f"cannot read tar shard {where}: {error}") from None
    if no_media:
        log.warning("tar samples without an image or video of the kind wanted are skipped", shard=where, count=no_media)
    return examples


def _text(tar: tarfile.TarFile, member: tarfile.TarInfo | None) -> str:
    if member is None:
        return ""
    handle = tar.extractfile(member)
    return "" if handle is None else handle.read().decode("utf-8", errors="replace").strip()


def _label(tar: tarfile.TarFile, member: tarfile.TarInfo | None, where: str) -> int:
    text = _text(tar, member)
    if not text:
        return -1
    try:
        label = int(text)
    except ValueError:
        raise DatasetError(f"{where} must hold a non-negative integer class label, not {text[:40]!r}") from None
    if label < 0:
        raise DatasetError(f"{where} must hold a non-negative integer class label, not {label}")
    return label
