"""What one expert's training step costs: FLOPs and GPU memory per sample, from its preset.

The planner's estimates of speed (samples/s per GPU product) and memory fit, and the
choice of micro-batch × gradient accumulation, all come from here. Pure arithmetic on the
preset's shape: never imports torch or Kubernetes.

FLOPs per training sample (forward + backward = 3 × forward, 2 FLOPs per multiply-add):
6 · tokens · depth · 14·h² for the token-wise matmuls (self-attention 4h², the
cross-attention's query and output 2h², MLP of ratio 4 8h²), 6 · text tokens · depth · 2h²
for the cross-attention's keys and values, and 12 · depth · h · tokens · (tokens + text
tokens) for the attention products. For DiT-XL/2 at 256 px this gives 3 × 237 GFLOP,
matching the 119 GMACs forward the DiT paper reports (its "Gflops") once the
cross-attention DiT has not is removed.

Video (wan) presets use the same formulas with tokens = frames × h × w / patch volume
(latent frames and sides: the clip itself for the identity VAE, 1 + (F − 1)/4 frames of
R/8 × R/8 for Wan's VAE) and their own MLP width (2·ratio·h² per token instead of 8h²).

Memory per GPU: fp32 master weights, gradients, AdamW's two moments and the EMA copy
(20 bytes per parameter), bf16 weight copies under autocast (2), DDP's gradient buckets
when data parallel (4), 1.5 GiB of CUDA context and workspaces, plus activations per
micro-batch sample: per block tokens · h · 46 bytes in bf16 (Korthikanti et al. 2022's 34
for attention + MLP without the tokens² score matrix, which PyTorch's fused attention
kernels never store, plus 12 for the cross-attention and adaLN modulation), twice that in
fp32, with a 25 % allowance for allocator fragmentation. Of a GPU's memory 92 % is
treated as usable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from atoll.api import Architecture, DDMRunSpec, Preset, get_preset

GIB = 1024**3
MIB = 1024**2
CUDA_OVERHEAD_BYTES = 1.5 * GIB
ACTIVATION_ALLOWANCE = 1.25
USABLE_FRACTION = 0.92
TEXT_TOKENS = 77
"""Caption length the experts cross-attend to (CLIP's context; the hashed encoder's is no longer)."""
TEXT_DIM = 768

Precision = Literal["auto", "bf16", "fp32"]


@dataclass(frozen=True, kw_only=True, slots=True)
class Workload:
    """The shape of one expert's training step."""

    preset: Preset
    latent_shape: tuple[int, ...]
    """[C, H, W] of an image latent, [C, T, H, W] of a clip's."""
    precision: Precision = "auto"
    text_tokens: int = TEXT_TOKENS
    text_dim: int = TEXT_DIM

    @property
    def architecture(self) -> Architecture:
        return self.preset.architecture

    @property
    def latent_channels(self) -> int:
        return self.latent_shape[0]

    @property
    def tokens(self) -> int:
        """Latent patches per sample."""
        return self.architecture.tokens(self.latent_shape)

    @property
    def parameters(self) -> int:
        return self.architecture.approx_parameters(in_channels=self.latent_channels, text_dim=self.text_dim)

    def flops_per_sample(self) -> float:
        """Training FLOPs (forward and backward) of one sample."""
        h, depth, n, text = self.architecture.hidden_size, self.architecture.depth, self.tokens, self.text_tokens
        per_token = 6 * h * h + round(2 * self.architecture.mlp_ratio * h * h)  # 14·h² at DiT's ratio 4
        matmuls = 6 * n * depth * per_token + 6 * text * depth * 2 * h * h
        attention = 12 * depth * h * n * (n + text)
        patches = 6 * n * 2 * self.architecture.patch_volume * self.latent_channels * h
        return float(matmuls + attention + patches)

    def memory_bytes(self, micro_batch: int, gpus: int, bf16: bool) -> float:
        """GPU memory one GPU needs to train `micro_batch` samples per forward pass."""
        p = self.parameters
        static = p * (20 + (2 if bf16 else 0) + (4 if gpus > 1 else 0)) + CUDA_OVERHEAD_BYTES
        h, depth = self.architecture.hidden_size, self.architecture.depth
        per_block = self.tokens * h * 46 + self.text_tokens * h * 4
        per_sample = depth * per_block * (1 if bf16 else 2) * ACTIVATION_ALLOWANCE
        return static + micro_batch * per_sample

    def split_batch(self, global_batch: int, gpus: int, memory_mib: int, bf16: bool) -> tuple[int, int] | None:
        """(micro-batch, grad-accum) with micro × accum × gpus = global batch on this GPU, or None.

        The micro-batch is the largest divisor of the per-GPU share that fits the memory.
        """
        if global_batch % gpus:
            return None
        share = global_batch // gpus
        usable = memory_mib * MIB * USABLE_FRACTION
        for micro in sorted((d for d in _divisors(share)), reverse=True):
            if self.memory_bytes(micro, gpus, bf16) <= usable:
                return micro, share // micro
        return None

    def min_memory_gib(self, gpus: int, bf16: bool) -> float:
        """GiB a GPU needs at micro-batch 1 (before the usable fraction)."""
        return self.memory_bytes(1, gpus, bf16) / USABLE_FRACTION / GIB


def workload_of(spec: DDMRunSpec) -> Workload:
    """The expert workload of a run: preset, latent geometry of its VAE (images or clips), precision."""
    return Workload(
        preset=get_preset(spec.expert.preset), latent_shape=latent_shape_of(spec), precision=spec.expert.precision
    )


def latent_shape_of(spec: DDMRunSpec) -> tuple[int, ...]:
    """The latent [C, H, W] (or [C, T, H, W] for clips) the run's VAE makes of one example."""
    resolution, frames = spec.dataset.resolution, spec.dataset.frames
    if spec.dataset.vae == "identity":
        channels, side, latent_frames = 3, resolution, frames
    elif spec.dataset.vae == "wan2.1-vae":  # 16 channels, 8× in space, 4× in time after the first frame
        channels, side, latent_frames = 16, resolution // 8, 1 + (frames - 1) // 4
    else:  # sd-vae-ft-mse: 4 latent channels, 8× down-sampling
        channels, side, latent_frames = 4, resolution // 8, 1
    return (channels, side, side) if frames == 1 else (channels, latent_frames, side, side)


def _divisors(n: int) -> list[int]:
    small = [d for d in range(1, int(n**0.5) + 1) if n % d == 0]
    return sorted({*small, *(n // d for d in small)})
