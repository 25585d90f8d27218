"""The assembled model directory on disk: completeness checks, component loading, diffusers' entry point.

A model directory is diffusers' layout (model_index.json, one folder per component) plus
`assembled.json`, written last, listing every file and its size, and `pipeline_ddm.py`,
the small module through which `diffusers.DiffusionPipeline.from_pretrained(DIR,
trust_remote_code=True)` finds the DDMPipeline class (model_index.json names it as
["pipeline_ddm", "DDMPipeline"], the way diffusers' custom pipelines are shipped). Reads
and writes files only: sampling lives in atoll.trainer.pipeline.
"""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path
from typing import Any

import torch

from atoll.errors import AtollError

MARKER = "assembled.json"
"""Written last by save_pretrained: a model directory without it is incomplete."""
PIPELINE_MODULE = "pipeline_ddm"
"""The module file (pipeline_ddm.py) diffusers imports the pipeline class from."""
PIPELINE_CLASS = "DDMPipeline"
_EXPERT = re.compile(r"^expert_(\d+)$")
_LIBRARIES = ("diffusers", "transformers")


class ModelDirError(AtollError):
    """A model directory that is missing, incomplete or not a DDM."""


def pipeline_module_source(experts: int) -> str:
    """The text of pipeline_ddm.py for a model of `experts` experts."""
    return (
        '"""Atoll\'s DDMPipeline for diffusers: DiffusionPipeline.from_pretrained(DIR, trust_remote_code=True).\n\n'
        "Written by Atoll's assemble stage; needs the `atoll` package installed (pip install atoll).\n"
        '"""\n\n'
        "from atoll.trainer.pipeline import ddm_pipeline_class\n\n"
        f"DDMPipeline = ddm_pipeline_class(experts={experts})\n"
    )


def finish_model_dir(directory: Path, experts: int) -> None:
    """After diffusers' save_pretrained: point model_index.json at pipeline_ddm.py, write it, then the marker."""
    index_path = directory / "model_index.json"
    index = json.loads(index_path.read_text())
    index["_class_name"] = [PIPELINE_MODULE, PIPELINE_CLASS]
    index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    (directory / f"{PIPELINE_MODULE}.py").write_text(pipeline_module_source(experts))
    files = {
        path.relative_to(directory).as_posix(): path.stat().st_size
        for path in sorted(directory.rglob("*"))
        if path.is_file() and path.name != MARKER and "__pycache__" not in path.parts
    }
    marker = {"experts": experts, "files": files}
    (directory / MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True))


def check_model_dir(directory: Path) -> dict[str, Any]:
    """model_index.json of a complete model directory, or a ModelDirError saying what is wrong."""
    if not directory.is_dir():
        raise ModelDirError(f"{directory} is not a model directory (expected a run's model/ folder)")
    marker_path = directory / MARKER
    if not marker_path.is_file():
        raise ModelDirError(
            f"{directory} is incomplete: {MARKER} is missing (the assemble stage has not finished; run it again)"
        )
    marker = json.loads(marker_path.read_text())
    for name, size in marker.get("files", {}).items():
        path = directory / name
        if not path.is_file() or path.stat().st_size != size:
            raise ModelDirError(f"{directory} is damaged: {name} is missing or has the wrong size")
    index: dict[str, Any] = json.loads((directory / "model_index.json").read_text())
    class_name = index.get("_class_name")
    if class_name not in (PIPELINE_CLASS, [PIPELINE_MODULE, PIPELINE_CLASS]):
        raise ModelDirError(f"{directory} holds a {class_name}, not a {PIPELINE_CLASS}")
    if expert_count(index) != marker.get("experts"):
        raise ModelDirError(f"{directory}: model_index.json and {MARKER} disagree on the number of experts")
    return index


def has_component(index: dict[str, Any], name: str) -> bool:
    """Whether model_index.json records component `name` (not null)."""
    entry = index.get(name)
    return isinstance(entry, list | tuple) and len(entry) == 2 and entry[0] is not None


def expert_count(index: dict[str, Any]) -> int:
    """K, from the expert_0 … expert_{K-1} entries of model_index.json."""
    numbers = sorted(int(m.group(1)) for key in index if (m := _EXPERT.match(key)))
    if numbers != list(range(len(numbers))) or not numbers:
        raise ModelDirError(f"model_index.json must list expert_0 … expert_{{K-1}}, found experts {numbers}")
    return len(numbers)


def load_component(directory: Path, name: str, entry: Any) -> torch.nn.Module:
    """Load one model component through its class's from_pretrained (local files only)."""
    if not isinstance(entry, list | tuple) or len(entry) != 2 or entry[0] is None:
        raise ModelDirError(f"{directory}/model_index.json: component {name} is not recorded as [library, class]")
    library, class_name = str(entry[0]), str(entry[1])
    if library not in _LIBRARIES and not library.startswith("atoll."):
        raise ModelDirError(f"{directory}: component {name} comes from {library}, which DDMPipeline does not load")
    cls = getattr(importlib.import_module(library), class_name, None)
    if cls is None:
        raise ModelDirError(f"{directory}: component {name}: {library} has no class {class_name}")
    model: torch.nn.Module = cls.from_pretrained(str(directory / name), local_files_only=True)
    return model.eval()
