"""Encoders behind one small interface per kind: partition features, caption encoders, VAEs.

Real models (DINOv2, CLIP, sd-vae-ft-mse) load from local weights only (weights.py);
offline stand-ins (pixels, hashed-bow, identity) keep every path runnable without them.
See features.py, text.py and vae.py for the save/load helpers of the model layout.
"""

from atoll.trainer.encoders.features import FeatureEncoder, feature_encoder_for
from atoll.trainer.encoders.text import (
    HashedBowTextEncoder,
    TextEncoder,
    load_text_encoder,
    save_text_encoder,
    text_encoder_for,
)
from atoll.trainer.encoders.vae import IdentityVAE, LatentCodec, load_vae, save_vae, vae_for
from atoll.trainer.encoders.weights import WEIGHTS_ENV, WeightsNotFoundError

__all__ = [
    "WEIGHTS_ENV",
    "FeatureEncoder",
    "HashedBowTextEncoder",
    "IdentityVAE",
    "LatentCodec",
    "TextEncoder",
    "WeightsNotFoundError",
    "feature_encoder_for",
    "load_text_encoder",
    "load_vae",
    "save_text_encoder",
    "save_vae",
    "text_encoder_for",
    "vae_for",
]
