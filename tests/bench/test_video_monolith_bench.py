"""The video DDM-vs-monolith benchmark's monoliths follow the quickstart manifest's expert preset."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from atoll.api.presets import get_preset
from bench.comparison import monolith_presets

QUICKSTART = Path(__file__).resolve().parents[2] / "manifests" / "examples" / "video-quickstart.yaml"


@pytest.mark.parametrize("preset", ["video-nano", "video-tiny"])
def test_the_monoliths_are_the_expert_preset_and_its_twice_as_wide_variant(preset: str) -> None:
    narrow, wide = monolith_presets(preset)
    assert narrow == preset
    expert, monolith = get_preset(narrow).architecture, get_preset(wide).architecture
    assert monolith.hidden_size == 2 * expert.hidden_size
    assert (monolith.family, monolith.depth, monolith.patch) == (expert.family, expert.depth, expert.patch)
    assert monolith.absolute_positions == expert.absolute_positions


def test_the_quickstart_manifest_has_both_monoliths() -> None:
    preset = yaml.safe_load(QUICKSTART.read_text())["spec"]["expert"]["preset"]
    assert monolith_presets(preset)[0] == preset
    with pytest.raises(SystemExit, match="no wide variant"):
        monolith_presets("video-s")
