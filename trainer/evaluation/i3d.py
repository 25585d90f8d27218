"""Standard FVD features: the TorchScript I3D (Kinetics-400) of StyleGAN-V and DIGAN, when present locally.

FVD compares Gaussians fitted to the 400-d logits of an I3D network trained on
Kinetics-400 (Unterthiner et al. 2019). StyleGAN-V publishes a TorchScript port of the
original TF-Hub graph, `i3d_torchscript.pt`; it takes clips [n, 3, T, 224, 224] in
[-1, 1]. Nothing is downloaded: without the file, FVD is reported as unavailable with the
reason, like FID.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F  # noqa: N812

from atoll.trainer.evaluation.inception import find_weights, load_torchscript

I3D_ENV = "ATOLL_I3D_WEIGHTS"
I3D_FILE = "i3d_torchscript.pt"
I3D_URL = "https://www.dropbox.com/s/ge9e5ujwgetktms/i3d_torchscript.pt"
I3D_SIDE = 224
I3D_MIN_FRAMES = 9
"""I3D's temporal pooling needs at least this many frames; shorter clips are repeated in time."""


def find_i3d() -> tuple[Path | None, str]:
    """The weights file if present, else None and why (for metrics.json)."""
    return find_weights(I3D_ENV, I3D_FILE, I3D_URL, "I3D")


class I3DFeatures:
    """400-d I3D logits of clips in [-1, 1]: the features FVD is computed in."""

    def __init__(self, path: Path, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.model = load_torchscript(path, self.device)

    @torch.no_grad()
    def __call__(self, clips: torch.Tensor, batch: int = 16) -> torch.Tensor:
        """Features [n, 400] of clips [n, 3, F, R, R] in [-1, 1]."""
        parts = []
        for i in range(0, clips.shape[0], batch):
            chunk = clips[i : i + batch].to(self.device).float().clamp(-1, 1)
            repeats = -(-I3D_MIN_FRAMES // chunk.shape[2])
            if repeats > 1:
                chunk = chunk.repeat(1, 1, repeats, 1, 1)
            chunk = F.interpolate(chunk, size=(chunk.shape[2], I3D_SIDE, I3D_SIDE), mode="trilinear")
            parts.append(self.model(chunk, rescale=False, resize=False, return_features=True).float().cpu())
        return torch.cat(parts)
