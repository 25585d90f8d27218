"""The files of a training checkpoint: everything needed to continue exactly, and to sample.

    model/   config.json + diffusion_pytorch_model.safetensors   raw weights (diffusers layout)
    ema/     config.json + diffusion_pytorch_model.safetensors   EMA weights: what sampling loads
    optimizer.pt        AdamW and learning-rate schedule state
    rng.pt              torch RNG states (training randomness itself is derived from the seed)
    trainer_state.json  step, seed, data order, batch split, recipe, the task's description

Writing goes to a local staging directory (the CheckpointStore uploads it); reading loads a
restored directory into live objects. Never touches the store itself.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from atoll.errors import BadInputError

MODEL_DIR = "model"
EMA_DIR = "ema"
OPTIMIZER_FILE = "optimizer.pt"
RNG_FILE = "rng.pt"
STATE_FILE = "trainer_state.json"
WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"


class CheckpointMismatchError(BadInputError):
    """A checkpoint was made by a different recipe, model or dataset than this run's."""


@dataclass(kw_only=True)
class TrainerState:
    """trainer_state.json: where training stands and what made it."""

    step: int
    """Optimizer steps completed."""
    total_steps: int
    seed: int
    global_batch: int
    examples: int
    data_order: str
    micro_batch: int
    grad_accum: int
    world: int
    ema_step: int
    shuffle_buffer: int = 0
    """Examples shuffled together by the stream (part of the data order)."""
    loss: float | None = None
    final: bool = False
    recipe: dict[str, Any] = field(default_factory=dict)
    task: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TrainerState:
        return cls(**json.loads(text))

    def check_compatible(self, current: TrainerState, *, section: str) -> None:
        """Refuse to continue from a checkpoint whose data order or objective differ from this run's.

        The batch split (micro-batch × accumulation × GPUs) and the total steps may change;
        the seed, the global batch, the data and the task may not.
        """
        checks = (
            ("seed", f"{section}.seed", self.seed, current.seed),
            ("global batch", f"{section}.globalBatchSize", self.global_batch, current.global_batch),
            ("examples", "the cluster data (partition)", self.examples, current.examples),
            ("data order", "the trainer version", self.data_order, current.data_order),
            ("shuffle buffer", f"{section}.shuffleBuffer", self.shuffle_buffer, current.shuffle_buffer),
            ("task", f"{section} (preset, data shapes or objective)", self.task, current.task),
        )
        for what, field_name, saved, now in checks:
            if saved != now:
                raise CheckpointMismatchError(
                    f"checkpoint at step {self.step} was made with {what} {saved!r}, this run has {now!r}:"
                    f" {field_name} changed since; restore it or start the stage afresh in a new store prefix"
                )


def save_weights(directory: Path, model: torch.nn.Module, tensors: dict[str, torch.Tensor] | None = None) -> None:
    """Write a diffusers model directory: config.json and safetensors of `tensors` (default: the model's own)."""
    directory.mkdir(parents=True, exist_ok=True)
    model.save_config(directory)  # type: ignore[operator]
    state = model.state_dict() if tensors is None else tensors
    save_file(
        {name: value.detach().to("cpu").contiguous() for name, value in state.items()},
        directory / WEIGHTS_FILE,
        metadata={"format": "pt"},
    )


def ema_state_dict(model: torch.nn.Module, shadow: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """The model's state dict with every parameter replaced by its EMA (buffers as they are)."""
    state = dict(model.state_dict())
    names = [name for name, _ in model.named_parameters()]
    if len(names) != len(shadow):
        raise ValueError(f"EMA tracks {len(shadow)} tensors, the model has {len(names)} parameters")
    for name, value in zip(names, shadow, strict=True):
        state[name] = value
    return state


def write_checkpoint(
    directory: Path,
    *,
    model: torch.nn.Module,
    ema_shadow: list[torch.Tensor],
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    state: TrainerState,
) -> None:
    """Stage every file of a checkpoint under `directory` (local disk)."""
    save_weights(directory / MODEL_DIR, model)
    save_weights(directory / EMA_DIR, model, ema_state_dict(model, ema_shadow))
    torch.save({"optimizer": optimizer.state_dict(), "schedule": schedule.state_dict()}, directory / OPTIMIZER_FILE)
    rng: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    torch.save(rng, directory / RNG_FILE)
    (directory / STATE_FILE).write_text(state.to_json())


def read_state(directory: Path) -> TrainerState:
    """trainer_state.json of a restored checkpoint."""
    return TrainerState.from_json((directory / STATE_FILE).read_text())


def load_checkpoint(
    directory: Path,
    *,
    model: torch.nn.Module,
    ema_shadow: list[torch.Tensor],
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
) -> TrainerState:
    """Load a restored checkpoint into live objects (model and EMA in place); returns its state."""
    state = read_state(directory)
    _check_config(directory / MODEL_DIR, model)
    model.load_state_dict(load_file(directory / MODEL_DIR / WEIGHTS_FILE, device="cpu"), strict=True)
    ema = load_file(directory / EMA_DIR / WEIGHTS_FILE, device="cpu")
    names = [name for name, _ in model.named_parameters()]
    with torch.no_grad():
        for name, shadow in zip(names, ema_shadow, strict=True):
            shadow.copy_(ema[name])
    saved = torch.load(directory / OPTIMIZER_FILE, map_location="cpu", weights_only=True)
    optimizer.load_state_dict(saved["optimizer"])
    schedule.load_state_dict(saved["schedule"])
    rng = torch.load(directory / RNG_FILE, map_location="cpu", weights_only=True)
    torch.set_rng_state(rng["cpu"])
    if "cuda" in rng and torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return state


def _check_config(directory: Path, model: torch.nn.Module) -> None:
    saved = json.loads((directory / "config.json").read_text())
    current = json.loads(model.to_json_string())  # type: ignore[operator]
    differing = sorted(
        key for key in set(saved) | set(current) if not key.startswith("_") and saved.get(key) != current.get(key)
    )
    if differing:
        details = ", ".join(f"{key}: {saved.get(key)!r} → {current.get(key)!r}" for key in differing)
        raise CheckpointMismatchError(
            f"the checkpoint's model differs from this run's ({details}): was the preset changed?"
        )
