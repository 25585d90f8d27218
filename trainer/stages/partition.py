"""The partition stage: image (or clip) features → balanced two-level k-means → pre-encoded cluster shards.

Features stream: the fine clusters are fitted on the features of a sample
(partition.sampleSize), then every example's features are computed and assigned to their
nearest fine centroid batch by batch, so memory is bounded by the sample, never by the
dataset (only one int64 per example is kept: its cluster). Encoding streams too: each
cluster's examples are encoded batch by batch and written as shards fill. Writes
partition/centroids, assignments and stats.json, then data/ (null-text, each cluster's
shards, info.json; see atoll.trainer.clusterdata) and partition/done.json last. Idempotent
(done.json → return at once) and resumable: the clustering is kept once its stats.json
exists, and clusters are re-encoded only if their index.json is missing.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from typing import Any

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from atoll import layout
from atoll.errors import BadInputError
from atoll.log import get_logger
from atoll.stages import StageJob, is_done
from atoll.store import Store
from atoll.trainer import clusterdata, kmeans
from atoll.trainer.clusterdata import ClusterData, ClusterWriter, DataInfo
from atoll.trainer.context import StageContext
from atoll.trainer.data import Dataset, open_dataset
from atoll.trainer.encoders import FeatureEncoder, feature_encoder_for, text_encoder_for, vae_for
from atoll.trainer.fence import write_done
from atoll.trainer.heartbeat import Heartbeat
from atoll.trainer.kmeans import Partition, balance, cluster_sizes
from atoll.trainer.training.distributed import configure_threads

log = get_logger(__name__)

SHARD_BYTES = 16 * 2**20
"""Aim for shards of about 16 MiB: few objects, yet each cluster's writer holds only one shard."""
ENCODE_BATCH = 64
JOB = StageJob("partition")


def run(ctx: StageContext) -> None:
    """Partition the run's dataset into partition.clusters clusters and pre-encode each one."""
    configure_threads()  # the pod's CPU limit, or the local runtime's share of the cores
    store = ctx.store
    if is_done(store, JOB):
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
        raise BadInputError(f"partition.clusters ({k}) exceeds the {n} examples of dataset.uri {spec.dataset.uri!r}")
    heartbeat.update(total_steps=_work(n, spec.partition.sample_size), force=True)

    assignments = _stored_assignments(store, n, k)
    if assignments is None:
        assignments = _cluster(ctx, dataset, device, heartbeat)
    else:
        log.info("resuming: clustering already stored", clusters=k, examples=n)
    _encode(ctx, dataset, assignments, device, heartbeat)


def _work(n: int, sample_size: int) -> int:
    """Examples the stage handles in all: the sample's features, every example's (unless the
    sample is all of them), every example's encoding."""
    return min(n, sample_size) + (n if sample_size < n else 0) + n


def _cluster(ctx: StageContext, dataset: Dataset, device: torch.device, heartbeat: Heartbeat) -> torch.Tensor:
    """Features of a sample → fine clusters; every example's features → its fine cluster;
    coarse clusters; the partition/ outputs (stats.json last)."""
    spec, store = ctx.spec, ctx.store
    p = spec.partition
    n = len(dataset)
    encoder = feature_encoder_for(
        p.features, spec.dataset.resolution, str(device), frames=dataset.frames, weights=spec.weights
    )
    batch = max(ENCODE_BATCH, 1024 // dataset.frames) if p.features == "pixels" else ENCODE_BATCH
    generator = torch.Generator().manual_seed(p.seed)
    rows = kmeans.sample_rows(n, p.sample_size, generator)
    started = time.monotonic()
    sample = torch.cat(list(_features(encoder, dataset, rows, batch, heartbeat, done=0, message="sample features")))
    feature_seconds = time.monotonic() - started

    heartbeat.running(message=f"k-means: {sample.shape[0]} sampled examples", force=True)
    started = time.monotonic()
    fine = kmeans.fit_fine(
        sample, p.clusters, fine_clusters=p.fine_clusters, iterations=p.iterations, generator=generator, device=device
    )
    kmeans_seconds = time.monotonic() - started
    feature_dim = int(sample.shape[1])

    started = time.monotonic()
    if len(rows) == n:  # the sample is every example: its features are already here
        fine_assignments = fine.assign(sample, device)
        del sample
    else:
        del sample
        fine_assignments = torch.empty(n, dtype=torch.int64)
        at = 0
        for block in _features(encoder, dataset, torch.arange(n), batch, heartbeat, done=len(rows), message="assign"):
            fine_assignments[at : at + block.shape[0]] = fine.assign(block, device)
            at += block.shape[0]
    assign_seconds = time.monotonic() - started

    started = time.monotonic()
    partition = kmeans.fit_coarse(
        fine, fine_assignments, p.clusters, iterations=p.iterations, balanced=p.balanced, generator=generator
    )
    kmeans_seconds += time.monotonic() - started
    _write_partition(store, partition, encoder.name)
    stats = {
        "clusters": partition.clusters,
        "sizes": partition.sizes,
        "balance": partition.balance if math.isfinite(partition.balance) else None,
        "examples": n,
        "features": encoder.name,
        "featureDim": feature_dim,
        "fineClusters": int(partition.fine_centroids.shape[0]),
        "sampleSize": partition.sample_size,
        "balanced": p.balanced,
        "iterations": p.iterations,
        "seed": p.seed,
        "device": str(device),
        "seconds": {
            "features": round(feature_seconds, 3),
            "kmeans": round(kmeans_seconds, 3),
            "assign": round(assign_seconds, 3),
        },
    }
    store.put_json(layout.PARTITION_STATS, stats)
    log.info("partitioned", sizes=partition.sizes, balance=stats["balance"], seconds=stats["seconds"])
    return partition.assignments


def _features(
    encoder: FeatureEncoder,
    dataset: Dataset,
    rows: torch.Tensor,
    batch: int,
    heartbeat: Heartbeat,
    *,
    done: int,
    message: str,
) -> Iterator[torch.Tensor]:
    """Features [b, D] of the given dataset rows, batch by batch, in order (CPU)."""
    total = int(rows.shape[0])
    for start in range(0, total, batch):
        indices = rows[start : start + batch].tolist()
        yield encoder.encode(dataset.examples(indices)).cpu()
        seen = min(total, start + batch)
        heartbeat.running(step=done + seen, message=f"{message} {seen}/{total} ({encoder.name})")


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
        raise BadInputError(
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

    total = _work(n, spec.partition.sample_size)
    done, started, encoded = total - n, time.monotonic(), 0
    for cluster in range(k):
        members = (assignments == cluster).nonzero().flatten()
        if clusterdata.cluster_complete(store, cluster):
            done += len(members)
            continue
        clusterdata.clear_cluster(store, cluster)  # a partial cluster from an interrupted attempt
        writer = ClusterWriter(store, cluster, shard_size=shard_size)
        for start in range(0, len(members), ENCODE_BATCH):
            batch = members[start : start + ENCODE_BATCH].tolist()
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
                step=done,
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
    write_done(store, JOB, ctx.attempt, {**summary, "encodeSeconds": round(time.monotonic() - started, 3)})
    heartbeat.done(step=total, message=f"{k} clusters, sizes {sizes}, balance {summary['balance']:.3f}")


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
