"""The partition stage: image (or clip) features → balanced two-level k-means → pre-encoded cluster shards.

Writes partition/centroids, assignments and stats.json, then data/ (null-text, each
cluster's shards, info.json; see atoll.trainer.clusterdata) and partition/done.json last.
Idempotent (done.json → return at once) and resumable: the clustering is kept once its
stats.json exists, and clusters are re-encoded only if their index.json is missing.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from atoll import layout
from atoll.errors import AtollError
from atoll.log import get_logger
from atoll.store import Store
from atoll.trainer import clusterdata
from atoll.trainer.clusterdata import ClusterData, ClusterWriter, DataInfo
from atoll.trainer.context import StageContext
from atoll.trainer.data import Dataset, open_dataset
from atoll.trainer.encoders import feature_encoder_for, text_encoder_for, vae_for
from atoll.trainer.heartbeat import Heartbeat
from atoll.trainer.kmeans import Partition, balance, cluster_sizes, two_level_kmeans

log = get_logger(__name__)

SHARD_BYTES = 64 * 2**20
"""Aim for shards of about 64 MiB: few objects, yet small enough to stream."""
ENCODE_BATCH = 64


def run(ctx: StageContext) -> None:
    """Partition the run's dataset into partition.clusters clusters and pre-encode each one."""
    store = ctx.store
    if store.exists(layout.PARTITION_DONE):
        log.info("partition already done", store=store.uri)
        return
    heartbeat = Heartbeat(store, "partition", attempt=ctx.attempt or 1)
    try:
        _partition(ctx, heartbeat)
    except KeyboardInterrupt:
        heartbeat.failed("interrupted")
        raise
    except Exception as error:
        heartbeat.failed(str(error) or type(error).__name__)
        raise


def _partition(ctx: StageContext, heartbeat: Heartbeat) -> None:
    spec, store = ctx.spec, ctx.store
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    heartbeat.running(message="opening dataset", gpu=gpu, gpus=1 if device.type == "cuda" else 0)
    dataset = open_dataset(spec.dataset)
    n, k = len(dataset), spec.partition.clusters
    if k > n:
        raise AtollError(f"partition.clusters ({k}) exceeds the {n} examples of dataset.uri {spec.dataset.uri!r}")
    heartbeat.update(total_steps=2 * n, force=True)

    assignments = _stored_assignments(store, n, k)
    if assignments is None:
        assignments = _cluster(ctx, dataset, device, heartbeat)
    else:
        log.info("resuming: clustering already stored", clusters=k, examples=n)
    _encode(ctx, dataset, assignments, device, heartbeat)


def _cluster(ctx: StageContext, dataset: Dataset, device: torch.device, heartbeat: Heartbeat) -> torch.Tensor:
    """Features, two-level k-means, and the partition/ outputs (stats.json last)."""
    spec, store = ctx.spec, ctx.store
    n = len(dataset)
    started = time.monotonic()
    encoder = feature_encoder_for(
        spec.partition.features, spec.dataset.resolution, str(device), frames=dataset.frames, weights=spec.weights
    )
    batch = max(ENCODE_BATCH, 1024 // dataset.frames) if spec.partition.features == "pixels" else ENCODE_BATCH
    parts = []
    for start in range(0, n, batch):
        indices = list(range(start, min(n, start + batch)))
        parts.append(encoder.encode(dataset.examples(indices)).cpu())
        heartbeat.running(step=indices[-1] + 1, message=f"features {indices[-1] + 1}/{n} ({encoder.name})")
    features = torch.cat(parts)
    del parts
    feature_seconds = time.monotonic() - started

    heartbeat.running(step=n, message=f"k-means: {spec.partition.clusters} clusters over {n} examples", force=True)
    started = time.monotonic()
    p = spec.partition
    partition = two_level_kmeans(
        features,
        p.clusters,
        fine_clusters=p.fine_clusters,
        sample_size=p.sample_size,
        iterations=p.iterations,
        balanced=p.balanced,
        seed=p.seed,
        device=device,
        inplace=True,
    )
    kmeans_seconds = time.monotonic() - started
    _write_partition(store, partition, encoder.name)
    stats = {
        "clusters": partition.clusters,
        "sizes": partition.sizes,
        "balance": partition.balance if math.isfinite(partition.balance) else None,
        "examples": n,
        "features": encoder.name,
        "featureDim": int(features.shape[1]),
        "fineClusters": int(partition.fine_centroids.shape[0]),
        "sampleSize": partition.sample_size,
        "balanced": p.balanced,
        "iterations": p.iterations,
        "seed": p.seed,
        "device": str(device),
        "seconds": {"features": round(feature_seconds, 3), "kmeans": round(kmeans_seconds, 3)},
    }
    store.put_json(layout.PARTITION_STATS, stats)
    log.info("partitioned", sizes=partition.sizes, balance=stats["balance"], seconds=stats["seconds"])
    return partition.assignments


def _write_partition(store: Store, partition: Partition, features: str) -> None:
    centroids = {
        "fine": partition.fine_centroids.contiguous(),
        "coarse": partition.coarse_centroids.contiguous(),
        "fine_to_coarse": partition.fine_to_coarse.contiguous(),
        "mean": partition.mean.contiguous(),
    }
    metadata = {"features": features, "normalisation": "x -> (x - mean) / |x - mean|; cosine similarity"}
    store.put_bytes(layout.PARTITION_CENTROIDS, save_safetensors(centroids, metadata=metadata))
    assignments = {"cluster": partition.assignments.contiguous(), "fine": partition.fine_assignments.contiguous()}
    store.put_bytes(layout.PARTITION_ASSIGNMENTS, save_safetensors(assignments))


def _stored_assignments(store: Store, n: int, k: int) -> torch.Tensor | None:
    """The committed clustering (stats.json exists), checked against this spec; None when absent."""
    if not store.exists(layout.PARTITION_STATS):
        return None
    stats = store.get_json(layout.PARTITION_STATS)
    if stats.get("clusters") != k or stats.get("examples") != n:
        raise AtollError(
            f"{store.uri_of(layout.PARTITION_STATS)} holds a partition into {stats.get('clusters')} clusters of"
            f" {stats.get('examples')} examples, but the spec asks for {k} of {n}: use a fresh store for a changed"
            " partition.clusters or dataset"
        )
    cluster: torch.Tensor = load_safetensors(store.get_bytes(layout.PARTITION_ASSIGNMENTS))["cluster"]
    return cluster


def _encode(
    ctx: StageContext, dataset: Dataset, assignments: torch.Tensor, device: torch.device, heartbeat: Heartbeat
) -> None:
    """Pre-encode every cluster not yet committed, then data/info.json and partition/done.json."""
    spec, store = ctx.spec, ctx.store
    n, k = len(dataset), spec.partition.clusters
    vae = vae_for(spec.dataset.vae, device, weights=spec.weights)
    text_encoder = text_encoder_for(spec.dataset.text_encoder, device, weights=spec.weights)
    latent_shape = vae.latent_shape(spec.dataset.resolution, dataset.frames)
    null_text, null_mask = text_encoder.encode_prompts([""])
    clusterdata.write_null_text(store, null_text, null_mask)
    length, dim = text_encoder.shape
    example_bytes = 4 * math.prod(latent_shape) + 2 * length * dim + length + 16
    shard_size = max(1, min(8192, SHARD_BYTES // example_bytes))

    done, started, encoded = 0, time.monotonic(), 0
    for cluster in range(k):
        members = (assignments == cluster).nonzero().flatten().tolist()
        if clusterdata.cluster_complete(store, cluster):
            done += len(members)
            continue
        clusterdata.clear_cluster(store, cluster)  # a partial cluster from an interrupted attempt
        writer = ClusterWriter(store, cluster, shard_size=shard_size)
        for start in range(0, len(members), ENCODE_BATCH):
            batch = members[start : start + ENCODE_BATCH]
            text, mask = text_encoder.encode_prompts([dataset.caption(i) for i in batch])
            writer.add(
                ClusterData(
                    latents=vae.encode(dataset.examples(batch)).cpu(),
                    text=text.cpu(),
                    text_mask=mask.cpu(),
                    labels=torch.tensor([dataset.label(i) for i in batch], dtype=torch.int64),
                    index=torch.tensor(batch, dtype=torch.int64),
                )
            )
            done += len(batch)
            encoded += len(batch)
            heartbeat.running(
                step=n + done,
                message=f"encoding cluster {cluster + 1}/{k}",
                samples_per_second=encoded / max(1e-9, time.monotonic() - started),
            )
        writer.finish()

    sizes = cluster_sizes(assignments, k)
    info = DataInfo(
        latent_shape=latent_shape,
        text_shape=(length, dim),
        vae=vae.name,
        text_encoder=text_encoder.name,
        resolution=spec.dataset.resolution,
        clusters=k,
        examples=n,
        sizes=tuple(sizes),
        class_names=dataset.class_names,
        class_captions=_class_captions(dataset),
        dataset=spec.dataset.uri,
        frames=dataset.frames,
        fps=spec.dataset.fps if dataset.frames > 1 else None,
        label_factors=dataset.label_factors,
    )
    clusterdata.write_info(store, info)
    summary: dict[str, Any] = {"clusters": k, "examples": n, "sizes": sizes, "balance": balance(sizes)}
    store.put_json(layout.PARTITION_DONE, {**summary, "encodeSeconds": round(time.monotonic() - started, 3)})
    heartbeat.done(step=2 * n, message=f"{k} clusters, sizes {sizes}, balance {summary['balance']:.3f}")


def _class_captions(dataset: Dataset) -> dict[int, str]:
    """The first example's caption of every class label (for evaluation prompts)."""
    if not dataset.class_names:
        return {}
    captions: dict[int, str] = {}
    for i in range(len(dataset)):
        label = dataset.label(i)
        if label >= 0 and label not in captions:
            captions[label] = dataset.caption(i)
            if len(captions) == len(dataset.class_names):
                break
    return captions
