"""The user-facing API: the DDMRun spec models and the model presets they name."""

from atoll.api.errors import SpecError
from atoll.api.load import load_manifest, load_spec_json
from atoll.api.presets import PRESET_NAMES, PRESETS, Preset
from atoll.api.spec import API_GROUP, API_GROUP_VERSION, API_VERSION, DDMRunManifest, DDMRunSpec, Recipe

__all__ = [
    "API_GROUP",
    "API_GROUP_VERSION",
    "API_VERSION",
    "PRESETS",
    "PRESET_NAMES",
    "DDMRunManifest",
    "DDMRunSpec",
    "Preset",
    "Recipe",
    "SpecError",
    "load_manifest",
    "load_spec_json",
]
