"""The data sections of a DDMRun: the dataset (where examples come from, how they are encoded)
and the partition (how they are split into the K clusters, one expert each).

Pydantic models whose JSON schema is part of the CRD schema (see atoll.api.spec). Pure data:
never import torch or Kubernetes clients here.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from atoll.api.base import SpecModel
from atoll.api.uris import (
    BUILTIN_IMAGE_DATASETS,
    BUILTIN_VIDEO_DATASETS,
    DATASET_URI_PATTERN,
    RULES,
    checked_uri,
)


class DatasetSpec(SpecModel):
    """Where the training data comes from and how it is represented for the experts."""

    uri: str = Field(
        description=(
            "Dataset location: builtin://digits, builtin://shapes (images),"
            " builtin://moving-digits, builtin://moving-shapes (video clips; bouncing-digits and"
            " bouncing-shapes: half the moving clips bounce off the walls), a folder of images or"
            " videos (.mp4, .gif) with .txt caption sidecars, a folder or s3://bucket/prefix of"
            f" WebDataset-style tar shards (.tar). URI rules: {RULES}."
        ),
        json_schema_extra={"pattern": DATASET_URI_PATTERN, "maxLength": 1024},
        min_length=1,
    )
    resolution: int = Field(
        default=32,
        ge=8,
        le=2048,
        multiple_of=8,
        description="Side in pixels of the square images the model is trained on.",
    )
    max_examples: int | None = Field(
        default=None,
        ge=1,
        description="Use at most this many examples (the first ones in a fixed order); all when unset.",
    )
    vae: Literal["identity", "sd-vae-ft-mse", "wan2.1-vae"] = Field(
        default="identity",
        description=(
            "Autoencoder that maps images or clips to the latents the experts learn: identity"
            " trains in pixel space, sd-vae-ft-mse is Stable Diffusion's image VAE, wan2.1-vae"
            " Wan 2.1's video VAE (frames = 1 + 4n); weights must be present locally."
        ),
    )
    text_encoder: Literal["hashed-bow", "clip-vitl14"] = Field(
        default="hashed-bow",
        description=(
            "Caption encoder whose token embeddings condition the experts by"
            " cross-attention: hashed-bow is an offline hashed bag of words, clip-vitl14 is"
            " CLIP ViT-L/14's text tower (weights must be present locally)."
        ),
    )
    seed: int = Field(default=0, ge=0, description="Seed of procedural built-in datasets.")
    frames: int = Field(
        default=1,
        ge=1,
        le=257,
        validate_default=True,
        description="Frames per example: 1 trains on images, more on video clips of this many frames.",
    )
    fps: float = Field(
        default=8.0,
        gt=0,
        le=120,
        description="Frames per second clips are sampled at (video only: frames > 1).",
    )

    @field_validator("uri")
    @classmethod
    def _uri_rules(cls, value: str) -> str:
        return checked_uri(value, dataset=True)

    @field_validator("frames")
    @classmethod
    def _frames_fit_builtin(cls, value: int, info: ValidationInfo) -> int:
        name = builtin_name(str(info.data.get("uri", "")))
        if name in BUILTIN_VIDEO_DATASETS and value < 2:
            raise ValueError(f"builtin://{name} is a video dataset: set dataset.frames to 2 or more")
        if name in BUILTIN_IMAGE_DATASETS and value > 1:
            raise ValueError(
                f"builtin://{name} holds images: dataset.frames must be 1 (or use builtin://moving-{name})"
            )
        vae = info.data.get("vae")
        if vae == "sd-vae-ft-mse" and value > 1:
            raise ValueError("the sd-vae-ft-mse VAE encodes images: use vae identity or wan2.1-vae for clips")
        if vae == "wan2.1-vae" and (value < 2 or (value - 1) % 4):
            raise ValueError(f"the wan2.1-vae VAE needs 1 + 4n frames (5, 9, 17, …), got {value}")
        return value

    @property
    def video(self) -> bool:
        """Whether examples are clips (frames > 1) rather than images."""
        return self.frames > 1


def builtin_name(uri: str) -> str | None:
    """The built-in dataset a uri names, None for other URIs."""
    return uri.removeprefix("builtin://") if uri.startswith("builtin://") else None


class PartitionSpec(SpecModel):
    """How the dataset is split into K disjoint clusters, one expert each."""

    clusters: int = Field(default=8, ge=1, le=256, description="Number of clusters K, and so of experts.")
    features: Literal["dinov2-vitl14", "clip-vitl14", "pixels"] = Field(
        default="pixels",
        description=(
            "Image features the clustering runs on: DINOv2 ViT-L/14 (the papers' choice),"
            " CLIP ViT-L/14 (both need spec.weights), or the raw pixels. The default is pixels"
            " because it needs no weights, so a run with every default runs on any cluster."
        ),
    )
    fine_clusters: int = Field(
        default=1024,
        ge=2,
        le=65536,
        description=(
            "Fine k-means clusters fitted on a sample before the K coarse clusters are"
            " formed over their centroids; capped at a quarter of the sample."
        ),
    )
    sample_size: int = Field(
        default=200_000,
        ge=16,
        description="Examples the fine clusters are fitted on.",
    )
    iterations: int = Field(default=25, ge=1, le=1000, description="Lloyd iterations per level.")
    balanced: bool = Field(
        default=True,
        description="Balance cluster sizes (recommended: plain k-means makes catch-all clusters).",
    )
    seed: int = Field(default=0, ge=0, description="Seed of sampling and initialisation.")
