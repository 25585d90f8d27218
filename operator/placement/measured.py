"""The planner's measured speed table: samples/s of expert presets on GPU products, from bench/gpu.py.

`calibrate(bench)` turns the JSON of one `bench/gpu.py` run into entries: the measured
product's samples/s per preset (bf16, the trainer's default settings, checkpoints amortised at
the preset's interval) and, for every other catalogue product with bf16, that figure scaled by
the ratio of their published dense bf16 peaks. Each entry carries its source: what measured
it (GPU, driver, torch, CUDA, date) or what it was scaled from. It also checks the planner's
memory model against the measured peaks (at most 10 % under-estimate allowed). The table
Atoll ships is `measured_speeds.json` beside this module (`atoll calibrate BENCH.json --out`
writes it); the speed table prefers it to the catalogue estimate. Pure: never imports torch
or Kubernetes.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from atoll.api.presets import PRESETS
from atoll.errors import AtollError
from atoll.operator.placement.gpus import canonical_product, catalogue, lookup
from atoll.operator.placement.workload import TEXT_DIM, TEXT_TOKENS, Workload

TABLE_SCHEMA = "atoll-measured-speeds/v1"
BENCH_SCHEMA = "atoll-gpu-bench/v1"
SHIPPED_TABLE = "measured_speeds.json"
MEMORY_UNDER_ESTIMATE_ALLOWED = 0.10
"""The planner may under-estimate a measured peak by at most this fraction (it plans micro-batches
with 8 % of the GPU kept free; more than this and a planned micro-batch can run out of memory)."""


class CalibrationError(AtollError):
    """A benchmark JSON or a speed table is not what calibration needs (the field is named)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class MeasuredSpeed:
    """Samples/s of one GPU of a product training an expert preset in bf16, and where the figure came from."""

    product: str
    """Catalogue key (H100-SXM, A100, …: atoll.operator.placement.gpus)."""
    preset: str
    latent_shape: tuple[int, ...]
    samples_per_second: float
    flops_per_sample: float
    """The planner's FLOPs per sample at this shape: carries the figure to other latent shapes."""
    source: str
    """measured: … (what measured it) or scaled: … (from which measurement, by which ratio)."""
    measured: bool
    """True for the product the benchmark ran on, False for figures scaled from it."""

    def to_json(self) -> dict[str, Any]:
        return {
            "product": self.product,
            "preset": self.preset,
            "latentShape": list(self.latent_shape),
            "samplesPerSecond": self.samples_per_second,
            "flopsPerSample": self.flops_per_sample,
            "source": self.source,
            "measured": self.measured,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str) -> MeasuredSpeed:
        try:
            return cls(
                product=str(data["product"]),
                preset=str(data["preset"]),
                latent_shape=tuple(int(s) for s in data["latentShape"]),
                samples_per_second=float(data["samplesPerSecond"]),
                flops_per_sample=float(data["flopsPerSample"]),
                source=str(data["source"]),
                measured=bool(data["measured"]),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise CalibrationError(f"{where}: an entry lacks or mistypes {error}") from None

    def speed_for(self, workload: Workload) -> tuple[float, str] | None:
        """(samples/s, source) for `workload` when it trains this preset; another latent shape gets the
        figure scaled by the FLOPs ratio (same preset, same efficiency)."""
        if workload.preset.name != self.preset:
            return None
        if tuple(workload.latent_shape) == self.latent_shape:
            return self.samples_per_second, self.source
        ratio = self.flops_per_sample / workload.flops_per_sample()
        shape = "×".join(str(s) for s in workload.latent_shape)
        return self.samples_per_second * ratio, f"{self.source}; carried to latents {shape} by the FLOPs ratio"


@dataclass(frozen=True, kw_only=True, slots=True)
class MemoryCheck:
    """The planner's memory estimate against one measured peak."""

    model: str
    preset: str
    micro_batch: int
    measured_bytes: float
    planner_bytes: float

    @property
    def under_estimate(self) -> float:
        """How much of the measured peak the planner missed (negative: it over-estimated)."""
        return (self.measured_bytes - self.planner_bytes) / self.measured_bytes

    @property
    def ok(self) -> bool:
        return self.under_estimate <= MEMORY_UNDER_ESTIMATE_ALLOWED

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "preset": self.preset,
            "microBatch": self.micro_batch,
            "measuredBytes": self.measured_bytes,
            "plannerBytes": self.planner_bytes,
            "underEstimate": round(self.under_estimate, 4),
            "ok": self.ok,
        }


@dataclass(frozen=True, kw_only=True, slots=True)
class Calibration:
    """What one benchmark says: speed entries and memory checks."""

    entries: tuple[MeasuredSpeed, ...]
    memory: tuple[MemoryCheck, ...]


def table_json(entries: Iterable[MeasuredSpeed], note: str | None = None) -> dict[str, Any]:
    """The speed table document (the format of measured_speeds.json)."""
    document: dict[str, Any] = {"schema": TABLE_SCHEMA}
    if note:
        document["note"] = note
    document["entries"] = [e.to_json() for e in entries]
    return document


def calibrate(bench: Mapping[str, Any], *, compiled: bool = False) -> Calibration:
    """Speed entries and memory checks from a bench/gpu.py JSON.

    Uses the expert runs with torch.compile `compiled` (the trainer's `compile` setting) that
    ran in bf16 without error, at the planner's caption shape.
    """
    if bench.get("schema") != BENCH_SCHEMA:
        raise CalibrationError(f"schema: expected {BENCH_SCHEMA!r}, got {bench.get('schema')!r}")
    environment = _field(bench, "environment", Mapping)
    gpu = _field(environment, "gpu", str, "environment.")
    product = lookup(gpu)
    if product is None or product.bf16_tflops is None:
        raise CalibrationError(f"environment.gpu: {gpu!r} is not a bf16 product of the planner's catalogue")
    runs = _field(bench, "runs", Sequence)
    where = (
        f"bench/gpu.py on {gpu} (driver {environment.get('driver', '?')}, torch {environment.get('torch', '?')},"
        f" CUDA {environment.get('cuda', '?')}), {bench.get('created', '?')}"
    )
    entries: list[MeasuredSpeed] = []
    memory: list[MemoryCheck] = []
    for index, run in enumerate(runs):
        if not isinstance(run, Mapping) or run.get("error") is not None:
            continue
        name = f"runs[{index}]."
        if run.get("precision") != "bf16":
            continue
        if run.get("model") == "expert" and bool(run.get("compile")) == compiled:
            entries.append(_measured_entry(run, name, product.key, where, compiled))
        measured = (run.get("memory") or {}).get("measuredBytes")
        if measured is not None and run.get("model") == "expert":
            memory.append(
                MemoryCheck(
                    model=str(run["model"]),
                    preset=str(run["preset"]),
                    micro_batch=int(_field(run, "microBatch", int, name)),
                    measured_bytes=float(measured),
                    planner_bytes=float(_field(run["memory"], "plannerBytes", (int, float), name + "memory.")),
                )
            )
    if not entries:
        raise CalibrationError(
            f"runs: no error-free bf16 expert run with compile {'on' if compiled else 'off'} to calibrate from"
        )
    return Calibration(entries=(*entries, *_scaled(entries, product.key, product.bf16_tflops)), memory=tuple(memory))


def _measured_entry(run: Mapping[str, Any], name: str, product: str, where: str, compiled: bool) -> MeasuredSpeed:
    preset = _field(run, "preset", str, name)
    if preset not in PRESETS:
        raise CalibrationError(f"{name}preset: unknown preset {preset!r}")
    text = tuple(_field(run, "textShape", Sequence, name))
    if text != (TEXT_TOKENS, TEXT_DIM):
        raise CalibrationError(
            f"{name}textShape: the planner assumes captions of {TEXT_TOKENS} × {TEXT_DIM}, the run used {list(text)}"
        )
    shape = tuple(int(s) for s in _field(run, "latentShape", Sequence, name))
    speeds = _field(run, "samplesPerSecond", Mapping, name)
    per_second = float(_field(speeds, "amortised", (int, float), name + "samplesPerSecond."))
    flops = Workload(preset=PRESETS[preset], latent_shape=shape).flops_per_sample()
    mfu = run.get("mfu")
    detail = f"micro-batch {run.get('microBatch')} × {run.get('gradAccum')}, compile {'on' if compiled else 'off'}"
    if isinstance(mfu, int | float):
        detail += f", MFU {mfu:.3f}"
    return MeasuredSpeed(
        product=product,
        preset=preset,
        latent_shape=shape,
        samples_per_second=per_second,
        flops_per_sample=flops,
        source=f"measured: {where}; {detail}",
        measured=True,
    )


def _scaled(entries: list[MeasuredSpeed], measured: str, peak: float) -> list[MeasuredSpeed]:
    """The measured entries carried to every other bf16 product by the ratio of dense bf16 peaks."""
    scaled: list[MeasuredSpeed] = []
    for other in catalogue():
        if other.key == measured or other.bf16_tflops is None:
            continue
        ratio = other.bf16_tflops / peak
        for entry in entries:
            scaled.append(
                MeasuredSpeed(
                    product=other.key,
                    preset=entry.preset,
                    latent_shape=entry.latent_shape,
                    samples_per_second=entry.samples_per_second * ratio,
                    flops_per_sample=entry.flops_per_sample,
                    source=(
                        f"scaled: {measured}'s measured {entry.samples_per_second:.1f} samples/s × dense bf16 peak"
                        f" {other.bf16_tflops:g}/{peak:g} TFLOP/s ({entry.source.removeprefix('measured: ')})"
                    ),
                    measured=False,
                )
            )
    return scaled


def _field(data: Mapping[str, Any], key: str, kind: Any, prefix: str = "") -> Any:
    value = data.get(key) if isinstance(data, Mapping) else None
    if value is None or not isinstance(value, kind) or (isinstance(value, str) and kind is Sequence):
        raise CalibrationError(f"{prefix}{key}: missing or not a {getattr(kind, '__name__', kind)}")
    return value


def read_table(path: Path) -> tuple[MeasuredSpeed, ...]:
    """The entries of a speed table file."""
    try:
        document = json.loads(path.read_text())
    except OSError as error:
        raise CalibrationError(f"{path}: cannot read: {error.strerror}") from None
    except json.JSONDecodeError as error:
        raise CalibrationError(f"{path}: not JSON: {error}") from None
    return parse_table(document, str(path))


def parse_table(document: Any, where: str) -> tuple[MeasuredSpeed, ...]:
    if not isinstance(document, Mapping) or document.get("schema") != TABLE_SCHEMA:
        raise CalibrationError(f"{where}: schema: expected {TABLE_SCHEMA!r}")
    entries = document.get("entries")
    if not isinstance(entries, list):
        raise CalibrationError(f"{where}: entries: missing or not a list")
    return tuple(MeasuredSpeed.from_json(e, f"{where}: entries[{i}]") for i, e in enumerate(entries))


@functools.cache
def shipped_table() -> tuple[MeasuredSpeed, ...]:
    """The measured speed table Atoll ships (measured_speeds.json beside this module)."""
    text = resources.files(__package__).joinpath(SHIPPED_TABLE).read_text()
    return parse_table(json.loads(text), SHIPPED_TABLE)


def find(entries: Iterable[MeasuredSpeed], product: str, workload: Workload) -> tuple[float, str] | None:
    """The table's (samples/s, source) for `workload` on GFD product `product`, or None.

    An entry at the workload's own latent shape wins over one carried from another shape.
    """
    catalogued = lookup(canonical_product(product))
    if catalogued is None:
        return None
    carried: tuple[float, str] | None = None
    for entry in entries:
        found = entry.speed_for(workload) if entry.product == catalogued.key else None
        if found is None:
            continue
        if entry.latent_shape == tuple(workload.latent_shape):
            return found
        carried = carried or found
    return carried
