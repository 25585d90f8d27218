"""The `assemble` stage: K experts + router + VAE + text encoder → model/ (a DDMPipeline directory).

Checks the contract every part was trained under (K, latent shape, VAE, text encoder,
forward process and objective), saves the pipeline into a local staging directory and
uploads it to model/ with model/assembled.json (its done marker) last and only under its
claim, so a half-written model/ is never taken for a finished one and a stale attempt never
replaces a newer one's upload. Idempotent: a complete model/ is left as it is. Never trains.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import torch

from atoll import layout
from atoll.errors import AtollError, BadInputError
from atoll.log import get_logger
from atoll.stages import StageJob
from atoll.store import LocalStore, Store, join_key
from atoll.store.checkpoint import CheckpointStore
from atoll.store.fencing import attempt_key
from atoll.trainer.clusterdata import DataInfo, read_info
from atoll.trainer.context import StageContext
from atoll.trainer.encoders import text_encoder_for, vae_for
from atoll.trainer.fence import ensure_current
from atoll.trainer.heartbeat import Heartbeat
from atoll.trainer.models import fetch_final_weights, model_from_directory
from atoll.trainer.pipeline import MARKER, DDMPipeline, flow_match_scheduler
from atoll.trainer.training.distributed import configure_threads
from atoll.trainer.training.state import STATE_FILE

log = get_logger(__name__)

JOB = StageJob("assemble")
MARKER_KEY = JOB.done_marker


class ContractError(BadInputError):
    """The experts, router and data were not trained under one shared contract."""


def run(ctx: StageContext) -> None:
    """Assemble model/ from the final EMA weights of every expert and the router."""
    store = ctx.store
    heartbeat = Heartbeat(store, "assemble", attempt=ctx.attempt or 1, total_steps=3)
    if model_complete(store):
        log.info("model already assembled", model=store.uri_of(layout.MODEL))
        heartbeat.done(step=3, message="already assembled")
        return
    configure_threads()
    try:
        heartbeat.running(message="checking the contract")
        with tempfile.TemporaryDirectory(prefix="atoll-assemble-") as scratch:
            pipeline = build_pipeline(ctx, Path(scratch) / "parts", heartbeat)
            staged = Path(scratch) / "model"
            pipeline.save_pretrained(staged)
            heartbeat.update(step=2, message="uploading model/", force=True)
            upload_model(store, staged, attempt=ctx.attempt)
        heartbeat.done(step=3, message="assembled")
        log.info("model assembled", model=store.uri_of(layout.MODEL), experts=ctx.spec.partition.clusters)
    except Exception as error:
        heartbeat.failed(str(error) or type(error).__name__)
        raise


def build_pipeline(ctx: StageContext, scratch: Path, heartbeat: Heartbeat | None = None) -> DDMPipeline:
    """Load every final EMA model, check the shared contract and build the DDMPipeline."""
    spec, store = ctx.spec, ctx.store
    info = read_info(store)
    clusters = spec.partition.clusters
    if info.clusters != clusters:
        raise ContractError(f"partition.clusters is {clusters} but the partition's data has {info.clusters} clusters")
    vae = vae_for(info.vae, weights=spec.weights)
    if vae.latent_shape(info.resolution, info.frames) != info.latent_shape:
        raise ContractError(
            f"VAE {info.vae} makes latents {list(vae.latent_shape(info.resolution, info.frames))} at resolution"
            f" {info.resolution} ({info.frames} frames), the data holds {list(info.latent_shape)}"
        )
    text = text_encoder_for(info.text_encoder, weights=spec.weights)
    if text.shape != info.text_shape:
        raise ContractError(
            f"text encoder {info.text_encoder} makes embeddings {list(text.shape)}, the data holds"
            f" {list(info.text_shape)}"
        )
    experts = []
    for k in range(clusters):
        expert = _load_final(store, layout.expert(k), scratch / f"expert_{k}", "flow-matching", info)
        _check_expert(expert, k, info)
        experts.append(expert)
        if heartbeat is not None:
            heartbeat.update(message=f"loaded expert {k}")
    router = None
    if clusters > 1:
        router = _load_final(store, layout.ROUTER, scratch / "router", "cluster-classification", info)
        _check_router(router, info)
    if heartbeat is not None:
        heartbeat.update(step=1, message="contract checked", force=True)
    return DDMPipeline(
        router=router,
        vae=vae.model,
        text_encoder=text.model,
        tokenizer=text.tokenizer,
        scheduler=flow_match_scheduler(),
        experts=experts,
        default_strategy=spec.sampling.strategy,
        default_steps=spec.sampling.steps,
        default_guidance=spec.sampling.guidance,
        latent_shape=info.latent_shape,
        first_frame_conditioning=spec.expert.first_frame_conditioning > 0,
        fps=info.fps,
    )


def _load_final(store: Store, prefix: str, directory: Path, objective: str, info: DataInfo) -> torch.nn.Module:
    """A stage's final EMA model, after checking the task its checkpoint records."""
    checkpoint = fetch_final_weights(store, prefix, directory)
    task = _task_description(store, prefix, checkpoint.key)
    where = store.uri_of(checkpoint.key)
    if task.get("objective") != objective:
        raise ContractError(f"{where} was trained for {task.get('objective')!r}, expected {objective!r}")
    if task.get("latentShape") != list(info.latent_shape):
        raise ContractError(
            f"{where} was trained on latents {task.get('latentShape')}, the data holds {list(info.latent_shape)}"
        )
    if "textShape" in task and task["textShape"] != list(info.text_shape):
        raise ContractError(
            f"{where} was trained on captions {task['textShape']} ({info.text_encoder} gives {list(info.text_shape)})"
        )
    # diffusers' ModelMixin is a torch Module; its stubs do not say so.
    return cast("torch.nn.Module", model_from_directory(directory))


def _task_description(store: Store, prefix: str, checkpoint_key: str) -> dict[str, Any]:
    """The `task` a checkpoint's trainer_state.json records (preset, shapes, objective)."""
    checkpoints = CheckpointStore(store, prefix, read_only=True)
    latest = checkpoints.latest()
    if latest is None or latest.key != checkpoint_key or STATE_FILE not in latest.files:
        raise ContractError(f"{store.uri_of(checkpoint_key)} has no {STATE_FILE}")
    with tempfile.TemporaryDirectory(prefix="atoll-state-") as scratch:
        only_state = dataclasses.replace(latest, files={STATE_FILE: latest.files[STATE_FILE]})
        checkpoints.restore(only_state, Path(scratch))
        task: dict[str, Any] = json.loads((Path(scratch) / STATE_FILE).read_text()).get("task", {})
    return task


def _check_expert(expert: torch.nn.Module, k: int, info: DataInfo) -> None:
    config: Any = getattr(expert, "config", None)
    channels, side = info.latent_shape[0], info.latent_shape[-1]
    found: tuple[Any, ...]
    wanted: tuple[int, ...]
    if info.video:  # a Wan transformer: any frame count and size that its patch divides
        found = (config.in_channels, config.out_channels, config.text_dim)
        wanted = (channels, channels, info.text_shape[1])
        what = "(in, out channels, caption width)"
    else:
        found = (config.in_channels, config.out_channels, config.sample_size, config.caption_channels)
        wanted = (channels, channels, side, info.text_shape[1])
        what = "(in, out channels, side, caption width)"
    if found != wanted:
        raise ContractError(f"expert {k} is built for {what} {found}, the contract is {wanted}")


def _check_router(router: torch.nn.Module, info: DataInfo) -> None:
    config: Any = getattr(router, "config", None)
    channels, side = info.latent_shape[0], info.latent_shape[-1]
    frames = info.latent_shape[1] if info.video else None
    found = (config.num_clusters, config.in_channels, config.sample_size, getattr(config, "num_frames", None))
    if found != (info.clusters, channels, side, frames):
        raise ContractError(
            f"the router classifies {config.num_clusters} clusters of latents {list(found[1:])} (channels, side,"
            f" frames); the contract is {info.clusters} clusters of {[channels, side, frames]}"
        )
    if config.caption_channels not in (None, info.text_shape[1]):
        raise ContractError(
            f"the router reads captions of width {config.caption_channels}, the text encoder gives {info.text_shape[1]}"
        )


# -- model/ in the store -------------------------------------------------------------------


def upload_model(store: Store, directory: Path, *, attempt: int | None = None) -> None:
    """Replace model/ with `directory`'s files, the completion marker last; every step only
    while `attempt` holds the stage's claim (FencedError otherwise)."""
    keep = {layout.progress(layout.MODEL), attempt_key(layout.MODEL)}
    ensure_current(store, JOB, attempt)
    for info in store.list_objects(layout.MODEL + "/"):
        if info.key not in keep:
            store.delete(info.key)
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MARKER)
    for path in files:
        store.put_file(join_key(layout.MODEL, path.relative_to(directory).as_posix()), path)
    ensure_current(store, JOB, attempt)
    store.put_file(MARKER_KEY, directory / MARKER)


def model_complete(store: Store) -> bool:
    """Whether model/ holds a finished assembly (marker present, every listed file of its size)."""
    try:
        marker = store.get_json(MARKER_KEY)
    except AtollError:
        return False
    sizes = {info.key: info.size for info in store.list_objects(layout.MODEL + "/")}
    return all(sizes.get(join_key(layout.MODEL, name)) == size for name, size in marker.get("files", {}).items())


@contextlib.contextmanager
def open_model(store: Store) -> Iterator[Path]:
    """A local directory holding the run's assembled model (the store's own, or a download)."""
    if not model_complete(store):
        raise AtollError(f"{store.uri_of(layout.MODEL)} is not assembled yet: run the assemble stage first")
    if isinstance(store, LocalStore):
        yield store.root / layout.MODEL
        return
    with tempfile.TemporaryDirectory(prefix="atoll-model-") as scratch:
        for info in store.list_objects(layout.MODEL + "/"):
            store.get_file(info.key, Path(scratch) / info.key[len(layout.MODEL) + 1 :])
        yield Path(scratch)
