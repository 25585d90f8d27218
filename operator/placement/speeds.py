"""Samples/s per GPU of an expert workload on each GPU product: observed, overridden, measured, built-in.

Four sources, most trusted first: what this run's experts measured (samples/s in their
progress.json), what the user wrote in `spec.placement.speeds`, the measured speed table
(measured.py: bench/gpu.py on one product — `measured` — and that figure scaled to the others by
their dense bf16 peaks — `scaled`), and the built-in estimate (catalogue peak × achieved
fraction ÷ FLOPs per sample). When some products have been observed, the table and built-in
figures of the others are scaled by the geometric mean of observed ÷ expected over the observed
ones (`calibrated`): a run at a resolution or on a software stack the figures do not know is off
by a similar factor on every GPU. `SpeedTable.note` says where each figure came from. Pure:
never imports Kubernetes.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from atoll.operator.placement.gpus import (
    FP32_ACHIEVED,
    UNKNOWN_AMPERE_OR_NEWER,
    UNKNOWN_OLDER,
    canonical_product,
    lookup,
    supports_bf16,
)
from atoll.operator.placement.measured import MeasuredSpeed, find, shipped_table
from atoll.operator.placement.workload import Workload
from atoll.progress import StageProgress

DATA_PARALLEL_EFFICIENCY = 0.9
"""Each GPU beyond the first adds this fraction of one GPU's speed (DDP within one node:
the gradient all-reduce mostly overlaps the backward pass over NVLink or PCIe; 0.9 is what
DDP typically reaches for models of DiT's size at 2-8 GPUs)."""

SpeedSource = Literal["observed", "spec", "measured", "scaled", "built-in", "calibrated"]


def throughput(per_gpu: float, gpus: int, efficiency: float = DATA_PARALLEL_EFFICIENCY) -> float:
    """Samples/s of one expert on `gpus` GPUs of one node (data parallel)."""
    return per_gpu * (1 + efficiency * (gpus - 1))


def trains_in_bf16(workload: Workload, product: str, compute_major: int | None) -> bool:
    """Whether the trainer runs this workload in bf16 on this GPU (precision auto or bf16)."""
    return workload.precision != "fp32" and supports_bf16(product, compute_major)


def builtin_speed(workload: Workload, product: str, compute_major: int | None = None) -> float:
    """Estimated samples/s of one GPU of `product` from the catalogue."""
    entry = lookup(product)
    if entry is None:
        older = compute_major is not None and compute_major < 8
        entry = UNKNOWN_OLDER if older else UNKNOWN_AMPERE_OR_NEWER
    if trains_in_bf16(workload, product, compute_major) and entry.bf16_tflops is not None:
        flops = entry.bf16_tflops * 1e12 * entry.achieved
    else:
        flops = entry.fp32_tflops * 1e12 * FP32_ACHIEVED
    return flops / workload.flops_per_sample()


@dataclass(frozen=True, kw_only=True)
class SpeedTable:
    """Per-GPU samples/s of one workload on every product, from the four sources."""

    workload: Workload
    overrides: Mapping[str, float] = field(default_factory=dict)
    """spec.placement.speeds: product → samples/s per GPU."""
    observed: Mapping[str, float] = field(default_factory=dict)
    """Measured in this run: product → samples/s per GPU."""
    measured: tuple[MeasuredSpeed, ...] = field(default_factory=shipped_table)
    """The measured speed table (bench/gpu.py through `atoll calibrate`); Atoll's shipped one by default."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "overrides", {canonical_product(k): v for k, v in self.overrides.items()})
        object.__setattr__(self, "observed", {canonical_product(k): v for k, v in self.observed.items()})

    def per_gpu(self, product: str, compute_major: int | None = None) -> float:
        """Samples/s of one GPU of `product`."""
        return self.lookup(product, compute_major)[0]

    def source(self, product: str, compute_major: int | None = None) -> SpeedSource:
        """Where `per_gpu` took its figure from."""
        return self.lookup(product, compute_major)[1]

    def note(self, product: str, compute_major: int | None = None) -> str:
        """Where `per_gpu`'s figure came from, in words (the measured table's entries say what measured them)."""
        return self._resolve(product, compute_major)[2]

    def lookup(self, product: str, compute_major: int | None = None) -> tuple[float, SpeedSource]:
        speed, source, _ = self._resolve(product, compute_major)
        return speed, source

    def _resolve(self, product: str, compute_major: int | None) -> tuple[float, SpeedSource, str]:
        name = canonical_product(product)
        if name in self.observed:
            return self.observed[name], "observed", "observed: median samples/s this run's experts reported"
        if name in self.overrides:
            return self.overrides[name], "spec", "spec: spec.placement.speeds"
        estimate, source, note = self._expected(name, compute_major)
        factor = self._calibration()
        if factor is None:
            return estimate, source, note
        return estimate * factor, "calibrated", f"calibrated: ×{factor:.3f} from this run's observed speeds ({note})"

    def _expected(self, name: str, compute_major: int | None) -> tuple[float, SpeedSource, str]:
        """The figure before this run's observations: the measured table, else the catalogue."""
        table = find(self.measured, name, self.workload) if trains_in_bf16(self.workload, name, compute_major) else None
        if table is not None:
            speed, note = table
            return speed, "measured" if note.startswith("measured") else "scaled", note
        estimate = builtin_speed(self.workload, name, compute_major)
        return estimate, "built-in", "built-in: catalogue peak × achieved fraction ÷ FLOPs per sample"

    def _calibration(self) -> float | None:
        ratios = []
        for name, measured in self.observed.items():
            expected = self.overrides.get(name) or self._expected(name, None)[0]
            if measured > 0 and expected > 0:
                ratios.append(math.log(measured / expected))
        return math.exp(sum(ratios) / len(ratios)) if ratios else None


def observed_speeds(
    progress: Iterable[StageProgress],
    node_products: Mapping[str, str],
    efficiency: float = DATA_PARALLEL_EFFICIENCY,
) -> dict[str, float]:
    """Per-GPU samples/s by product, the median over experts that reported a speed.

    The product is the GFD product of the node the expert reported (`node_products`:
    node name → product), else the GPU name it reported; CPU runs and experts without a
    speed are skipped. A multi-GPU expert's speed is divided back to one GPU with the
    same data-parallel efficiency the planner assumes.
    """
    samples: dict[str, list[float]] = {}
    for item in progress:
        if item.stage != "expert" or not item.samples_per_second or item.samples_per_second <= 0:
            continue
        product = node_products.get(item.node or "") or (item.gpu or "")
        if not product or product.lower() == "cpu":
            continue
        gpus = max(1, item.gpus)
        per_gpu = item.samples_per_second / (1 + efficiency * (gpus - 1))
        samples.setdefault(canonical_product(product), []).append(per_gpu)
    return {product: statistics.median(values) for product, values in sorted(samples.items())}
