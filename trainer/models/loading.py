"""Loading trained experts and routers: from a saved model directory or a stage's final checkpoint.

Sampling and assembly use the EMA weights of a stage's final checkpoint. A checkpoint that
is not final (training unfinished) is refused with a message saying how far it got;
nothing here falls back silently to other weights or downloads anything.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch

from atoll import layout
from atoll.store import Store
from atoll.store.checkpoint import CheckpointStore
from atoll.store.manifest import Checkpoint
from atoll.trainer.models.common import ModelConfigError
from atoll.trainer.models.expert import attach_positions

if TYPE_CHECKING:
    from diffusers import ModelMixin, PixArtTransformer2DModel

    from atoll.trainer.models.router import RouterModel

EMA_DIR = "ema"
"""Checkpoint sub-directory of the EMA weights (diffusers layout); see atoll.trainer.training.state."""
RAW_DIR = "model"


def model_class(name: str) -> type[Any]:
    """The diffusers model class a config.json's `_class_name` names (experts and routers only)."""
    if name == "PixArtTransformer2DModel":
        from diffusers import PixArtTransformer2DModel

        return PixArtTransformer2DModel
    if name == "WanTransformer3DModel":
        from diffusers import WanTransformer3DModel

        wan: type[Any] = WanTransformer3DModel
        return wan
    if name == "RouterModel":
        from atoll.trainer.models.router import RouterModel

        router: type[Any] = RouterModel
        return router
    raise ModelConfigError(
        f"unknown model class {name!r}: expected PixArtTransformer2DModel, WanTransformer3DModel or RouterModel"
    )


def model_from_directory(directory: Path, *, device: torch.device | str = "cpu") -> ModelMixin:
    """Load a model saved with save_pretrained (config.json + safetensors), offline, in eval mode."""
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise ModelConfigError(f"{directory} is not a saved model: config.json is missing")
    try:
        class_name = json.loads(config_path.read_text())["_class_name"]
    except (ValueError, KeyError) as error:
        raise ModelConfigError(f"{config_path} does not name a model class (_class_name): {error!r}") from None
    model = model_class(class_name).from_pretrained(directory, local_files_only=True)
    attach_positions(model)
    return cast("ModelMixin", model.to(device).eval())


def model_from_config(directory: Path) -> ModelMixin:
    """A freshly initialised model of the architecture a saved directory's config.json describes
    (no weights read): for shape checks and for building a model to load weights into."""
    config_path = directory / "config.json"
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as error:
        raise ModelConfigError(f"{config_path} is not a readable model config: {error}") from None
    if "_class_name" not in config:
        raise ModelConfigError(f"{config_path} does not name a model class (_class_name)")
    model = model_class(config["_class_name"]).from_config(config)
    attach_positions(model)
    return cast("ModelMixin", model)


def final_checkpoint(store: Store, stage_prefix: str) -> Checkpoint:
    """The stage's newest valid checkpoint, which must be its final one (training finished)."""
    latest = CheckpointStore(store, stage_prefix, read_only=True).latest()
    if latest is None:
        raise ModelConfigError(
            f"{store.uri_of(stage_prefix)} has no valid checkpoint: train this stage first"
            " (python -m atoll.trainer expert|router …)"
        )
    if not latest.metadata.get("final", False):
        raise ModelConfigError(
            f"{store.uri_of(stage_prefix)} has not finished training: its newest checkpoint is step"
            f" {latest.step} of {latest.metadata.get('totalSteps', '?')}"
        )
    return latest


def fetch_final_weights(store: Store, stage_prefix: str, directory: Path, *, ema: bool = True) -> Checkpoint:
    """Download the final checkpoint's EMA (or raw) weights into `directory` as a diffusers model dir.

    Only those files are transferred (verified against the manifest on the way).
    """
    checkpoint = final_checkpoint(store, stage_prefix)
    sub = EMA_DIR if ema else RAW_DIR
    files = {name: entry for name, entry in checkpoint.files.items() if name.startswith(f"{sub}/")}
    if not files:
        raise ModelConfigError(f"{store.uri_of(checkpoint.key)} holds no {sub}/ weights")
    with tempfile.TemporaryDirectory(prefix="atoll-weights-") as scratch:
        CheckpointStore(store, stage_prefix, read_only=True).restore(
            dataclasses.replace(checkpoint, files=files), Path(scratch)
        )
        directory.mkdir(parents=True, exist_ok=True)
        for path in (Path(scratch) / sub).iterdir():
            shutil.move(path, directory / path.name)
    return checkpoint


def load_expert_for_sampling(
    store: Store, k: int, *, device: torch.device | str = "cpu", ema: bool = True
) -> PixArtTransformer2DModel:
    """Expert k's final EMA weights as a ready-to-use expert (PixArt, or Wan for video; eval mode)."""
    return _load_final(store, layout.expert(k), device=device, ema=ema)  # type: ignore[return-value]


def load_router_for_sampling(store: Store, *, device: torch.device | str = "cpu", ema: bool = True) -> RouterModel:
    """The router's final EMA weights as a ready-to-use RouterModel (eval mode)."""
    return _load_final(store, layout.ROUTER, device=device, ema=ema)  # type: ignore[return-value]


def _load_final(store: Store, stage_prefix: str, *, device: torch.device | str, ema: bool) -> ModelMixin:
    with tempfile.TemporaryDirectory(prefix="atoll-load-") as scratch:
        fetch_final_weights(store, stage_prefix, Path(scratch), ema=ema)
        return model_from_directory(Path(scratch), device=device)
