"""CLIP text–video similarity (CLIPSIM; CLIP score for images), when CLIP ViT-L/14 is present locally.

For each generated clip: the cosine similarity between the CLIP text embedding of its
caption and the CLIP image embedding of each frame, averaged over the frames; the metric is
the mean over clips (raw cosine, not ×100 and not clipped at 0). An image is a one-frame
clip. The model is `clip-vitl14` (openai/clip-vit-large-patch14), found the way the
partition's clip-vitl14 features find it (encoders/weights.py); nothing is ever downloaded
here: without the weights the metric is reported unavailable with where it looked.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812

from atoll.api.weights import WeightsSpec
from atoll.trainer.encoders.text import CLIP_REPO
from atoll.trainer.encoders.weights import WeightsNotFoundError, load_local

CLIP_NAME = "clip-vitl14"
FIELD = "the clipSimilarity metric"
"""Named in the weights lookup's errors as what chose the model."""


def clip_similarity(text_embeds: torch.Tensor, frame_embeds: torch.Tensor) -> torch.Tensor:
    """Per clip: the mean over its frames of cos(text, frame).

    text_embeds [n, d] (clip i's caption), frame_embeds [n, F, d] (clip i's frames) → [n].
    """
    if text_embeds.ndim != 2 or frame_embeds.ndim != 3 or frame_embeds.shape[::2] != text_embeds.shape:
        raise ValueError(
            f"need text [n, d] and frames [n, F, d], got {tuple(text_embeds.shape)} and {tuple(frame_embeds.shape)}"
        )
    text = F.normalize(text_embeds.float(), dim=-1)
    frames = F.normalize(frame_embeds.float(), dim=-1)
    return torch.einsum("nd,nfd->nf", text, frames).mean(dim=1)


@dataclass
class ClipScorer:
    """CLIP's two towers, its tokenizer and its image processor, loaded from one local copy."""

    model: Any
    tokenizer: Any
    processor: Any
    device: torch.device

    @property
    def weights(self) -> str:
        """Where the model was loaded from (a directory, or the hub repo id found in the cache)."""
        return str(self.model.name_or_path)

    @torch.inference_mode()
    def text_embeds(self, captions: Sequence[str], batch: int = 64) -> torch.Tensor:
        """Projected text embeddings [n, d] of the captions (truncated to CLIP's context)."""
        limit = int(self.model.config.text_config.max_position_embeddings)
        parts = []
        for i in range(0, len(captions), batch):
            tokens = self.tokenizer(
                list(captions[i : i + batch]), padding=True, truncation=True, max_length=limit, return_tensors="pt"
            )
            out = self.model.get_text_features(
                input_ids=tokens["input_ids"].to(self.device), attention_mask=tokens["attention_mask"].to(self.device)
            )
            parts.append(_pooled(out).float().cpu())
        return torch.cat(parts)

    @torch.inference_mode()
    def frame_embeds(self, clips: torch.Tensor, batch: int = 64) -> torch.Tensor:
        """Projected image embeddings [n, F, d] of every frame of clips [n, 3, F, R, R] (images [n, 3, R, R]) in
        [-1, 1]; frames go through CLIP's own image processor (uint8 RGB, resized and cropped to its size)."""
        clips = clips.unsqueeze(2) if clips.ndim == 4 else clips
        n, frames = clips.shape[0], clips.shape[2]
        flat = clips.transpose(1, 2).reshape(n * frames, clips.shape[1], *clips.shape[3:])
        as_uint8 = ((flat.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()
        parts = []
        for i in range(0, as_uint8.shape[0], batch):
            pixels = self.processor(images=list(as_uint8[i : i + batch]), return_tensors="pt")["pixel_values"]
            out = self.model.get_image_features(pixel_values=pixels.to(self.device, self.model.dtype))
            parts.append(_pooled(out).float().cpu())
        return torch.cat(parts).reshape(n, frames, -1)

    def __call__(self, clips: torch.Tensor, captions: Sequence[str]) -> float | None:
        """The mean CLIPSIM of clips (or images) against their captions; clips with an empty caption are left
        out (None when none has one)."""
        if clips.shape[0] != len(captions):
            raise ValueError(f"{clips.shape[0]} clips but {len(captions)} captions")
        keep = [i for i, caption in enumerate(captions) if caption.strip()]
        if not keep:
            return None
        text = self.text_embeds([captions[i] for i in keep])
        frames = self.frame_embeds(clips[keep])
        return float(clip_similarity(text, frames).mean())


def _pooled(output: Any) -> torch.Tensor:
    """get_*_features return the projected embedding itself (transformers 4) or in pooler_output (5)."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def load_clip_scorer(
    weights: WeightsSpec | None = None, device: torch.device | str = "cpu"
) -> tuple[ClipScorer | None, str]:
    """CLIP ViT-L/14 from the source spec.weights names ($ATOLL_WEIGHTS_DIR/clip-vitl14, then the Hugging
    Face cache, when the source is none or unset), never downloading; else None and why (for metrics.json)."""
    from transformers import CLIPImageProcessorPil, CLIPModel, CLIPTokenizer

    source = weights if weights is not None and weights.source != "none" else None

    def load(loader: Any) -> Any:
        return load_local(CLIP_NAME, CLIP_REPO, loader, field=FIELD, weights=source, download=False)

    try:
        model = load(CLIPModel.from_pretrained)
        tokenizer = load(CLIPTokenizer.from_pretrained)
        # The PIL backend: the same resize, crop and normalisation as the torchvision one, without torchvision.
        processor = load(CLIPImageProcessorPil.from_pretrained)
    except WeightsNotFoundError as error:
        return None, str(error)
    device = torch.device(device)
    return ClipScorer(model.to(device).eval(), tokenizer, processor, device), ""
