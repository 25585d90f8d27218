"""Standard FID features: NVIDIA's TorchScript Inception-v3 (inception-2015-12-05.pt), when present locally.

The same network StyleGAN and clean-fid use, ported from the TF FID graph, which takes
uint8 images of any size, resizes them to 299 itself and returns 2048-d pool features.
Nothing is downloaded: without the file, FID is reported as unavailable with the reason.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch

from atoll.trainer.encoders import WEIGHTS_ENV

INCEPTION_ENV = "ATOLL_INCEPTION_WEIGHTS"
INCEPTION_FILE = "inception-2015-12-05.pt"
INCEPTION_URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"


def find_weights(env: str, filename: str, url: str, name: str) -> tuple[Path | None, str]:
    """A TorchScript metric network's file: $env, else $ATOLL_WEIGHTS_DIR/filename; else None and
    why (for metrics.json)."""
    candidates: list[Path] = []
    if os.environ.get(env):
        candidates.append(Path(os.environ[env]).expanduser())
    if os.environ.get(WEIGHTS_ENV):
        candidates.append(Path(os.environ[WEIGHTS_ENV]).expanduser() / filename)
    for path in candidates:
        if path.is_file():
            return path, ""
    looked = ", ".join(str(p) for p in candidates) or f"${env} and ${WEIGHTS_ENV} (both unset)"
    return None, (
        f"no {name} weights on this machine (looked at {looked}); download {url} where there is"
        f" network and point ${env} at it (or put it in ${WEIGHTS_ENV}/)"
    )


def find_inception() -> tuple[Path | None, str]:
    """The weights file if present, else None and why (for metrics.json)."""
    return find_weights(INCEPTION_ENV, INCEPTION_FILE, INCEPTION_URL, "Inception")


def load_torchscript(path: Path, device: torch.device) -> torch.jit.ScriptModule:
    """A metric network published only as TorchScript (which torch now marks deprecated), in eval mode."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.load. is deprecated", category=FutureWarning)
        model: torch.jit.ScriptModule = torch.jit.load(str(path), map_location=device).eval()  # type: ignore[no-untyped-call]
    return model


class InceptionFeatures:
    """2048-d Inception pool features of images in [-1, 1]."""

    def __init__(self, path: Path, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.model = load_torchscript(path, self.device)  # NVIDIA publishes it only as TorchScript

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, batch: int = 64) -> torch.Tensor:
        """Features [n, 2048] of images [n, 3, R, R] in [-1, 1]."""
        as_uint8 = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        parts = [
            self.model(as_uint8[i : i + batch].to(self.device), return_features=True).float().cpu()
            for i in range(0, as_uint8.shape[0], batch)
        ]
        return torch.cat(parts)
