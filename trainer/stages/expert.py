"""The `expert` stage: flow matching of expert k on its cluster alone (DESIGN.md §1).

`python -m atoll.trainer expert --run SPEC --store RUN --expert K [--micro-batch M]
[--grad-accum A] [--gpus G]`. Reads partition/stats.json and streams data/cluster-<k>/'s
shards, trains `expert.steps_for(k, sizes)` steps with the shared loop, commits checkpoints
under experts/<k>/, rewrites experts/<k>/progress.json and, once the final checkpoint is
committed, writes its done marker experts/<k>/done.json under its claim. Never loads its
whole cluster into memory, never talks to other experts.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch

from atoll import layout
from atoll.api import DDMRunSpec
from atoll.errors import BadInputError
from atoll.progress import StageName
from atoll.stages import StageJob
from atoll.store import NotFoundError, Store
from atoll.trainer import flow
from atoll.trainer.clusterdata import DataInfo, cluster_shards, read_info, read_null_text
from atoll.trainer.context import StageContext
from atoll.trainer.fence import write_done
from atoll.trainer.training.data_order import ExampleDraws, derive_seed
from atoll.trainer.training.gpu import to_device
from atoll.trainer.training.runner import TrainingJob, finished_checkpoint, run_training, training_job
from atoll.trainer.training.stream import ExampleBatch, StreamData, StreamSource, row_shapes

CAPTIONED = ("latents", "text", "text_mask")
"""The shard tensors a text-conditioned model trains on."""


class StageInputError(BadInputError):
    """The stage's inputs are missing or do not match its arguments or the spec: no retry helps."""


def cluster_sizes(store: Store) -> list[int]:
    """Examples per cluster, from partition/stats.json."""
    try:
        stats = store.get_json(layout.PARTITION_STATS)
    except NotFoundError:
        raise StageInputError(
            f"{store.uri_of(layout.PARTITION_STATS)} is missing: run the partition stage first"
        ) from None
    try:
        return [int(size) for size in stats["sizes"]]
    except (KeyError, TypeError, ValueError) as error:
        raise StageInputError(f"{store.uri_of(layout.PARTITION_STATS)} has no valid 'sizes': {error!r}") from None


def expert_job(ctx: StageContext) -> TrainingJob:
    """The training job of expert ctx.expert (validates the arguments against the partition)."""
    k = ctx.expert
    if k is None:
        raise StageInputError("the expert stage needs --expert K")
    sizes = cluster_sizes(ctx.store)
    if not 0 <= k < len(sizes):
        raise StageInputError(
            f"--expert {k} is out of range: the partition has {len(sizes)} clusters (0…{len(sizes) - 1})"
        )
    if sizes[k] < 1:
        raise StageInputError(f"cluster {k} is empty: there is nothing for expert {k} to learn")
    spec = ctx.spec.expert
    return training_job(
        ctx,
        spec,
        stage="expert",
        expert=k,
        total_steps=spec.steps_for(k, sizes),
        # Each expert gets its own initialisation, data order and noise.
        seed=derive_seed(spec.seed, k),
        make_task=functools.partial(expert_task, spec=ctx.spec, k=k),
    )


def run(ctx: StageContext) -> None:
    """Train expert k to its final checkpoint (returns at once when it is already there),
    then write its done marker."""
    job = expert_job(ctx)
    run_training(job, ctx.store)
    final = finished_checkpoint(ctx.store, job)
    if final is None:  # pragma: no cover - run_training returns only once the final checkpoint is committed
        raise StageInputError(f"expert {job.expert} finished training but its final checkpoint is not readable")
    write_done(ctx.store, StageJob("expert", job.expert), ctx.attempt, {"step": final.step})


@dataclass
class ExpertTask:
    """Flow matching on one cluster: regress ε − x0 at x_t = (1 − σ)·x0 + σ·ε."""

    expert: int
    preset: str
    data: StreamData
    """Cluster k's shards (one source)."""
    latent_shape: tuple[int, ...]
    text_shape: tuple[int, int]
    null_text: torch.Tensor
    """[1, L, D] the empty caption's embedding (caption dropout, for classifier-free guidance)."""
    null_mask: torch.Tensor
    """[1, L]."""
    caption_dropout: float
    sigma_distribution: flow.SigmaDistribution
    sigma_mean: float
    sigma_std: float
    first_frame_conditioning: float = 0.0
    """Share of clips trained with their clean first frame given (image-to-video)."""

    @property
    def stage(self) -> StageName:
        return "expert"

    def build_model(self, seed: int) -> torch.nn.Module:
        from atoll.trainer.models.expert import build_expert

        return build_expert(self.preset, latent_shape=self.latent_shape, text_dim=self.text_shape[1], seed=seed)

    def losses(
        self, model: torch.nn.Module, batch: ExampleBatch, draws: ExampleDraws, device: torch.device
    ) -> torch.Tensor:
        from atoll.trainer.models.expert import velocity

        x0 = to_device(batch["latents"], device)
        text, mask = batch["text"], batch["text_mask"]
        drop = draws.uniform < self.caption_dropout
        if bool(drop.any()):
            text = torch.where(drop[:, None, None], self.null_text, text)
            mask = torch.where(drop[:, None], self.null_mask, mask)
        sigma = flow.sigma_from_normal(draws.normal, self.sigma_distribution, self.sigma_mean, self.sigma_std)
        sigma, noise = to_device(sigma, device), to_device(draws.noise, device)
        x_t = flow.add_noise(x0, noise, sigma)
        given = None
        if self.first_frame_conditioning > 0:
            given = to_device(draws.condition < self.first_frame_conditioning, device)
            x_t = flow.give_first_frame(x_t, x0, given)
        prediction = velocity(
            model, x_t, sigma, to_device(text, device).float(), to_device(mask, device), first_frame_given=given
        )
        return flow.flow_matching_loss(prediction, x0, noise, given)

    def describe(self) -> dict[str, Any]:
        return {
            "objective": "flow-matching",
            "expert": self.expert,
            "preset": self.preset,
            "latentShape": list(self.latent_shape),
            "textShape": list(self.text_shape),
            "captionDropout": self.caption_dropout,
            **({"firstFrameConditioning": self.first_frame_conditioning} if self.first_frame_conditioning else {}),
            "timestepSampling": {
                "distribution": self.sigma_distribution,
                "mean": self.sigma_mean,
                "std": self.sigma_std,
            },
        }


def null_caption(store: Store, info: DataInfo) -> tuple[torch.Tensor, torch.Tensor]:
    """The empty caption (text [1, L, D], mask [1, L]), checked against the data's caption shape."""
    null_text, null_mask = read_null_text(store)
    if tuple(null_text.shape[1:]) != tuple(info.text_shape):
        raise StageInputError(
            f"the null caption is {list(null_text.shape[1:])}, data/info.json says captions are {list(info.text_shape)}"
        )
    return null_text, null_mask


def expert_task(store: Store, *, spec: DDMRunSpec, k: int) -> ExpertTask:
    """Expert k's task, streaming its cluster's shards from the store."""
    info = read_info(store)
    shards = tuple(cluster_shards(store, k))
    null_text, null_mask = null_caption(store, info)
    sampling = spec.expert.timestep_sampling
    return ExpertTask(
        expert=k,
        preset=spec.expert.preset,
        data=StreamData(
            store=store,
            sources=(StreamSource(shards),),
            tensors=CAPTIONED,
            window=spec.expert.shuffle_buffer,
            row_shapes=row_shapes(info),
        ),
        latent_shape=tuple(info.latent_shape),
        text_shape=info.text_shape,
        null_text=null_text,
        null_mask=null_mask,
        caption_dropout=spec.expert.caption_dropout,
        sigma_distribution=sampling.distribution,
        sigma_mean=sampling.mean,
        sigma_std=sampling.std,
        first_frame_conditioning=spec.expert.first_frame_conditioning,
    )
