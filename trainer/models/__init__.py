"""The diffusers models Atoll trains: PixArt-style experts and the DiT-style router.

Builders take a preset name and the data's shapes; loaders return trained models from a
saved directory or from a stage's final checkpoint (EMA weights) for sampling.
"""

from atoll.trainer.models.common import ModelConfigError
from atoll.trainer.models.expert import build_expert, expert_config, expert_parameter_count, velocity
from atoll.trainer.models.loading import (
    fetch_final_weights,
    final_checkpoint,
    load_expert_for_sampling,
    load_router_for_sampling,
    model_from_config,
    model_from_directory,
)

__all__ = [
    "ModelConfigError",
    "build_expert",
    "expert_config",
    "expert_parameter_count",
    "fetch_final_weights",
    "final_checkpoint",
    "load_expert_for_sampling",
    "load_router_for_sampling",
    "model_from_config",
    "model_from_directory",
    "velocity",
]
