"""The `router` stage: a classifier of the cluster k of a noisy sample, p(k | x_t, σ[, caption]).

`python -m atoll.trainer router --run SPEC --store RUN`. Trains on every cluster's examples
in proportion to cluster size (uniform over all examples; the label is the cluster),
noised exactly like the experts' data (atoll.trainer.flow), with the shared loop. It needs
only the partition, so it runs while the experts train. Afterwards it writes
router/metrics.json: held-out accuracy per σ bucket, with the EMA weights.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn import functional

from atoll import layout
from atoll.api import DDMRunSpec
from atoll.log import get_logger
from atoll.progress import StageName
from atoll.store import NotFoundError, Store
from atoll.trainer import flow
from atoll.trainer.clusterdata import ClusterData, read_all_clusters, read_null_text
from atoll.trainer.context import StageContext
from atoll.trainer.stages.expert import StageInputError, cluster_sizes
from atoll.trainer.training.data_order import STREAM_EVAL, ExampleDraws, draw_examples, held_out_split
from atoll.trainer.training.runner import TrainingJob, finished_checkpoint, run_training, training_job

log = get_logger(__name__)

METRICS = f"{layout.ROUTER}/metrics.json"
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
    ctx.store.put_json(METRICS, metrics)
    log.info("router evaluated", accuracy=round(metrics["accuracy"], 4), chance=round(metrics["chance"], 4))


@dataclass
class RouterTask:
    """Cross-entropy of the cluster label from the noised sample (and, optionally, the caption)."""

    preset: str
    data: ClusterData
    """Every cluster's examples, concatenated."""
    clusters: torch.Tensor
    """[n] the cluster of each example (the label)."""
    num_clusters: int
    """K."""
    train_ids: torch.Tensor
    """Rows of `data` the router trains on (the rest are held out for metrics)."""
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

    @property
    def examples(self) -> int:
        return int(self.train_ids.shape[0])

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.data.latents.shape[1:])

    def build_model(self, seed: int) -> torch.nn.Module:
        from atoll.trainer.models.router import build_router

        return build_router(
            self.preset,
            clusters=self.num_clusters,
            latent_shape=self.latent_shape,
            text_dim=int(self.data.text.shape[-1]) if self.condition_on_text else None,
            seed=seed,
        )

    def losses(
        self, model: torch.nn.Module, indices: torch.Tensor, draws: ExampleDraws, device: torch.device
    ) -> torch.Tensor:
        from atoll.trainer.models.router import router_logits

        rows = self.train_ids[indices]
        x0 = self.data.latents[rows].to(device)
        sigma = flow.sigma_from_normal(draws.normal, self.sigma_distribution, self.sigma_mean, self.sigma_std)
        sigma, noise = sigma.to(device), draws.noise.to(device)
        x_t = flow.add_noise(x0, noise, sigma)
        if self.first_frame_conditioning > 0:
            x_t = flow.give_first_frame(x_t, x0, (draws.condition < self.first_frame_conditioning).to(device))
        text = mask = None
        if self.condition_on_text:
            text, mask = self.data.text[rows], self.data.text_mask[rows]
            # Dropped captions as the experts drop them, so p(k | x_t, σ, ∅) is learned for guidance.
            drop = draws.uniform < self.caption_dropout
            text = torch.where(drop[:, None, None], self.null_text, text).to(device).float()
            mask = torch.where(drop[:, None], self.null_mask, mask).to(device)
        logits = router_logits(model, x_t, sigma, text, mask)
        return functional.cross_entropy(logits.float(), self.clusters[rows].to(device), reduction="none")

    def describe(self) -> dict[str, Any]:
        return {
            "objective": "cluster-classification",
            "preset": self.preset,
            "clusters": self.num_clusters,
            "latentShape": list(self.latent_shape),
            "conditionOnText": self.condition_on_text,
            "captionDropout": self.caption_dropout if self.condition_on_text else 0.0,
            "heldOut": int(self.clusters.shape[0]) - self.examples,
            **({"firstFrameConditioning": self.first_frame_conditioning} if self.first_frame_conditioning else {}),
            "timestepSampling": {
                "distribution": self.sigma_distribution,
                "mean": self.sigma_mean,
                "std": self.sigma_std,
            },
        }


def _split(spec: DDMRunSpec, examples: int) -> tuple[torch.Tensor, torch.Tensor]:
    return held_out_split(examples, seed=spec.router.seed, fraction=HELD_OUT_FRACTION, limit=HELD_OUT_LIMIT)


def router_task(store: Store, *, spec: DDMRunSpec) -> RouterTask:
    """The router's task over every cluster's examples, loaded from the store."""
    data, clusters = read_all_clusters(store)
    train_ids, _ = _split(spec, len(data))
    null_text, null_mask = read_null_text(store)
    sampling = spec.router.timestep_sampling
    return RouterTask(
        preset=spec.router.preset,
        data=data,
        clusters=clusters,
        num_clusters=len(cluster_sizes(store)),
        train_ids=train_ids,
        condition_on_text=spec.router.condition_on_text,
        null_text=null_text,
        null_mask=null_mask,
        caption_dropout=spec.expert.caption_dropout,
        sigma_distribution=sampling.distribution,
        sigma_mean=sampling.mean,
        sigma_std=sampling.std,
        first_frame_conditioning=spec.expert.first_frame_conditioning,
    )


@torch.inference_mode()
def sigma_bucket_accuracy(
    router: torch.nn.Module,
    data: ClusterData,
    clusters: torch.Tensor,
    rows: torch.Tensor,
    *,
    seed: int,
    buckets: int = SIGMA_BUCKETS,
    batch: int = 256,
    condition_on_text: bool = False,
) -> list[dict[str, float]]:
    """Accuracy and cross-entropy of `router` on examples `rows`, per σ bucket [b/B, (b+1)/B).

    Each example is noised once per bucket at a σ drawn uniformly inside it, with noise
    seeded by (seed, bucket, example position), so the numbers are reproducible.
    """
    from atoll.trainer.models.router import router_logits

    device = next(router.parameters()).device
    shape = tuple(int(s) for s in data.latents.shape[1:])
    results = []
    for b in range(buckets):
        correct, loss, seen = 0, 0.0, 0
        for start in range(0, int(rows.shape[0]), batch):
            chunk = rows[start : start + batch]
            draws = draw_examples(seed, b, range(start, start + int(chunk.shape[0])), shape, stream=STREAM_EVAL)
            sigma = ((b + draws.uniform) / buckets).to(device)
            x_t = flow.add_noise(data.latents[chunk].to(device), draws.noise.to(device), sigma)
            text = data.text[chunk].to(device).float() if condition_on_text else None
            mask = data.text_mask[chunk].to(device) if condition_on_text else None
            logits = router_logits(router, x_t, sigma, text, mask).float()
            labels = clusters[chunk].to(device)
            correct += int((logits.argmax(dim=1) == labels).sum())
            loss += float(functional.cross_entropy(logits, labels, reduction="sum"))
            seen += int(chunk.shape[0])
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
    data, clusters = read_all_clusters(store)
    _, held_out = _split(spec, len(data))
    counts = torch.bincount(clusters, minlength=int(clusters.max()) + 1).double()
    prior = (counts / counts.sum()).tolist()
    buckets = sigma_bucket_accuracy(
        router, data, clusters, held_out, seed=spec.router.seed, condition_on_text=spec.router.condition_on_text
    )
    return {
        "preset": spec.router.preset,
        "clusters": len(prior),
        "conditionOnText": spec.router.condition_on_text,
        "heldOutExamples": int(held_out.shape[0]),
        "prior": prior,
        "chance": max(prior),
        "accuracy": sum(b["accuracy"] for b in buckets) / len(buckets),
        "buckets": buckets,
    }
