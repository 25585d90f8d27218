"""The `router` stage: a classifier of the cluster k of a noisy sample, p(k | x_t, σ[, caption]).

`python -m atoll.trainer router --run SPEC --store RUN`. Streams every cluster's shards, each
shuffle window mixing the clusters in proportion to their size (uniform over all examples;
the label is the cluster), noised exactly like the experts' data (atoll.trainer.flow), with
the shared loop. It needs only the partition, so it runs while the experts train.
Afterwards it writes router/metrics.json: held-out accuracy per σ bucket, with the EMA
weights. Never loads the dataset into memory: only a window and the held-out rows.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn import functional

from atoll.api import DDMRunSpec
from atoll.log import get_logger
from atoll.progress import StageName
from atoll.stages import StageJob
from atoll.store import NotFoundError, Store
from atoll.trainer import flow
from atoll.trainer.clusterdata import ShardRef, cluster_shards, read_info
from atoll.trainer.context import StageContext
from atoll.trainer.fence import write_done
from atoll.trainer.shardfiles import ShardFiles
from atoll.trainer.stages.expert import CAPTIONED, StageInputError, cluster_sizes, null_caption
from atoll.trainer.training.data_order import STREAM_EVAL, ExampleDraws, draw_examples, held_out_rows
from atoll.trainer.training.gpu import to_device
from atoll.trainer.training.runner import TrainingJob, finished_checkpoint, run_training, training_job
from atoll.trainer.training.stream import ExampleBatch, StreamData, StreamSource, row_shapes

log = get_logger(__name__)

JOB = StageJob("router")
METRICS = JOB.done_marker
"""router/metrics.json: the router's done marker, written after its final checkpoint."""
HELD_OUT_FRACTION = 0.1
HELD_OUT_LIMIT = 2048
SIGMA_BUCKETS = 10


def router_job(ctx: StageContext) -> TrainingJob:
    """The router's training job."""
    sizes = cluster_sizes(ctx.store)
    if len(sizes) < 2:
        raise StageInputError(f"the router needs at least 2 clusters, the partition has {len(sizes)}")
    spec = ctx.spec.router
    return training_job(
        ctx,
        spec,
        stage="router",
        expert=None,
        total_steps=spec.steps,
        seed=spec.seed,
        make_task=functools.partial(router_task, spec=ctx.spec),
    )


def run(ctx: StageContext) -> None:
    """Train the router to its final checkpoint, then write router/metrics.json (both idempotent)."""
    job = router_job(ctx)
    run_training(job, ctx.store)
    final = finished_checkpoint(ctx.store, job)
    if final is None:  # pragma: no cover - run_training returns only once the final checkpoint is committed
        raise StageInputError("the router finished training but its final checkpoint is not readable")
    try:
        if int(ctx.store.get_json(METRICS).get("step", -1)) == final.step:
            return
    except NotFoundError:
        pass
    metrics = evaluate_router(ctx.store, ctx.spec)
    metrics["step"] = final.step
    write_done(ctx.store, JOB, ctx.attempt, metrics)
    log.info("router evaluated", accuracy=round(metrics["accuracy"], 4), chance=round(metrics["chance"], 4))


@dataclass
class RouterTask:
    """Cross-entropy of the cluster label from the noised sample (and, optionally, the caption)."""

    preset: str
    data: StreamData
    """Every cluster's shards (one source per cluster: the source is the label), held-out rows excluded."""
    latent_shape: tuple[int, ...]
    text_shape: tuple[int, int]
    num_clusters: int
    """K."""
    held_out: int
    """Examples kept out of training for router/metrics.json."""
    condition_on_text: bool
    null_text: torch.Tensor
    null_mask: torch.Tensor
    caption_dropout: float
    sigma_distribution: flow.SigmaDistribution
    sigma_mean: float
    sigma_std: float
    first_frame_conditioning: float = 0.0
    """Share of clips shown with their clean first frame, as the experts train (image-to-video)."""

    @property
    def stage(self) -> StageName:
        return "router"

    @property
    def expert(self) -> int | None:
        return None

    def build_model(self, seed: int) -> torch.nn.Module:
        from atoll.trainer.models.router import build_router

        return build_router(
            self.preset,
            clusters=self.num_clusters,
            latent_shape=self.latent_shape,
            text_dim=self.text_shape[1] if self.condition_on_text else None,
            seed=seed,
        )

    def losses(
        self, model: torch.nn.Module, batch: ExampleBatch, draws: ExampleDraws, device: torch.device
    ) -> torch.Tensor:
        from atoll.trainer.models.router import router_logits

        x0 = to_device(batch["latents"], device)
        sigma = flow.sigma_from_normal(draws.normal, self.sigma_distribution, self.sigma_mean, self.sigma_std)
        sigma, noise = to_device(sigma, device), to_device(draws.noise, device)
        x_t = flow.add_noise(x0, noise, sigma)
        if self.first_frame_conditioning > 0:
            x_t = flow.give_first_frame(x_t, x0, (draws.condition < self.first_frame_conditioning).to(device))
        text = mask = None
        if self.condition_on_text:
            text, mask = batch["text"], batch["text_mask"]
            # Dropped captions as the experts drop them, so p(k | x_t, σ, ∅) is learned for guidance.
            drop = draws.uniform < self.caption_dropout
            text = to_device(torch.where(drop[:, None, None], self.null_text, text), device).float()
            mask = to_device(torch.where(drop[:, None], self.null_mask, mask), device)
        logits = router_logits(model, x_t, sigma, text, mask)
        return functional.cross_entropy(logits.float(), to_device(batch.source, device), reduction="none")

    def describe(self) -> dict[str, Any]:
        return {
            "objective": "cluster-classification",
            "preset": self.preset,
            "clusters": self.num_clusters,
            "latentShape": list(self.latent_shape),
            "conditionOnText": self.condition_on_text,
            "captionDropout": self.caption_dropout if self.condition_on_text else 0.0,
            "heldOut": self.held_out,
            **({"firstFrameConditioning": self.first_frame_conditioning} if self.first_frame_conditioning else {}),
            "timestepSampling": {
                "distribution": self.sigma_distribution,
                "mean": self.sigma_mean,
                "std": self.sigma_std,
            },
        }


def router_sources(store: Store, spec: DDMRunSpec) -> tuple[StreamSource, ...]:
    """Every cluster's shards as one source each, with the held-out split marked on them.

    The held-out rows are a seeded random HELD_OUT_FRACTION (at most HELD_OUT_LIMIT) of all
    examples, counted cluster by cluster, shard by shard, row by row.
    """
    shards = [cluster_shards(store, k) for k in range(len(cluster_sizes(store)))]
    total = sum(s.examples for cluster in shards for s in cluster)
    held_rows = held_out_rows(total, seed=spec.router.seed, fraction=HELD_OUT_FRACTION, limit=HELD_OUT_LIMIT).tolist()
    sources, first, at = [], 0, 0
    for cluster in shards:
        marked: dict[int, tuple[int, ...]] = {}
        for j, shard in enumerate(cluster):
            rows = []
            while at < len(held_rows) and held_rows[at] < first + shard.examples:
                rows.append(held_rows[at] - first)
                at += 1
            if rows:
                marked[j] = tuple(rows)
            first += shard.examples
        sources.append(StreamSource(tuple(cluster), marked))
    return tuple(sources)


def router_task(store: Store, *, spec: DDMRunSpec) -> RouterTask:
    """The router's task, streaming every cluster's shards from the store."""
    info = read_info(store)
    sources = router_sources(store, spec)
    null_text, null_mask = null_caption(store, info)
    sampling = spec.router.timestep_sampling
    return RouterTask(
        preset=spec.router.preset,
        data=StreamData(
            store=store,
            sources=sources,
            tensors=CAPTIONED if spec.router.condition_on_text else ("latents",),
            window=spec.router.shuffle_buffer,
            row_shapes=row_shapes(info),
        ),
        latent_shape=tuple(info.latent_shape),
        text_shape=info.text_shape,
        num_clusters=len(sources),
        held_out=sum(len(rows) for source in sources for rows in source.held_out.values()),
        condition_on_text=spec.router.condition_on_text,
        null_text=null_text,
        null_mask=null_mask,
        caption_dropout=spec.expert.caption_dropout,
        sigma_distribution=sampling.distribution,
        sigma_mean=sampling.mean,
        sigma_std=sampling.std,
        first_frame_conditioning=spec.expert.first_frame_conditioning,
    )


@dataclass(frozen=True)
class HeldOut:
    """The router's held-out examples (a few thousand at most), in memory."""

    latents: torch.Tensor
    clusters: torch.Tensor
    """[n] the cluster of each example: the label."""
    text: torch.Tensor | None = None
    text_mask: torch.Tensor | None = None


def read_held_out(store: Store, sources: tuple[StreamSource, ...], *, with_text: bool) -> HeldOut:
    """The held-out rows of every cluster, in cluster, shard, row order."""
    names = CAPTIONED if with_text else ("latents",)
    parts: list[dict[str, torch.Tensor]] = []
    clusters: list[torch.Tensor] = []
    with ShardFiles(store) as files:
        for k, source in enumerate(sources):
            for j, rows in sorted(source.held_out.items()):
                shard: ShardRef = source.shards[j]
                parts.append(files.read_rows(shard, torch.tensor(rows, dtype=torch.int64), names))
                clusters.append(torch.full((len(rows),), k, dtype=torch.int64))
    if not parts:
        raise StageInputError("the router has no held-out examples to evaluate on (fewer than 2 examples)")
    tensors = {name: torch.cat([p[name] for p in parts]) for name in names}
    return HeldOut(
        latents=tensors["latents"],
        clusters=torch.cat(clusters),
        text=tensors.get("text"),
        text_mask=tensors.get("text_mask"),
    )


@torch.inference_mode()
def sigma_bucket_accuracy(
    router: torch.nn.Module,
    held_out: HeldOut,
    *,
    seed: int,
    buckets: int = SIGMA_BUCKETS,
    batch: int = 64,
) -> list[dict[str, float]]:
    """Accuracy and cross-entropy of `router` on the held-out examples, per σ bucket [b/B, (b+1)/B).

    Each example is noised once per bucket at a σ drawn uniformly inside it, with noise
    seeded by (seed, bucket, example position), so the numbers are reproducible. The caption
    is fed when the held-out set carries one (a text-conditioned router).
    """
    from atoll.trainer.models.router import router_logits

    device = next(router.parameters()).device
    shape = tuple(int(s) for s in held_out.latents.shape[1:])
    n = int(held_out.latents.shape[0])
    results = []
    for b in range(buckets):
        correct, loss, seen = 0, 0.0, 0
        for start in range(0, n, batch):
            chunk = slice(start, min(n, start + batch))
            draws = draw_examples(seed, b, range(chunk.start, chunk.stop), shape, stream=STREAM_EVAL)
            sigma = ((b + draws.uniform) / buckets).to(device)
            x_t = flow.add_noise(held_out.latents[chunk].to(device), draws.noise.to(device), sigma)
            text = held_out.text[chunk].to(device).float() if held_out.text is not None else None
            mask = held_out.text_mask[chunk].to(device) if held_out.text_mask is not None else None
            logits = router_logits(router, x_t, sigma, text, mask).float()
            labels = held_out.clusters[chunk].to(device)
            correct += int((logits.argmax(dim=1) == labels).sum())
            loss += float(functional.cross_entropy(logits, labels, reduction="sum"))
            seen += chunk.stop - chunk.start
        results.append(
            {
                "sigmaLow": b / buckets,
                "sigmaHigh": (b + 1) / buckets,
                "accuracy": correct / max(1, seen),
                "crossEntropy": loss / max(1, seen),
                "examples": seen,
            }
        )
    return results


def evaluate_router(store: Store, spec: DDMRunSpec, *, device: torch.device | str = "cpu") -> dict[str, Any]:
    """router/metrics.json's content: held-out accuracy per σ bucket of the final EMA router."""
    from atoll.trainer.models.loading import load_router_for_sampling

    router = load_router_for_sampling(store, device=device)
    held_out = read_held_out(store, router_sources(store, spec), with_text=spec.router.condition_on_text)
    sizes = cluster_sizes(store)
    prior = [size / sum(sizes) for size in sizes]
    buckets = sigma_bucket_accuracy(router, held_out, seed=spec.router.seed)
    return {
        "preset": spec.router.preset,
        "clusters": len(prior),
        "conditionOnText": spec.router.condition_on_text,
        "heldOutExamples": int(held_out.clusters.shape[0]),
        "prior": prior,
        "chance": max(prior),
        "accuracy": sum(b["accuracy"] for b in buckets) / len(buckets),
        "buckets": buckets,
    }
