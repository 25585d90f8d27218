"""The user-facing API: the DDMRun spec models and the model presets they name."""

from atoll.api.errors import SpecError
from atoll.api.load import load_manifest, load_spec_json
from atoll.api.presets import (
    ARCHITECTURES,
    PRESET_NAMES,
    PRESETS,
    RECIPES,
    Architecture,
    Preset,
    TrainingRecipe,
    get_preset,
)
from atoll.api.spec import API_GROUP, API_GROUP_VERSION, API_VERSION, DDMRunManifest, DDMRunSpec, Recipe

__all__ = [
    "API_GROUP",
    "API_GROUP_VERSION",
    "API_VERSION",
    "ARCHITECTURES",
    "PRESETS",
    "PRESET_NAMES",
    "RECIPES",
    "Architecture",
    "DDMRunManifest",
    "DDMRunSpec",
    "Preset",
    "Recipe",
    "SpecError",
    "TrainingRecipe",
    "get_preset",
    "load_manifest",
    "load_spec_json",
]
