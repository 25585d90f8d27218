"""The GPU product catalogue: public datasheet figures the planner's built-in speeds start from.

Products are matched on the `nvidia.com/gpu.product` value GPU Feature Discovery writes
(the NVML name with spaces as dashes, e.g. NVIDIA-H100-80GB-HBM3, Tesla-T4). Pure data:
never imports Kubernetes.

Figures, per product: dense (no sparsity) bf16 tensor TFLOPs (none on Volta/Turing, which
train in fp32), plain FP32 TFLOPs (the trainer's fp32 mode, and what pre-Ampere GPUs use
under precision auto; a step reaches FP32_ACHIEVED of it), memory in MiB, and `achieved`:
the fraction of the bf16 peak a DiT training step reaches.

The achieved fraction is anchored on one public measurement: fast-DiT (Jin et al.) trains
DiT-XL/2 at 256 px on one A100 at 0.84 steps/s × batch 128 with gradient checkpointing
and mixed precision, i.e. 107.5 samples/s × 4 passes × 237 GFLOP ≈ 102 TFLOP/s, 0.33 of
the A100's 312. The others are set from commonly reported training speed-ups relative to
an A100 (H100 SXM ≈ 2.4×, H100 PCIe ≈ 2×, L40S ≈ 0.8×, RTX 4090 ≈ 0.7×, A40/A6000 ≈
0.5×, L4 ≈ 0.3×): power-capped cards (L4 72 W) and GDDR cards with high peaks (L40S)
reach less of their peak than an A100. These are starting points only:
`spec.placement.speeds` overrides them and the samples/s experts report corrects them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class GpuProduct:
    """Datasheet figures of one GPU product."""

    key: str
    """Short catalogue name (H100-SXM, A100, L4, …)."""
    bf16_tflops: float | None
    """Dense bf16 tensor TFLOPs; None where the GPU has no bf16 (Volta, Turing)."""
    fp32_tflops: float
    """Plain (non-tensor) FP32 TFLOPs: the trainer's fp32 mode does not enable TF32."""
    memory_mib: int
    """Memory of the common variant, used when the node has no nvidia.com/gpu.memory label."""
    achieved: float
    """Fraction of the bf16 peak a DiT training step reaches (see the module docstring)."""


# Order matters: the first pattern that matches the normalised product name wins.
# key, pattern, bf16 dense TFLOPs, FP32 TFLOPs, memory MiB, achieved fraction of the bf16 peak.
_CATALOGUE: tuple[tuple[str, GpuProduct], ...] = (
    (r"GH200", GpuProduct(key="GH200", bf16_tflops=989, fp32_tflops=67, memory_mib=97871, achieved=0.26)),
    (r"H200", GpuProduct(key="H200", bf16_tflops=989, fp32_tflops=67, memory_mib=143771, achieved=0.26)),
    (r"H100.*NVL", GpuProduct(key="H100-NVL", bf16_tflops=835, fp32_tflops=60, memory_mib=95830, achieved=0.26)),
    (r"H100.*PCIE", GpuProduct(key="H100-PCIe", bf16_tflops=756, fp32_tflops=51, memory_mib=81559, achieved=0.27)),
    (r"H[18]00", GpuProduct(key="H100-SXM", bf16_tflops=989, fp32_tflops=67, memory_mib=81559, achieved=0.25)),
    (r"A[18]00.*PCIE", GpuProduct(key="A100-PCIe", bf16_tflops=312, fp32_tflops=19.5, memory_mib=40960, achieved=0.31)),
    (r"A[18]00", GpuProduct(key="A100", bf16_tflops=312, fp32_tflops=19.5, memory_mib=40960, achieved=0.33)),
    (r"L40S", GpuProduct(key="L40S", bf16_tflops=362, fp32_tflops=91.6, memory_mib=46068, achieved=0.22)),
    (r"(^|-)L40($|-)", GpuProduct(key="L40", bf16_tflops=181, fp32_tflops=90.5, memory_mib=46068, achieved=0.3)),
    (r"(^|-)L4($|-)", GpuProduct(key="L4", bf16_tflops=121, fp32_tflops=30.3, memory_mib=23034, achieved=0.25)),
    (
        r"RTX-6000-ADA",
        GpuProduct(key="RTX-6000-Ada", bf16_tflops=364, fp32_tflops=91.1, memory_mib=49140, achieved=0.22),
    ),
    (r"RTX-A6000", GpuProduct(key="RTX-A6000", bf16_tflops=155, fp32_tflops=38.7, memory_mib=49140, achieved=0.33)),
    (r"RTX-4090", GpuProduct(key="RTX-4090", bf16_tflops=165, fp32_tflops=82.6, memory_mib=24564, achieved=0.45)),
    (r"RTX-3090", GpuProduct(key="RTX-3090", bf16_tflops=71, fp32_tflops=35.6, memory_mib=24576, achieved=0.55)),
    (r"(^|-)A40($|-)", GpuProduct(key="A40", bf16_tflops=150, fp32_tflops=37.4, memory_mib=46068, achieved=0.33)),
    (r"(^|-)A30($|-)", GpuProduct(key="A30", bf16_tflops=165, fp32_tflops=10.3, memory_mib=24576, achieved=0.3)),
    (r"(^|-)A10G($|-)", GpuProduct(key="A10G", bf16_tflops=70, fp32_tflops=31.2, memory_mib=23028, achieved=0.42)),
    (r"(^|-)A10($|-)", GpuProduct(key="A10", bf16_tflops=125, fp32_tflops=31.2, memory_mib=23028, achieved=0.3)),
    (r"V100", GpuProduct(key="V100", bf16_tflops=None, fp32_tflops=15.7, memory_mib=16384, achieved=0.0)),
    (r"(^|-)T4($|-)", GpuProduct(key="T4", bf16_tflops=None, fp32_tflops=8.1, memory_mib=15360, achieved=0.0)),
    (r"P100", GpuProduct(key="P100", bf16_tflops=None, fp32_tflops=9.3, memory_mib=16384, achieved=0.0)),
)
_PATTERNS = tuple((re.compile(pattern), product) for pattern, product in _CATALOGUE)

FP32_ACHIEVED = 0.5
"""Fraction of the plain FP32 peak a step reaches (SGEMM runs at 70-80 %, the rest lower)."""

UNKNOWN_AMPERE_OR_NEWER = GpuProduct(key="unknown", bf16_tflops=121, fp32_tflops=30.3, memory_mib=0, achieved=0.25)
"""What an unknown product with compute capability ≥ 8 is assumed to be: an L4 (conservative)."""
UNKNOWN_OLDER = GpuProduct(key="unknown", bf16_tflops=None, fp32_tflops=8.1, memory_mib=0, achieved=0.0)
"""What an unknown older product is assumed to be: a T4."""


def catalogue() -> tuple[GpuProduct, ...]:
    """Every product of the catalogue, once each, in catalogue order."""
    return tuple(product for _, product in _CATALOGUE)


def canonical_product(name: str) -> str:
    """The GFD spelling of a product name: NVML's 'NVIDIA H100 80GB HBM3' → 'NVIDIA-H100-80GB-HBM3'."""
    return "-".join(name.strip().split())


def lookup(product: str) -> GpuProduct | None:
    """The catalogue entry of a GFD product name, or None when unknown (MIG slices included)."""
    normalised = canonical_product(product).upper().replace("_", "-")
    if "-MIG-" in normalised:
        return None
    for pattern, entry in _PATTERNS:
        if pattern.search(normalised):
            return entry
    return None


def supports_bf16(product: str, compute_major: int | None) -> bool:
    """Whether the GPU has bf16 tensor cores (compute capability 8.0 and newer)."""
    if compute_major is not None:
        return compute_major >= 8
    entry = lookup(product)
    return entry is not None and entry.bf16_tflops is not None
