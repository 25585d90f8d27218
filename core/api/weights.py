"""spec.weights: where the pretrained encoders (DINOv2, CLIP, sd-vae-ft-mse, Wan's VAE) come from.

`none` (the default): only the offline encoders (pixel features, hashed-bow captions,
the identity VAE) may be chosen, so a run with every default needs no weights and runs
anywhere. `hub`: the Hugging Face hub, cached in `path` (a volume, where the cluster has
internet; offline the cache must already hold the model). `store`: save_pretrained copies
under an s3:// (or local) prefix, one directory per model name, read with the run's store
credentials. `volume`: the same layout in a mounted directory (`path`, else
$ATOLL_WEIGHTS_DIR). A spec that picks a pretrained encoder with source `none` is refused
with the encoder's field named. Pure data: never import torch here.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from atoll.api.base import SpecModel
from atoll.api.uris import ABSOLUTE_PATH_PATTERN, RULES, STORE_URI_PATTERN, absolute_path_problem, uri_problem

WeightsSource = Literal["none", "hub", "store", "volume"]

PRETRAINED: dict[tuple[str, str], frozenset[str]] = {
    ("partition", "features"): frozenset({"dinov2-vitl14", "clip-vitl14"}),
    ("dataset", "vae"): frozenset({"sd-vae-ft-mse", "wan2.1-vae"}),
    ("dataset", "textEncoder"): frozenset({"clip-vitl14"}),
}
"""(section, field) → the choices of that field that load pretrained weights."""


class WeightsSpec(SpecModel):
    """Where pretrained encoder weights come from (offline encoders need none)."""

    source: WeightsSource = Field(
        default="none",
        description=(
            "none: only offline encoders (pixels, hashed-bow, identity), the default, runs"
            " anywhere; hub: the Hugging Face hub (cache in path); store: save_pretrained copies"
            " under uri, one directory per model (dinov2-vitl14/, clip-vitl14/, sd-vae-ft-mse/, wan2.1-vae/);"
            " volume: the same layout in a mounted directory (path, else $ATOLL_WEIGHTS_DIR)."
        ),
    )
    uri: str | None = Field(
        default=None,
        validate_default=True,
        json_schema_extra={"pattern": STORE_URI_PATTERN, "maxLength": 1024},
        description=(
            "source store only: s3://bucket/prefix (read with the run's store credentials) or a"
            f" path holding one directory per model. URI rules: {RULES}."
        ),
    )
    path: str | None = Field(
        default=None,
        json_schema_extra={"pattern": ABSOLUTE_PATH_PATTERN, "maxLength": 1024},
        description=(
            "source volume: the directory where the weights volume is mounted (mount it with"
            " spec.template); source hub: the Hugging Face cache directory. Absolute."
        ),
    )

    @field_validator("uri")
    @classmethod
    def _uri_for_store(cls, value: str | None, info: ValidationInfo) -> str | None:
        source = info.data.get("source")
        if value is None:
            if source == "store":
                raise ValueError("is required when source is store")
            return value
        if source is not None and source != "store":
            raise ValueError("applies to source store only")
        if problem := uri_problem(value):
            raise ValueError(problem)
        return value

    @field_validator("path")
    @classmethod
    def _path_for_hub_or_volume(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return value
        source = info.data.get("source")
        if source is not None and source not in ("hub", "volume"):
            raise ValueError("applies to source hub or volume only")
        if problem := absolute_path_problem(value):
            raise ValueError(problem)
        return value
