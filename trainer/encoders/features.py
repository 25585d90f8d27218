"""Features the partition stage clusters: raw pixels (offline), DINOv2 ViT-L/14 or CLIP ViT-L/14.

A FeatureEncoder maps images [n, 3, R, R] (or clips [n, 3, F, R, R]) in [-1, 1] to
features [n, D] float32. For clips, pixel features keep time (the clip pooled into a few
temporal segments, so where the content is early and late — its motion — is part of the
feature), and the pretrained image encoders see key frames whose features are mean
pooled. The real encoders load through transformers from local weights (see weights.py)
and apply their published preprocessing in torch; features are not normalised here
(kmeans.py does).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812

from atoll.api.weights import WeightsSpec
from atoll.trainer.encoders.weights import load_local

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PIXEL_SIDE = 16
"""Pixel features are the image average-pooled to at most 16×16 (768 numbers in colour)."""
CLIP_SEGMENTS, CLIP_SIDE = 4, 8
"""Pixel features of a clip: its frames pooled into 4 temporal segments of at most 8×8 each (768 numbers)."""
KEY_FRAMES = 4
"""Pretrained image encoders see this many evenly spaced frames of a clip."""


class FeatureEncoder(ABC):
    """Images → one feature vector each."""

    name: str
    dim: int
    """Feature width D."""

    @abstractmethod
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """[n, 3, R, R] in [-1, 1] (any device) → [n, D] float32 on the encoder's device."""


class PixelFeatures(FeatureEncoder):
    """The image itself, average-pooled to at most 16×16 and flattened (offline, no weights)."""

    name = "pixels"

    def __init__(self, resolution: int, device: torch.device | str = "cpu") -> None:
        self.side = min(resolution, PIXEL_SIDE)
        self.dim = 3 * self.side * self.side
        self.device = torch.device(device)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        pooled = F.adaptive_avg_pool2d(images.to(self.device, torch.float32), self.side)
        return pooled.flatten(1)


class ClipPixelFeatures(FeatureEncoder):
    """A clip average-pooled to a few temporal segments of a small side and flattened (offline).

    Unlike the mean frame, it tells a digit moving left from the same digit moving right:
    the segments hold the content where it is at the start, middle and end of the clip.
    """

    name = "pixels"

    def __init__(self, resolution: int, frames: int, device: torch.device | str = "cpu") -> None:
        self.segments = min(frames, CLIP_SEGMENTS)
        self.side = min(resolution, CLIP_SIDE)
        self.dim = 3 * self.segments * self.side * self.side
        self.device = torch.device(device)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        clips = images.to(self.device, torch.float32)
        return F.adaptive_avg_pool3d(clips, (self.segments, self.side, self.side)).flatten(1)


class KeyFrameFeatures(FeatureEncoder):
    """A pretrained image encoder on a clip's evenly spaced key frames, mean pooled."""

    def __init__(self, image_encoder: FeatureEncoder, frames: int) -> None:
        self.image_encoder = image_encoder
        self.name = image_encoder.name
        self.dim = image_encoder.dim
        count = min(frames, KEY_FRAMES)
        self.key_frames = sorted({round(k * (frames - 1) / max(1, count - 1)) for k in range(count)})

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        n = images.shape[0]
        frames = images[:, :, self.key_frames].transpose(1, 2).flatten(0, 1)  # [n·K, 3, R, R]
        return self.image_encoder.encode(frames).view(n, len(self.key_frames), -1).mean(dim=1)


class _VisionTransformerFeatures(FeatureEncoder):
    """Shared preprocessing of the transformers vision encoders: resize, [0, 1], normalise."""

    def __init__(self, model: Any, side: int, mean: tuple[float, ...], std: tuple[float, ...], device: str) -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.side = side
        self.mean = torch.tensor(mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=self.device).view(1, 3, 1, 1)

    def _pixel_values(self, images: torch.Tensor) -> torch.Tensor:
        x = (images.to(self.device, torch.float32) + 1.0) / 2.0
        if x.shape[-1] != self.side:
            x = F.interpolate(x, size=(self.side, self.side), mode="bicubic", align_corners=False, antialias=True)
        return (x.clamp(0.0, 1.0) - self.mean) / self.std


class Dinov2Features(_VisionTransformerFeatures):
    """DINOv2 ViT-L/14 (facebook/dinov2-large): the CLS token after the final layer norm, D = 1024."""

    name = "dinov2-vitl14"
    repo_id = "facebook/dinov2-large"

    def __init__(self, device: str = "cpu", weights: WeightsSpec | None = None) -> None:
        from transformers import Dinov2Model

        model = load_local(
            self.name,
            self.repo_id,
            Dinov2Model.from_pretrained,
            field="partition.features",
            weights=weights,
        )
        patch = _config_int(model, "patch_size")
        side = min(224, _config_int(model, "image_size")) // patch * patch  # 224: DINOv2's evaluation crop
        super().__init__(model, side, IMAGENET_MEAN, IMAGENET_STD, device)
        self.dim = _config_int(model, "hidden_size")

    @torch.inference_mode()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        output = self.model(pixel_values=self._pixel_values(images))
        cls: torch.Tensor = output.pooler_output
        return cls.float()


class ClipImageFeatures(_VisionTransformerFeatures):
    """CLIP ViT-L/14 (openai/clip-vit-large-patch14): the projected image embedding, D = 768."""

    name = "clip-vitl14"
    repo_id = "openai/clip-vit-large-patch14"

    def __init__(self, device: str = "cpu", weights: WeightsSpec | None = None) -> None:
        from transformers import CLIPVisionModelWithProjection

        model = load_local(
            self.name,
            self.repo_id,
            CLIPVisionModelWithProjection.from_pretrained,
            field="partition.features",
            weights=weights,
        )
        super().__init__(model, _config_int(model, "image_size"), CLIP_MEAN, CLIP_STD, device)
        self.dim = _config_int(model, "projection_dim")

    @torch.inference_mode()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        output = self.model(pixel_values=self._pixel_values(images))
        embeds: torch.Tensor = output.image_embeds
        return embeds.float()


def _config_int(model: Any, name: str) -> int:
    value: Any = getattr(model.config, name)
    return int(value)


def feature_encoder_for(
    name: str, resolution: int, device: str = "cpu", *, frames: int = 1, weights: WeightsSpec | None = None
) -> FeatureEncoder:
    """The partition.features encoder `name` (pixels, dinov2-vitl14, clip-vitl14) on `device`, for
    images (frames = 1) or clips of `frames` frames; pretrained ones loaded from the source `weights`
    names (see weights.py)."""
    if name == "pixels":
        return PixelFeatures(resolution, device) if frames == 1 else ClipPixelFeatures(resolution, frames, device)
    encoder: FeatureEncoder
    if name == "dinov2-vitl14":
        encoder = Dinov2Features(device, weights)
    elif name == "clip-vitl14":
        encoder = ClipImageFeatures(device, weights)
    else:
        raise ValueError(f"partition.features: unknown feature encoder {name!r}")
    return encoder if frames == 1 else KeyFrameFeatures(encoder, frames)
