"""VAEs: images [-1, 1] ↔ the latents experts learn; `identity` (pixel space) or `sd-vae-ft-mse`.

Both are diffusers models with AutoencoderKL's interface (`encode(x).latent_dist`,
`decode(z).sample`, `config.scaling_factor`), so the pipeline treats them alike.
`LatentCodec` wraps one: `encode` returns the *scaled* latent (the distribution's mean ×
scaling factor; 0.18215 for sd-vae-ft-mse), `decode` undoes the scaling. Model
directories: `save_vae(codec, dir)`, `load_vae(dir)`; `vae_for(name)` builds one from a
spec name. Never trains the VAE.
"""

from __future__ import annotations

import json
import warnings
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
        return float(self.model.config.scaling_factor)

    def latent_shape(self, resolution: int) -> tuple[int, int, int]:
        """[C, H, W] of the latent of an R×R image."""
        if isinstance(self.model, IdentityVAE):
            return int(self.model.config.latent_channels), resolution, resolution
        factor = 2 ** (len(self.model.config.block_out_channels) - 1)
        if resolution % factor:
            raise AtollError(f"dataset.resolution {resolution} must be a multiple of {factor} for the {self.name} VAE")
        return int(self.model.config.latent_channels), resolution // factor, resolution // factor

    def to(self, device: torch.device | str) -> LatentCodec:
        self.model.to(device)
        return self

    @torch.inference_mode()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """[n, 3, R, R] in [-1, 1] → scaled latents [n, C, H, W] float32 (the posterior mean, deterministic)."""
        device = self.model.device
        posterior = self.model.encode(images.to(device, torch.float32)).latent_dist
        mean: torch.Tensor = posterior.mean
        return (mean * self.scaling_factor).float()

    @torch.inference_mode()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents → images [n, 3, R, R] (about [-1, 1])."""
        device = self.model.device
        images: torch.Tensor = self.model.decode(latents.to(device, torch.float32) / self.scaling_factor).sample
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
        return LatentCodec("identity", IdentityVAE.from_pretrained(str(directory), low_cpu_mem_usage=False)).to(device)
    if class_name == "AutoencoderKL":
        return LatentCodec("sd-vae-ft-mse", _autoencoder_kl(str(directory))).to(device)
    raise AtollError(f"{config_path}: unknown VAE class {class_name!r}")


def _autoencoder_kl(source: str, **kwargs: Any) -> Any:
    from diffusers import AutoencoderKL

    with warnings.catch_warnings():
        # diffusers still passes this argument to huggingface_hub when it looks in the hub cache.
        warnings.filterwarnings("ignore", message="The `local_dir_use_symlinks` argument is deprecated")
        return AutoencoderKL.from_pretrained(source, low_cpu_mem_usage=False, **kwargs)  # type: ignore[no-untyped-call]
