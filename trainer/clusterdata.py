"""Writer and reader of the pre-encoded cluster shards (the `data/` contract of docs/architecture.md).

The partition stage writes them; expert, router and evaluate stages read them. Layout, keys
relative to the run's store:

    data/info.json                         DataInfo (camelCase)
    data/null-text.safetensors             {"text": [1, L, D] float16, "text_mask": [1, L] bool}
    data/cluster-<k>/shard-<nnnnn>.safetensors
        latents [m, C, H, W] (images) or [m, C, T, H, W] (clips) float32 · text [m, L, D] float16 ·
        text_mask [m, L] bool · labels [m] int64 (-1: unknown) · index [m] int64 (example id)
    data/cluster-<k>/index.json            {"examples": n, "shards": [{"key": ..., "examples": m}]}

A cluster's `index.json` is written after all its shards, so it is the cluster's commit
marker: a cluster without one is partial and is rewritten on resume. `info.json` is
written after every cluster. Training streams the shards (`cluster_shards` lists them,
atoll.trainer.shardfiles reads row ranges, atoll.trainer.training.stream orders them);
`read_cluster` and `read_all_clusters` load whole clusters for evaluation and tests.
This module only moves tensors: it never encodes or trains.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from safetensors.torch import save_file

from atoll import layout
from atoll.errors import AtollError
from atoll.store import NotFoundError, Store, join_key

INFO = join_key(layout.DATA, "info.json")
SHARD_TENSORS = ("latents", "text", "text_mask", "labels", "index")


class ClusterDataError(AtollError):
    """The pre-encoded data is missing or does not follow the contract."""


@dataclass(frozen=True, kw_only=True)
class DataInfo:
    """data/info.json: the shapes and encoders every consumer of the shards must agree on."""

    latent_shape: tuple[int, ...]
    """[C, H, W] of one image latent or [C, T, H, W] of a clip's (the VAE's scaled latent, or the
    pixels themselves for identity)."""
    text_shape: tuple[int, int]
    """[L, D]: caption tokens and embedding width."""
    vae: str
    """VAE name from dataset.vae (identity, sd-vae-ft-mse)."""
    text_encoder: str
    """Text encoder name from dataset.textEncoder (hashed-bow, clip-vitl14)."""
    resolution: int
    """Image side in pixels."""
    clusters: int
    """K."""
    examples: int
    """Examples over all clusters."""
    sizes: tuple[int, ...]
    """Examples per cluster."""
    class_names: tuple[str, ...] = ()
    """Names of the class labels (labels index into this); empty when the data has none."""
    class_captions: dict[int, str] = field(default_factory=dict)
    """One real caption per class label (the first example's), for evaluation prompts."""
    dataset: str = ""
    """dataset.uri the shards were encoded from."""
    frames: int = 1
    """Frames per example (dataset.frames): 1 for images."""
    fps: float | None = None
    """Frames per second of the clips (video only)."""
    label_factors: tuple[tuple[str, int], ...] = ()
    """Factors the class label combines (e.g. digit × direction), most significant first; see
    atoll.trainer.data.base.Dataset.label_factors."""

    @property
    def video(self) -> bool:
        """Whether the examples are clips."""
        return self.frames > 1

    def to_json(self) -> dict[str, Any]:
        """The camelCase document stored as data/info.json."""
        return {
            "latentShape": list(self.latent_shape),
            "textShape": list(self.text_shape),
            "vae": self.vae,
            "textEncoder": self.text_encoder,
            "resolution": self.resolution,
            "clusters": self.clusters,
            "examples": self.examples,
            "sizes": list(self.sizes),
            "classNames": list(self.class_names),
            "classCaptions": {str(k): v for k, v in sorted(self.class_captions.items())},
            "dataset": self.dataset,
            "frames": self.frames,
            "fps": self.fps,
            "labelFactors": [[name, size] for name, size in self.label_factors],
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> DataInfo:
        """Parse data/info.json."""
        try:
            latent_shape = tuple(int(v) for v in doc["latentShape"])
            if len(latent_shape) not in (3, 4):
                raise ValueError(f"latentShape {list(latent_shape)} is neither [C, H, W] nor [C, T, H, W]")
            length, dim = (int(v) for v in doc["textShape"])
            return cls(
                latent_shape=latent_shape,
                text_shape=(length, dim),
                vae=str(doc["vae"]),
                text_encoder=str(doc["textEncoder"]),
                resolution=int(doc["resolution"]),
                clusters=int(doc["clusters"]),
                examples=int(doc["examples"]),
                sizes=tuple(int(s) for s in doc["sizes"]),
                class_names=tuple(str(n) for n in doc.get("classNames", [])),
                class_captions={int(k): str(v) for k, v in doc.get("classCaptions", {}).items()},
                dataset=str(doc.get("dataset", "")),
                frames=int(doc.get("frames", 1)),
                fps=None if doc.get("fps") is None else float(doc["fps"]),
                label_factors=tuple((str(name), int(size)) for name, size in doc.get("labelFactors", [])),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise ClusterDataError(f"{INFO} does not follow the data contract: {error!r}") from None


@dataclass(frozen=True)
class ClusterData:
    """Pre-encoded examples (one cluster, or several concatenated), as stored."""

    latents: torch.Tensor
    """[n, C, H, W] or [n, C, T, H, W] float32."""
    text: torch.Tensor
    """[n, L, D] float16 as stored (cast with `.float()` before use)."""
    text_mask: torch.Tensor
    """[n, L] bool: True where a caption token is present."""
    labels: torch.Tensor
    """[n] int64 class label, -1 when unknown."""
    index: torch.Tensor
    """[n] int64 example id (position in the dataset's fixed order)."""

    def __len__(self) -> int:
        return int(self.latents.shape[0])

    def tensors(self) -> dict[str, torch.Tensor]:
        """The five tensors by their shard names."""
        return {name: getattr(self, name) for name in SHARD_TENSORS}

    @classmethod
    def concat(cls, parts: list[ClusterData]) -> ClusterData:
        """Concatenate along the example axis (at least one part)."""
        if not parts:
            raise ValueError("nothing to concatenate")
        return cls(**{name: torch.cat([getattr(p, name) for p in parts]) for name in SHARD_TENSORS})


@dataclass(frozen=True, slots=True)
class ShardRef:
    """One committed shard of a cluster, as its index.json lists it."""

    key: str
    examples: int


def shard_key(k: int, shard: int) -> str:
    """Key of cluster k's shard number `shard`."""
    return join_key(layout.cluster_data(k), f"shard-{shard:05d}.safetensors")


def cluster_index_key(k: int) -> str:
    """Key of cluster k's index.json (its commit marker)."""
    return join_key(layout.cluster_data(k), "index.json")


STORED_DTYPES = {
    "latents": torch.float32,
    "text": torch.float16,
    "text_mask": torch.bool,
    "labels": torch.int64,
    "index": torch.int64,
}
"""How each shard tensor is stored."""


class ClusterWriter:
    """Writes one cluster's shards as examples arrive; `finish()` commits the cluster.

    Call `add` with batches in any size; every `shard_size` examples become one shard. The
    examples wait in one preallocated shard-sized buffer, so a writer holds at most one
    shard (and its serialised bytes while it is written), whatever the cluster's size.
    Nothing is committed until `finish` writes index.json, so an interrupted writer leaves a
    partial cluster that `cluster_complete` reports as absent (`clear_cluster` removes it).
    """

    def __init__(self, store: Store, k: int, *, shard_size: int = 1024) -> None:
        if shard_size < 1:
            raise ValueError("shard_size must be at least 1")
        self.store = store
        self.k = k
        self.shard_size = shard_size
        self._buffer: dict[str, torch.Tensor] = {}
        self._filled = 0
        self._shards: list[dict[str, Any]] = []
        self._examples = 0

    def add(self, batch: ClusterData) -> None:
        """Buffer a batch, writing full shards as they fill up."""
        _check_batch(batch)
        rows = {name: t.detach().to("cpu", STORED_DTYPES[name]) for name, t in batch.tensors().items()}
        if not self._buffer:
            self._buffer = {
                name: torch.empty((self.shard_size, *t.shape[1:]), dtype=t.dtype) for name, t in rows.items()
            }
        for name, tensor in rows.items():
            if tensor.shape[1:] != self._buffer[name].shape[1:]:
                raise ValueError(
                    f"{name} rows are {list(tensor.shape[1:])}, earlier ones were {list(self._buffer[name].shape[1:])}"
                )
        at, n = 0, len(batch)
        while at < n:
            take = min(n - at, self.shard_size - self._filled)
            for name, tensor in rows.items():
                self._buffer[name][self._filled : self._filled + take] = tensor[at : at + take]
            self._filled += take
            at += take
            if self._filled == self.shard_size:
                self._write_shard()

    def finish(self) -> int:
        """Write the remaining shard and index.json; returns the cluster's example count."""
        if self._filled:
            self._write_shard()
        self._buffer = {}
        self.store.put_json(cluster_index_key(self.k), {"examples": self._examples, "shards": self._shards})
        return self._examples

    def _write_shard(self) -> None:
        key = shard_key(self.k, len(self._shards))
        tensors = {name: buffer[: self._filled] for name, buffer in self._buffer.items()}
        # Through a local file, not bytes in memory: the shard is never held twice.
        with tempfile.TemporaryDirectory(prefix="atoll-shard-") as scratch:
            path = Path(scratch) / "shard.safetensors"
            save_file(tensors, str(path))
            self.store.put_file(key, path)
        self._shards.append({"key": key, "examples": self._filled})
        self._examples += self._filled
        self._filled = 0


def _check_batch(batch: ClusterData) -> None:
    n = len(batch)
    for name, tensor in batch.tensors().items():
        if tensor.shape[0] != n:
            raise ValueError(f"{name} has {tensor.shape[0]} rows, latents {n}")
    if batch.latents.ndim not in (4, 5) or batch.text.ndim != 3 or batch.text_mask.shape != batch.text.shape[:2]:
        raise ValueError(
            f"bad shard shapes: latents {tuple(batch.latents.shape)}, text {tuple(batch.text.shape)},"
            f" text_mask {tuple(batch.text_mask.shape)}"
        )


def cluster_complete(store: Store, k: int) -> bool:
    """Whether cluster k was committed (its index.json exists)."""
    return store.exists(cluster_index_key(k))


def clear_cluster(store: Store, k: int) -> None:
    """Remove every object of cluster k (a partial cluster before it is rewritten)."""
    store.delete_prefix(layout.cluster_data(k) + "/")


def write_info(store: Store, info: DataInfo) -> None:
    """Write data/info.json (after every cluster is committed)."""
    store.put_json(INFO, info.to_json())


def read_info(store: Store) -> DataInfo:
    """Read data/info.json; a clear error when the partition stage has not finished."""
    try:
        doc = store.get_json(INFO)
    except NotFoundError:
        raise ClusterDataError(
            f"{store.uri_of(INFO)} is missing: run the partition stage first (it pre-encodes the data)"
        ) from None
    return DataInfo.from_json(doc)


def write_null_text(store: Store, text: torch.Tensor, text_mask: torch.Tensor) -> None:
    """Write data/null-text.safetensors: the empty caption's embedding [1, L, D] and mask [1, L]."""
    tensors = {
        "text": text.detach().to("cpu", torch.float16).reshape(1, *text.shape[-2:]).contiguous(),
        "text_mask": text_mask.detach().to("cpu", torch.bool).reshape(1, text_mask.shape[-1]).contiguous(),
    }
    store.put_bytes(layout.NULL_TEXT, save_safetensors(tensors))


def read_null_text(store: Store) -> tuple[torch.Tensor, torch.Tensor]:
    """The empty caption: (text [1, L, D] float16, text_mask [1, L] bool)."""
    tensors = _load(store, layout.NULL_TEXT)
    return tensors["text"], tensors["text_mask"]


def cluster_shards(store: Store, k: int) -> list[ShardRef]:
    """Cluster k's shards in order, from its index.json (a clear error when it was not committed)."""
    key = cluster_index_key(k)
    try:
        index = store.get_json(key)
    except NotFoundError:
        raise ClusterDataError(
            f"{store.uri_of(key)} is missing: cluster {k} was not pre-encoded"
            " (run the partition stage, and check partition.clusters)"
        ) from None
    prefix = layout.cluster_data(k) + "/"
    try:
        shards = [ShardRef(key=str(s["key"]), examples=int(s["examples"])) for s in index["shards"]]
        examples = int(index["examples"])
    except (KeyError, TypeError, ValueError) as error:
        raise ClusterDataError(f"{store.uri_of(key)} does not follow the data contract: {error!r}") from None
    for shard in shards:
        rest = shard.key.removeprefix(prefix)
        if rest == shard.key or "/" in rest or rest in ("", ".", "..") or shard.examples < 0:
            raise ClusterDataError(f"{store.uri_of(key)} lists {shard.key!r}, which is not a shard of cluster {k}")
    if sum(s.examples for s in shards) != examples:
        raise ClusterDataError(
            f"{store.uri_of(key)} says {examples} examples but its shards hold {sum(s.examples for s in shards)}"
        )
    return shards


def iter_cluster_shards(store: Store, k: int) -> Iterator[ClusterData]:
    """Cluster k's shards one at a time, in order, each wholly in memory."""
    for shard in cluster_shards(store, k):
        tensors = _load(store, shard.key)
        missing = [name for name in SHARD_TENSORS if name not in tensors]
        if missing:
            raise ClusterDataError(f"{store.uri_of(shard.key)} lacks tensors {missing}")
        data = ClusterData(**{name: tensors[name] for name in SHARD_TENSORS})
        if len(data) != shard.examples:
            raise ClusterDataError(
                f"{store.uri_of(shard.key)} holds {len(data)} examples, index.json says {shard.examples}"
            )
        yield data


def read_cluster(store: Store, k: int) -> ClusterData:
    """All of cluster k's examples in memory (shards concatenated in order)."""
    parts = list(iter_cluster_shards(store, k))
    if not parts:
        raise ClusterDataError(f"cluster {k} in {store.uri} has no examples")
    return ClusterData.concat(parts)


def read_all_clusters(store: Store) -> tuple[ClusterData, torch.Tensor]:
    """Every example of every cluster (the router's data) and its cluster label [n] int64.

    Examples come cluster by cluster; each cluster appears in proportion to its size, which
    is how the router learns the prior π_k.
    """
    info = read_info(store)
    parts = [read_cluster(store, k) for k in range(info.clusters)]
    labels = torch.cat([torch.full((len(p),), k, dtype=torch.int64) for k, p in enumerate(parts)])
    return ClusterData.concat(parts), labels


def _load(store: Store, key: str) -> dict[str, torch.Tensor]:
    try:
        data = store.get_bytes(key)
    except NotFoundError:
        raise ClusterDataError(f"{store.uri_of(key)} is missing: run the partition stage first") from None
    try:
        return load_safetensors(data)
    except Exception as error:  # safetensors raises its own SafetensorError for torn files
        raise ClusterDataError(f"{store.uri_of(key)} is not a readable safetensors file: {error}") from None
