"""VAEs: images or clips in [-1, 1] ↔ the latents experts learn.

`identity` (pixel space, images and clips), `sd-vae-ft-mse` (images) and `wan2.1-vae`
(clips: Wan 2.1's causal video VAE, AutoencoderKLWan, 16 channels, 4× in time and 8× in
space). All are diffusers models with AutoencoderKL's interface (`encode(x).latent_dist`,
`decode(z).sample`), so the pipeline treats them alike. `LatentCodec` wraps one: `encode`
returns the *normalised* latent (the distribution's mean × scaling factor, 0.18215 for
sd-vae-ft-mse; per-channel (z − mean) / std for Wan), `decode` undoes it. Model
directories: `save_vae(codec, dir)`, `load_vae(dir)`; `vae_for(name)` builds one from a
spec name. Never trains the VAE.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import DecoderOutput, DiagonalGaussianDistribution
from diffusers.models.modeling_outputs import AutoencoderKLOutput
from diffusers.models.modeling_utils import ModelMixin

from atoll.api.weights import WeightsSpec
from atoll.errors import AtollError
from atoll.trainer.encoders.weights import load_local

SD_VAE_REPO = "stabilityai/sd-vae-ft-mse"
WAN_VAE_REPO = "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"
"""The Wan 2.1 text-to-video repository; its VAE lives in the vae/ sub-folder."""


class IdentityVAE(ModelMixin, ConfigMixin):  # type: ignore[misc]
    """Pixel space behind AutoencoderKL's interface: the latent is the image (a point mass)."""

    @register_to_config  # type: ignore[untyped-decorator]
    def __init__(self, latent_channels: int = 3, scaling_factor: float = 1.0) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        # One persistent buffer so save_pretrained writes a (tiny) weights file like any model.
        self.register_buffer("scale", torch.tensor(float(scaling_factor)))

    def encode(self, x: torch.Tensor, return_dict: bool = True) -> AutoencoderKLOutput | tuple[Any]:
        posterior = DiagonalGaussianDistribution(torch.cat([x, torch.zeros_like(x)], dim=1), deterministic=True)
        return AutoencoderKLOutput(latent_dist=posterior) if return_dict else (posterior,)

    def decode(self, z: torch.Tensor, return_dict: bool = True) -> DecoderOutput | tuple[torch.Tensor]:
        return DecoderOutput(sample=z) if return_dict else (z,)

    def forward(self, sample: torch.Tensor) -> DecoderOutput:
        return DecoderOutput(sample=sample)


class LatentCodec:
    """A frozen VAE with the scaling applied: encode → scaled latents, decode → images in [-1, 1]."""

    def __init__(self, name: str, model: Any) -> None:
        self.name = name
        self.model = model.eval()

    @property
    def scaling_factor(self) -> float:
        return float(getattr(self.model.config, "scaling_factor", 1.0))

    @property
    def video(self) -> bool:
        """Whether this VAE encodes clips as a whole (a video VAE), not frame by frame."""
        return hasattr(self.model.config, "scale_factor_temporal")

    def latent_shape(self, resolution: int, frames: int = 1) -> tuple[int, ...]:
        """[C, H, W] of the latent of an R×R image, or [C, T, H, W] of a clip of `frames` frames."""
        config = self.model.config
        if isinstance(self.model, IdentityVAE):
            channels, factor, latent_frames = int(config.latent_channels), 1, frames
        elif self.video:
            channels, factor = int(config.z_dim), int(config.scale_factor_spatial)
            step = int(config.scale_factor_temporal)
            if frames < 2 or (frames - 1) % step:
                raise AtollError(
                    f"dataset.frames {frames} must be 1 + a multiple of {step} for the {self.name} VAE"
                    f" (e.g. {1 + 2 * step})"
                )
            latent_frames = 1 + (frames - 1) // step
        else:
            if frames > 1:
                raise AtollError(f"the {self.name} VAE encodes images: dataset.frames must be 1, not {frames}")
            channels, factor, latent_frames = int(config.latent_channels), 2 ** (len(config.block_out_channels) - 1), 1
        if resolution % factor:
            raise AtollError(f"dataset.resolution {resolution} must be a multiple of {factor} for the {self.name} VAE")
        side = resolution // factor
        return (channels, side, side) if frames == 1 else (channels, latent_frames, side, side)

    def decoded_side(self, latent_shape: Sequence[int]) -> int:
        """The pixel side R of images (frames) whose latents have this shape."""
        config = self.model.config
        side = int(latent_shape[-1])
        if isinstance(self.model, IdentityVAE):
            return side
        if self.video:
            return side * int(config.scale_factor_spatial)
        factor: int = 2 ** (len(config.block_out_channels) - 1)
        return side * factor

    def to(self, device: torch.device | str) -> LatentCodec:
        self.model.to(device)
        return self

    def _shift_scale(self, latents: torch.Tensor) -> tuple[torch.Tensor | float, torch.Tensor | float]:
        """(shift, scale) with normalised = (z − shift) · scale, broadcast over latents [n, C, …]."""
        config = self.model.config
        if getattr(config, "latents_mean", None) is None:
            return 0.0, self.scaling_factor
        view = (1, -1) + (1,) * (latents.ndim - 2)
        mean = torch.tensor(config.latents_mean, device=latents.device, dtype=latents.dtype).view(view)
        std = torch.tensor(config.latents_std, device=latents.device, dtype=latents.dtype).view(view)
        return mean, 1.0 / std

    @torch.inference_mode()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images [n, 3, R, R] or clips [n, 3, F, R, R] in [-1, 1] → normalised latents, float32
        (the posterior mean, deterministic)."""
        device = self.model.device
        posterior = self.model.encode(images.to(device, torch.float32)).latent_dist
        mean: torch.Tensor = posterior.mean
        shift, scale = self._shift_scale(mean)
        return ((mean - shift) * scale).float()

    @torch.inference_mode()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents → images [n, 3, R, R] or clips [n, 3, F, R, R] (about [-1, 1])."""
        device = self.model.device
        z = latents.to(device, torch.float32)
        shift, scale = self._shift_scale(z)
        images: torch.Tensor = self.model.decode(z / scale + shift).sample
        return images.float()


def vae_for(name: str, device: torch.device | str = "cpu", *, weights: WeightsSpec | None = None) -> LatentCodec:
    """The dataset.vae `name` (identity, sd-vae-ft-mse) on `device`, pretrained ones loaded from
    the source `weights` names (see weights.py)."""
    if name == "identity":
        return LatentCodec(name, IdentityVAE()).to(device)
    if name == "sd-vae-ft-mse":
        model = load_local(
            name,
            SD_VAE_REPO,
            _autoencoder_kl,
            field="dataset.vae",
            weights=weights,
        )
        return LatentCodec(name, model).to(device)
    if name == "wan2.1-vae":
        model = load_local(name, WAN_VAE_REPO, _autoencoder_kl_wan, field="dataset.vae", weights=weights)
        return LatentCodec(name, model).to(device)
    raise ValueError(f"dataset.vae: unknown VAE {name!r}")


def save_vae(codec: LatentCodec, directory: str | Path) -> None:
    """save_pretrained the VAE into `directory` (the model's vae/)."""
    codec.model.save_pretrained(str(directory))


def load_vae(directory: str | Path, device: torch.device | str = "cpu") -> LatentCodec:
    """Load what save_vae wrote (AutoencoderKL or IdentityVAE, read from config.json)."""
    config_path = Path(directory) / "config.json"
    try:
        class_name = json.loads(config_path.read_text()).get("_class_name")
    except (OSError, ValueError) as error:
        raise AtollError(f"{config_path}: not a saved VAE ({error})") from None
    if class_name == IdentityVAE.__name__:
        return LatentCodec("identity", IdentityVAE.from_pretrained(str(directory))).to(device)
    if class_name == "AutoencoderKL":
        return LatentCodec("sd-vae-ft-mse", _autoencoder_kl(str(directory))).to(device)
    if class_name == "AutoencoderKLWan":
        return LatentCodec("wan2.1-vae", _autoencoder_kl_wan(str(directory), local_files_only=True)).to(device)
    raise AtollError(f"{config_path}: unknown VAE class {class_name!r}")


def _autoencoder_kl(source: str, **kwargs: Any) -> Any:
    from diffusers import AutoencoderKL

    with warnings.catch_warnings():
        # diffusers still passes this argument to huggingface_hub when it looks in the hub cache.
        warnings.filterwarnings("ignore", message="The `local_dir_use_symlinks` argument is deprecated")
        return AutoencoderKL.from_pretrained(source, **kwargs)  # type: ignore[no-untyped-call]


def _autoencoder_kl_wan(source: str, **kwargs: Any) -> Any:
    """AutoencoderKLWan from a save_pretrained copy, or from the vae/ sub-folder of the Wan repository."""
    from diffusers import AutoencoderKLWan

    subfolder = "vae" if source == WAN_VAE_REPO else None
    return AutoencoderKLWan.from_pretrained(source, subfolder=subfolder, **kwargs)  # type: ignore[no-untyped-call]
