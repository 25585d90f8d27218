"""Calibration: a bench/gpu.py JSON becomes the planner's measured speed table, each figure with its
source, and the planner's memory model is checked against the measured peaks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from atoll.api import PRESETS
from atoll.operator.placement import SpeedTable
from atoll.operator.placement.gpus import lookup
from atoll.operator.placement.measured import (
    CalibrationError,
    calibrate,
    read_table,
    shipped_table,
)
from atoll.operator.placement.speeds import builtin_speed
from atoll.operator.placement.workload import GIB, Workload

B = Workload(preset=PRESETS["dit-b/2"], latent_shape=(4, 32, 32))
H100 = "NVIDIA-H100-80GB-HBM3"
A100 = "NVIDIA-A100-SXM4-80GB"


def run(preset: str, *, compiled: bool, amortised: float, measured_gib: float, planner_gib: float) -> dict[str, Any]:
    """One expert run record as bench/gpu.py writes it (the fields calibration reads, and a few more)."""
    return {
        "model": "expert",
        "preset": preset,
        "compile": compiled,
        "device": "cuda",
        "latentShape": [4, 32, 32],
        "textShape": [77, 768],
        "globalBatch": 256,
        "microBatch": 256,
        "gradAccum": 1,
        "precision": "bf16",
        "samplesPerSecond": {"steady": amortised * 1.01, "amortised": amortised},
        "mfu": 0.41,
        "memory": {"measuredBytes": measured_gib * GIB, "plannerBytes": planner_gib * GIB},
        "error": None,
    }


def bench(*runs: dict[str, Any]) -> dict[str, Any]:
    return {
        "schema": "atoll-gpu-bench/v1",
        "created": "2026-12-01T12:00:00+00:00",
        "environment": {"gpu": "NVIDIA H100 80GB HBM3", "driver": "570.86.15", "torch": "2.15.0", "cuda": "13.2"},
        "runs": list(runs),
    }


SYNTHETIC = bench(
    run("dit-b/2", compiled=False, amortised=1200.0, measured_gib=40.0, planner_gib=42.0),
    run("dit-b/2", compiled=True, amortised=1500.0, measured_gib=38.0, planner_gib=42.0),
    run("dit-l/2", compiled=False, amortised=400.0, measured_gib=70.0, planner_gib=60.0),  # under by 14 %
    {**run("dit-s/2", compiled=False, amortised=1.0, measured_gib=1, planner_gib=1), "error": "out of memory"},
    {**run("dit-b/2", compiled=False, amortised=9e9, measured_gib=1, planner_gib=1), "model": "router"},
)


def test_measured_product_gets_the_measurement_and_others_the_peak_ratio() -> None:
    result = calibrate(SYNTHETIC)
    by_key = {(e.product, e.preset): e for e in result.entries}
    h100 = by_key["H100-SXM", "dit-b/2"]
    assert h100.measured
    assert h100.samples_per_second == 1200.0  # compile off: the trainer's default
    assert h100.source.startswith("measured: bench/gpu.py on NVIDIA H100 80GB HBM3 (driver 570.86.15, torch 2.15.0")
    assert "MFU 0.410" in h100.source
    a100 = by_key["A100", "dit-b/2"]
    assert not a100.measured
    assert a100.samples_per_second == pytest.approx(1200.0 * 312 / 989)
    assert a100.source.startswith("scaled: H100-SXM's measured 1200.0 samples/s × dense bf16 peak 312/989 TFLOP/s")
    assert ("T4", "dit-b/2") not in by_key  # no bf16: the fp32 catalogue estimate stays
    assert ("H100-SXM", "dit-s/2") not in by_key  # the failed run is not used
    assert {e.preset for e in result.entries} == {"dit-b/2", "dit-l/2"}  # the router is not an expert speed
    assert calibrate(SYNTHETIC, compiled=True).entries[0].samples_per_second == 1500.0


def test_memory_model_is_checked_against_measured_peaks() -> None:
    checks = {check.preset: check for check in calibrate(SYNTHETIC).memory}
    assert checks["dit-b/2"].ok
    assert checks["dit-b/2"].under_estimate < 0  # planned more than measured: the safe side
    assert not checks["dit-l/2"].ok
    assert checks["dit-l/2"].under_estimate == pytest.approx(10 / 70)


def test_speed_table_prefers_the_measured_table_to_the_catalogue_and_says_where_figures_came_from() -> None:
    entries = calibrate(SYNTHETIC).entries
    table = SpeedTable(workload=B, measured=entries)
    assert table.lookup(H100) == (1200.0, "measured")
    assert table.note(H100).startswith("measured: bench/gpu.py on NVIDIA H100")
    speed, source = table.lookup(A100)
    assert (speed, source) == (pytest.approx(1200.0 * 312 / 989), "scaled")
    assert table.note(A100).startswith("scaled: H100-SXM's measured")
    assert table.lookup("Tesla-T4") == (builtin_speed(B, "Tesla-T4"), "built-in")
    assert table.note("Tesla-T4").startswith("built-in")
    # What the user wrote and what this run observed still win; observations calibrate the table's figures.
    table = SpeedTable(workload=B, measured=entries, overrides={A100: 99.0}, observed={H100: 600.0})
    assert table.lookup(A100) == (99.0, "spec")
    assert table.lookup(H100) == (600.0, "observed")
    speed, source = table.lookup("NVIDIA-L40S")
    assert source == "calibrated"
    assert speed == pytest.approx(1200.0 * 362 / 989 * 0.5)  # observed at half the measured speed
    assert table.note("NVIDIA-L40S").startswith("calibrated: ×0.500 from this run's observed speeds (scaled: ")


def test_other_shapes_carry_the_measurement_by_flops_and_fp32_keeps_the_catalogue() -> None:
    entries = calibrate(SYNTHETIC).entries
    bigger = Workload(preset=PRESETS["dit-b/2"], latent_shape=(4, 64, 64))
    speed, source = SpeedTable(workload=bigger, measured=entries).lookup(H100)
    assert source == "measured"
    assert speed == pytest.approx(1200.0 * B.flops_per_sample() / bigger.flops_per_sample())
    assert "carried to latents 4×64×64 by the FLOPs ratio" in SpeedTable(workload=bigger, measured=entries).note(H100)
    fp32 = Workload(preset=PRESETS["dit-b/2"], latent_shape=(4, 32, 32), precision="fp32")
    assert SpeedTable(workload=fp32, measured=entries).source(H100) == "built-in"
    xl = Workload(preset=PRESETS["dit-xl/2"], latent_shape=(4, 32, 32))
    assert SpeedTable(workload=xl, measured=entries).source(H100) == "built-in"  # not measured: the catalogue


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda b: b.update(schema="other"), "schema: expected 'atoll-gpu-bench/v1'"),
        (lambda b: b["environment"].pop("gpu"), "environment.gpu: missing"),
        (lambda b: b["environment"].update(gpu="Tesla T4"), "environment.gpu: 'Tesla T4' is not a bf16 product"),
        (lambda b: b["runs"][0].update(textShape=[16, 64]), r"runs\[0\].textShape: the planner assumes captions"),
        (lambda b: b["runs"][0].update(preset="dit-h/2"), r"runs\[0\].preset: unknown preset 'dit-h/2'"),
        (lambda b: b["runs"][0].pop("samplesPerSecond"), r"runs\[0\].samplesPerSecond: missing"),
        (lambda b: b.update(runs=[]), "runs: no error-free bf16 expert run with compile off"),
    ],
)
def test_bad_benchmark_json_names_the_field(change: Any, message: str) -> None:
    document = json.loads(json.dumps(bench(run("dit-b/2", compiled=False, amortised=1, measured_gib=1, planner_gib=1))))
    change(document)
    with pytest.raises(CalibrationError, match=message):
        calibrate(document)


def test_shipped_table_is_valid_and_until_a_gpu_run_every_speed_is_the_catalogues() -> None:
    assert shipped_table() == ()
    assert SpeedTable(workload=B).lookup(H100) == (builtin_speed(B, H100), "built-in")
    assert lookup(H100) is not None


def test_calibrate_command_writes_the_table_and_fails_on_a_memory_under_estimate(tmp_path: Path) -> None:
    source = tmp_path / "gpu.json"
    source.write_text(json.dumps(SYNTHETIC))
    table = tmp_path / "measured_speeds.json"
    done = subprocess.run(
        [sys.executable, "-m", "atoll", "calibrate", str(source), "--out", str(table)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    assert "the planner under-estimates expert dit-l/2 at micro-batch 256 by 14.3%" in done.stderr
    printed = json.loads(done.stdout)
    assert [check["ok"] for check in printed["memory"]] == [True, True, False]
    assert read_table(table) == calibrate(SYNTHETIC).entries
    bad = subprocess.run(
        [sys.executable, "-m", "atoll", "calibrate", str(tmp_path / "missing.json")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert bad.returncode == 1
    assert "missing.json: cannot read" in bad.stderr
