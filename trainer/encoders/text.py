"""Caption encoders: prompts → token embeddings [n, L, D] + mask [n, L], and their save/load.

`hashed-bow` (offline) is a diffusers ModelMixin: each word is hashed (crc32, stable across
processes) into a fixed random embedding table, plus a fixed position code so word order
matters ("red circle on a blue background" ≠ "blue circle on a red background"); token 0 is
always a start token, so even the empty caption has one unmasked token. `clip-vitl14` is
CLIP ViT-L/14's text tower through transformers (weights from weights.py).

Model directories (the assembled model's text_encoder/ and tokenizer/):
`save_text_encoder(encoder, text_encoder_dir, tokenizer_dir)` and
`load_text_encoder(text_encoder_dir, tokenizer_dir)`; `text_encoder_for(name)` builds one
from a spec name. Never trains: the encoders are frozen.
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from atoll.api.weights import WeightsSpec
from atoll.errors import AtollError
from atoll.trainer.encoders.weights import load_local

PAD, START = 0, 1
_WORD = re.compile(r"[a-z0-9]+")


class HashedBowTextEncoder(ModelMixin, ConfigMixin):  # type: ignore[misc]
    """A deterministic hashed bag-of-words caption encoder with a fixed position code (no training)."""

    @register_to_config  # type: ignore[untyped-decorator]
    def __init__(self, vocab_size: int = 4096, dim: int = 64, max_length: int = 16, seed: int = 0) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        generator = torch.Generator().manual_seed(seed)
        self.token_embedding = nn.Embedding(vocab_size, dim)
        self.position_embedding = nn.Embedding(max_length, dim)
        with torch.no_grad():
            self.token_embedding.weight.copy_(torch.randn(vocab_size, dim, generator=generator))
            self.token_embedding.weight[PAD].zero_()
            self.position_embedding.weight.copy_(0.5 * torch.randn(max_length, dim, generator=generator))
        self.requires_grad_(False)

    def tokenize(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids [n, L] (start token, then hashed words, then padding) and mask [n, L]."""
        length, buckets = int(self.config["max_length"]), int(self.config["vocab_size"]) - 2
        ids = torch.full((len(prompts), length), PAD, dtype=torch.long)
        for row, prompt in enumerate(prompts):
            words = _WORD.findall(prompt.lower())[: length - 1]
            tokens = [START] + [2 + zlib.crc32(word.encode()) % buckets for word in words]
            ids[row, : len(tokens)] = torch.tensor(tokens)
        return ids, ids != PAD

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Embeddings [n, L, D] of token ids; padded positions are zero."""
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        embedded = self.token_embedding(input_ids) + self.position_embedding(positions)
        masked: torch.Tensor = embedded * attention_mask.unsqueeze(-1).to(embedded.dtype)
        return masked

    @torch.inference_mode()
    def encode_prompts(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts → (text [n, L, D] float32, mask [n, L] bool) on the model's device."""
        ids, mask = self.tokenize(prompts)
        ids, mask = ids.to(self.device), mask.to(self.device)
        return self(ids, mask).float(), mask


class TextEncoder:
    """A frozen caption encoder (model + tokenizer, if it has one) behind `encode_prompts`."""

    def __init__(self, name: str, model: Any, tokenizer: Any = None) -> None:
        self.name = name
        self.model = model.eval()
        self.tokenizer = tokenizer
        if isinstance(model, HashedBowTextEncoder):
            self.length, self.dim = int(model.config.max_length), int(model.config.dim)
        else:
            self.length, self.dim = int(tokenizer.model_max_length), int(model.config.hidden_size)

    @property
    def shape(self) -> tuple[int, int]:
        """[L, D] of one encoded caption."""
        return self.length, self.dim

    def to(self, device: torch.device | str) -> TextEncoder:
        self.model.to(device)
        return self

    @torch.inference_mode()
    def encode_prompts(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts → (text [n, L, D] float32, mask [n, L] bool) on the model's device."""
        if isinstance(self.model, HashedBowTextEncoder):
            encoded: tuple[torch.Tensor, torch.Tensor] = self.model.encode_prompts(prompts)
            return encoded
        device = next(self.model.parameters()).device
        tokens = self.tokenizer(
            list(prompts), padding="max_length", max_length=self.length, truncation=True, return_tensors="pt"
        )
        ids, mask = tokens["input_ids"].to(device), tokens["attention_mask"].to(device)
        hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        return hidden.float(), mask.bool()


CLIP_REPO = "openai/clip-vit-large-patch14"


def text_encoder_for(
    name: str, device: torch.device | str = "cpu", *, weights: WeightsSpec | None = None
) -> TextEncoder:
    """The dataset.textEncoder `name` (hashed-bow, clip-vitl14) on `device`, pretrained ones
    loaded from the source `weights` names (see weights.py)."""
    if name == "hashed-bow":
        return TextEncoder(name, HashedBowTextEncoder()).to(device)
    if name == "clip-vitl14":
        from transformers import CLIPTextModel, CLIPTokenizer

        model = load_local(
            name,
            CLIP_REPO,
            CLIPTextModel.from_pretrained,
            field="dataset.textEncoder",
            weights=weights,
        )
        tokenizer = load_local(
            name,
            CLIP_REPO,
            CLIPTokenizer.from_pretrained,
            field="dataset.textEncoder",
            weights=weights,
        )
        return TextEncoder(name, model, tokenizer).to(device)
    raise ValueError(f"dataset.textEncoder: unknown text encoder {name!r}")


def save_text_encoder(encoder: TextEncoder, text_encoder_dir: str | Path, tokenizer_dir: str | Path | None) -> None:
    """save_pretrained the model into text_encoder_dir and its tokenizer (if any) into tokenizer_dir."""
    encoder.model.save_pretrained(str(text_encoder_dir))
    if encoder.tokenizer is not None:
        if tokenizer_dir is None:
            raise ValueError(f"{encoder.name} has a tokenizer: give a tokenizer_dir")
        encoder.tokenizer.save_pretrained(str(tokenizer_dir))


def load_text_encoder(
    text_encoder_dir: str | Path, tokenizer_dir: str | Path | None = None, device: torch.device | str = "cpu"
) -> TextEncoder:
    """Load what save_text_encoder wrote (the class is read from text_encoder_dir/config.json)."""
    config_path = Path(text_encoder_dir) / "config.json"
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as error:
        raise AtollError(f"{config_path}: not a saved text encoder ({error})") from None
    if config.get("_class_name") == HashedBowTextEncoder.__name__:
        return TextEncoder("hashed-bow", HashedBowTextEncoder.from_pretrained(str(text_encoder_dir))).to(device)
    if config.get("model_type") in ("clip_text_model", "clip"):
        from transformers import CLIPTextModel, CLIPTokenizer

        if tokenizer_dir is None:
            raise AtollError(f"{text_encoder_dir} is a CLIP text encoder: its tokenizer directory is needed too")
        model = CLIPTextModel.from_pretrained(str(text_encoder_dir), local_files_only=True)
        tokenizer = CLIPTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
        return TextEncoder("clip-vitl14", model, tokenizer).to(device)
    raise AtollError(
        f"{config_path}: unknown text encoder class {config.get('_class_name') or config.get('model_type')}"
    )
