"""Workload arithmetic (FLOPs, memory, batch split) and the speed table's three sources."""

from __future__ import annotations

import pytest

from atoll.api import PRESETS, DDMRunSpec
from atoll.operator.placement import SpeedTable, observed_speeds, speed_table, workload_of
from atoll.operator.placement.speeds import builtin_speed, throughput
from atoll.operator.placement.workload import GIB, Workload
from atoll.progress import StageProgress

XL = Workload(preset=PRESETS["dit-xl/2"], latent_shape=(4, 32, 32))
B = Workload(preset=PRESETS["dit-b/2"], latent_shape=(4, 32, 32))


def spec(**expert: object) -> DDMRunSpec:
    return DDMRunSpec.model_validate(
        {
            "dataset": {"uri": "builtin://shapes", "resolution": 256, "vae": "sd-vae-ft-mse"},
            "weights": {"source": "hub"},
            "partition": {"clusters": 4},
            "expert": {"preset": "dit-b/2", **expert},
        }
    )


def test_flops_of_dit_xl_match_the_papers_figure() -> None:
    # DiT reports 119 GMACs ("Gflops") per forward pass at 256 px; training is 3 passes of 2 FLOPs per
    # MAC, and our experts add cross-attention to the caption (at most a third more).
    dit = 3 * 2 * 119e9
    assert dit <= XL.flops_per_sample() <= 1.35 * dit
    assert XL.tokens == 256
    bigger = Workload(preset=PRESETS["dit-xl/2"], latent_shape=(4, 64, 64))
    assert bigger.flops_per_sample() > 4 * XL.flops_per_sample()  # 4× tokens, attention grows faster


def test_memory_grows_with_micro_batch_and_fp32_needs_more() -> None:
    assert XL.memory_bytes(1, 1, True) < XL.memory_bytes(8, 1, True) < XL.memory_bytes(8, 1, False)
    assert XL.memory_bytes(8, 2, True) > XL.memory_bytes(8, 1, True)  # DDP buckets
    # DiT-XL/2 with cross-attention (≈ 0.6 B parameters): 20 bytes each for weights, gradients, AdamW
    # and EMA fill most of a 16 GB T4 (fp32), which fits one sample per pass at most.
    assert 0.55e9 < XL.parameters < 0.7e9
    assert 13 < XL.min_memory_gib(1, bf16=False) < 15
    assert (XL.split_batch(256, 1, 15360, False) or (99, 0))[0] <= 2


def test_split_batch_is_exact_and_takes_the_largest_micro_batch_that_fits() -> None:
    assert B.split_batch(256, 1, 81559, True) == (256, 1)
    micro, accum = XL.split_batch(256, 1, 23034, True) or (0, 0)
    assert micro * accum == 256
    assert micro < 256
    assert XL.memory_bytes(micro, 1, True) <= 23034 * 2**20 * 0.92 < XL.memory_bytes(micro * 2, 1, True)
    assert B.split_batch(96, 4, 81559, True) == (24, 1)
    assert B.split_batch(100, 8, 81559, True) is None  # 8 GPUs cannot share 100 samples evenly
    assert XL.split_batch(256, 1, 8192, True) is None  # not even one sample fits
    assert XL.split_batch(24, 1, 23034, True) in {(m, 24 // m) for m in (1, 2, 3, 4, 6, 8, 12, 24)}


def test_builtin_speeds_rank_the_products() -> None:
    names = ["NVIDIA-H100-80GB-HBM3", "NVIDIA-A100-SXM4-80GB", "NVIDIA-GeForce-RTX-4090", "NVIDIA-L4", "Tesla-T4"]
    speeds = [builtin_speed(B, name) for name in names]
    assert speeds == sorted(speeds, reverse=True)
    assert 2.0 < speeds[0] / speeds[1] < 3.0  # H100 over A100
    # DiT-XL/2 on one A100 ≈ fast-DiT's measurement (107.5 samples/s with checkpointing = 4 passes,
    # so ≈ 143 samples/s without), within the cross-attention our experts add.
    assert 100 < builtin_speed(XL, "NVIDIA-A100-SXM4-80GB") < 150
    # Unknown products fall back by compute capability, conservatively.
    assert builtin_speed(B, "Some-Future-GPU", 10) == builtin_speed(B, "NVIDIA-L4")
    assert builtin_speed(B, "Some-Old-GPU", 6) == builtin_speed(B, "Tesla-T4")


def test_precision_fp32_uses_the_fp32_peak() -> None:
    fp32 = Workload(preset=PRESETS["dit-b/2"], latent_shape=(4, 32, 32), precision="fp32")
    assert builtin_speed(fp32, "NVIDIA-A100-SXM4-80GB") < builtin_speed(B, "NVIDIA-A100-SXM4-80GB") / 5


def test_speed_sources_observed_beats_spec_beats_builtin_and_calibrates_the_rest() -> None:
    table = SpeedTable(workload=B, overrides={"NVIDIA L4": 50.0}, observed={"NVIDIA-A100-SXM4-80GB": 300.0})
    assert table.lookup("NVIDIA-L4") == (50.0, "spec")
    assert table.lookup("NVIDIA-A100-SXM4-80GB") == (300.0, "observed")
    # The A100 runs at 300 / built-in of what was expected: unobserved built-ins scale alike.
    factor = 300.0 / builtin_speed(B, "NVIDIA-A100-SXM4-80GB")
    speed, source = table.lookup("NVIDIA-H100-80GB-HBM3")
    assert source == "calibrated"
    assert speed == pytest.approx(builtin_speed(B, "NVIDIA-H100-80GB-HBM3") * factor)
    assert SpeedTable(workload=B).source("NVIDIA-L4") == "built-in"


def test_observed_speeds_from_progress_reports() -> None:
    reports = [
        StageProgress(stage="expert", expert=0, samples_per_second=380.0, gpus=4, node="h100-0", gpu="NVIDIA H100"),
        StageProgress(stage="expert", expert=1, samples_per_second=100.0, gpus=1, node="h100-1"),
        StageProgress(stage="expert", expert=2, samples_per_second=40.0, gpus=1, node=None, gpu="NVIDIA L4"),
        StageProgress(stage="expert", expert=3, samples_per_second=9.0, gpus=1, node="laptop", gpu="cpu"),
        StageProgress(stage="expert", expert=4, samples_per_second=None, gpus=1, node="h100-0"),
        StageProgress(stage="router", samples_per_second=999.0, gpus=1, node="h100-0"),
    ]
    products = {"h100-0": "NVIDIA-H100-80GB-HBM3", "h100-1": "NVIDIA-H100-80GB-HBM3"}
    observed = observed_speeds(reports, products)
    # per GPU: 380 / (1 + 0.9 × 3) and 100, median of the two; the CPU, router and empty reports are skipped
    assert observed == {"NVIDIA-H100-80GB-HBM3": pytest.approx((380 / 3.7 + 100) / 2), "NVIDIA-L4": 40.0}
    assert throughput(100.0, 4) == pytest.approx(370.0)


def test_run_speed_table_uses_spec_overrides_and_geometry() -> None:
    run = spec(steps=1000)
    run.placement.speeds = {"NVIDIA-L4": 77.0}
    table = speed_table(run)
    assert table.per_gpu("NVIDIA-L4") == 77.0
    assert workload_of(run).tokens == 256  # 256 px, 8× VAE, patch 2
    pixels = DDMRunSpec.model_validate({"dataset": {"uri": "builtin://digits", "resolution": 16}})
    assert workload_of(pixels).latent_shape == (3, 16, 16)
    assert workload_of(pixels).min_memory_gib(1, True) * GIB < 40 * GIB
