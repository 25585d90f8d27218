"""Presets: architectures and training recipes are separate registries read through one API.

A recipe is written once and shared by the presets that name it; the spec's defaults, the
CRD's CEL rules, the planner's workload and the trainer's model configs all read the
same `PRESETS` entry, so changing it changes every consumer at once.
"""

from __future__ import annotations

import dataclasses

import pytest

from atoll.api import ARCHITECTURES, PRESET_NAMES, PRESETS, RECIPES, Architecture, DDMRunSpec, get_preset
from atoll.api.presets import PRESET_RECIPES, PresetError
from atoll.operator.crd.definitions import all_crds
from atoll.operator.placement import workload_of
from atoll.trainer.models.expert import expert_config
from atoll.trainer.models.router import router_config


def _spec(preset: str = "tiny") -> DDMRunSpec:
    return DDMRunSpec.model_validate(
        {"dataset": {"uri": "builtin://digits"}, "expert": {"preset": preset}, "router": {"preset": preset}}
    )


def test_each_recipe_is_written_once_and_shared_by_the_presets_naming_it() -> None:
    assert set(PRESETS) == set(PRESET_NAMES) == set(ARCHITECTURES) == set(PRESET_RECIPES)
    dit = [name for name in PRESET_NAMES if name.startswith("dit-")]
    assert {PRESET_RECIPES[name] for name in dit} == {"dit"}
    assert all(PRESETS[name].recipe is RECIPES["dit"] for name in dit)  # one object, not copies
    assert PRESETS["tiny"].recipe is RECIPES["cpu"]
    # The recipe carries no shape and the architecture no optimisation hyper-parameter.
    recipe_fields = {f.name for f in dataclasses.fields(RECIPES["dit"])}
    shape_fields = {f.name for f in dataclasses.fields(ARCHITECTURES["dit-xl/2"])}
    assert recipe_fields.isdisjoint(shape_fields)
    assert "learning_rate" in recipe_fields
    assert "hidden_size" in shape_fields


def test_published_numbers() -> None:
    xl = get_preset("dit-xl/2")
    assert (xl.architecture.hidden_size, xl.architecture.depth, xl.architecture.heads) == (1152, 28, 16)
    assert xl.architecture.patch == (2, 2)
    assert (xl.recipe.learning_rate, xl.recipe.global_batch_size, xl.recipe.ema_decay) == (1e-4, 256, 0.9999)
    with pytest.raises(PresetError, match="unknown preset 'dit-xxl': use one of tiny, tiny-w2, dit-s/2"):
        get_preset("dit-xxl")


def test_every_consumer_reads_the_one_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = _spec("tiny")
    before = spec.expert.recipe()
    assert before.global_batch_size == RECIPES["cpu"].global_batch_size
    changed = dataclasses.replace(
        PRESETS["tiny"],
        architecture=dataclasses.replace(ARCHITECTURES["tiny"], hidden_size=96, heads=3),
        recipe=dataclasses.replace(RECIPES["cpu"], global_batch_size=48, learning_rate=5e-4),
    )
    monkeypatch.setitem(PRESETS, "tiny", changed)
    # The spec's defaults.
    assert spec.expert.recipe().global_batch_size == 48
    assert spec.router.recipe().learning_rate == 5e-4
    # The planner's memory and speed model.
    assert workload_of(spec).architecture.hidden_size == 96
    # The trainer's model configs.
    assert expert_config("tiny", latent_shape=(3, 16, 16), text_dim=8)["attention_head_dim"] == 32
    assert router_config("tiny", clusters=2, latent_shape=(3, 16, 16))["num_attention_heads"] == 3


def test_the_crd_rules_carry_every_recipe_batch() -> None:
    crds = str(all_crds())  # microBatchSize ≤ the preset's recipe batch, as a CEL map
    for name, preset in PRESETS.items():
        assert f"'{name}': {preset.recipe.global_batch_size}" in crds


def test_architectures_count_tokens_for_images_and_clips() -> None:
    image = ARCHITECTURES["dit-xl/2"]
    assert image.tokens((4, 32, 32)) == 256
    clip = Architecture(family="wan", hidden_size=64, depth=2, heads=2, patch=(1, 2, 2))
    assert clip.tokens((16, 8, 16, 16)) == 8 * 8 * 8  # frames × h × w / patch volume
    assert clip.patch_volume == 4
    # Patch embedding and final layer grow with the patch volume: (4 - 1) × 16 channels × 64 wide each.
    finer = dataclasses.replace(clip, patch=(1, 1, 1))
    assert clip.approx_parameters(16, 64) - finer.approx_parameters(16, 64) == 2 * 3 * 16 * 64
    with pytest.raises(PresetError, match=r"takes latents \[C, T, H, W\]"):
        clip.tokens((16, 16, 16))
    with pytest.raises(PresetError, match="a wan patch has 3 positive sides"):
        Architecture(family="wan", hidden_size=64, depth=2, heads=2, patch=(2, 2))
    with pytest.raises(PresetError, match="not divisible by 3 heads"):
        Architecture(family="dit", hidden_size=64, depth=2, heads=3, patch=(2, 2))
