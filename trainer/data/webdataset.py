"""WebDataset-style tar shards (`*.tar` of key.{png,jpg,…} or key.{mp4,gif,…} + key.txt [+ key.cls]) from any store.

Shards in a local directory are read in place; shards in s3:// are downloaded once into a
temporary directory that lives as long as the dataset. Opening a dataset indexes every
shard into flat arrays (member offsets and sizes, labels: about 40 bytes per example, so
millions of examples index in tens of MB); images, clips and captions are read on demand by
seeking into the shard. Examples come shard by shard (shards sorted by key), in member order.
"""

from __future__ import annotations

import shutil
import tarfile
import tempfile
import weakref
from array import array
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

import torch

from atoll.log import get_logger
from atoll.store import LocalStore, Store
from atoll.trainer.data.base import IMAGE_EXTENSIONS, DatasetError, ImageDataset, decode_image
from atoll.trainer.data.clips import VIDEO_EXTENSIONS, VideoDataset, decode_clip

log = get_logger(__name__)


class ShardIndex:
    """Where every example of a list of tar shards lies, in flat arrays: shard, media and caption
    member (offset, size), label. `extensions` names the media kept (images or videos)."""

    def __init__(self, store: Store, shard_keys: Sequence[str], extensions: Sequence[str]) -> None:
        self._downloads: Path | None = None
        self._extensions = tuple(x.lstrip(".") for x in extensions)
        self._shards: list[Path] = []
        self._shard = array("i")
        self._media = array("q")  # offset, size, offset, size, …
        self._caption = array("q")  # offset, size (-1: no caption)
        self._label = array("q")
        for shard_key in sorted(shard_keys):
            self._index_shard(self._local_path(store, shard_key), store.uri_of(shard_key))
        top = max(self._label, default=-1)
        self.class_names = tuple(str(c) for c in range(top + 1)) if top >= 0 else ()

    def _local_path(self, store: Store, key: str) -> Path:
        if isinstance(store, LocalStore):
            return store.root / key
        if self._downloads is None:
            self._downloads = Path(tempfile.mkdtemp(prefix="atoll-shards-"))
            weakref.finalize(self, shutil.rmtree, self._downloads, ignore_errors=True)
        path = self._downloads / key.replace("/", "__")
        store.get_file(key, path)
        return path

    def __len__(self) -> int:
        return len(self._label)

    def read(self, i: int) -> tuple[bytes, str]:
        """Example i's media bytes and a description of where they are (for errors)."""
        shard = self._shards[self._shard[i]]
        offset = self._media[2 * i]
        return _read(
            shard, offset, self._media[2 * i + 1]
        ), f"example {i} (member data at byte {offset}) in {shard.name}"

    def caption(self, i: int) -> str:
        offset, size = self._caption[2 * i], self._caption[2 * i + 1]
        if size < 0:
            return ""
        return _read(self._shards[self._shard[i]], offset, size).decode("utf-8", errors="replace").strip()

    def label(self, i: int) -> int:
        return self._label[i]

    def _index_shard(self, path: Path, where: str) -> None:
        """One pass over a shard: group members by WebDataset key (basename up to its first '.')."""
        groups: dict[str, dict[str, tarfile.TarInfo]] = {}
        number = len(self._shards)
        self._shards.append(path)
        no_media = 0
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
                tar.members = []  # type: ignore[attr-defined]  # `groups` holds them; no second list
                for key, members in groups.items():
                    media = next((members[e] for e in self._extensions if e in members), None)
                    if media is None:
                        no_media += 1
                        continue
                    text = members.get("txt")
                    self._shard.append(number)
                    self._media.extend((media.offset_data, media.size))
                    self._caption.extend((text.offset_data, text.size) if text is not None else (0, -1))
                    self._label.append(_label(tar, members.get("cls"), f"{key}.cls in {where}"))
        except (tarfile.TarError, OSError) as error:
            raise DatasetError(f"cannot read tar shard {where}: {error}") from None
        if no_media:
            log.warning(
                "tar samples without an image or video of the kind wanted are skipped", shard=where, count=no_media
            )


class TarShardDataset(ImageDataset):
    """The images of a list of tar shards in one store."""

    def __init__(self, uri: str, store: Store, shard_keys: Sequence[str], resolution: int) -> None:
        self.uri = uri
        self.resolution = resolution
        self.index = ShardIndex(store, shard_keys, IMAGE_EXTENSIONS)
        self.class_names = self.index.class_names

    def __len__(self) -> int:
        return len(self.index)

    def image(self, i: int) -> torch.Tensor:
        data, where = self.index.read(self._check(i))
        return decode_image(data, self.resolution, where)

    def caption(self, i: int) -> str:
        return self.index.caption(self._check(i))

    def label(self, i: int) -> int:
        return self.index.label(self._check(i))


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
        return len(self.index)

    def clip(self, i: int) -> torch.Tensor:
        data, where = self.index.read(self._check(i))
        return decode_clip(data, frames=self.frames, fps=self.fps, resolution=self.resolution, where=where)

    def caption(self, i: int) -> str:
        return self.index.caption(self._check(i))

    def label(self, i: int) -> int:
        return self.index.label(self._check(i))


def _read(path: Path, offset: int, size: int) -> bytes:
    with path.open("rb") as handle:
        handle.seek(offset)
        return handle.read(size)


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
