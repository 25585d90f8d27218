"""bench/gpu.py runs on a CPU with the tiny presets, so the GPU benchmark cannot rot between GPU runs:
the JSON has its shape, MFU comes from counted FLOPs, the torchrun run and the agent report."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from atoll.api.presets import PRESETS
from atoll.trainer import flow
from atoll.trainer.models.expert import build_expert, velocity

ROOT = Path(__file__).resolve().parents[2]
LATENT = (3, 8, 8)
TEXT = (4, 16)
PEAK_TFLOPS = 0.05


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("bench") / "gpu.json"
    presets = ["tiny", *(["video-tiny"] if "video-tiny" in PRESETS else [])]
    command = [
        *(sys.executable, str(ROOT / "bench" / "gpu.py"), "--device", "cpu", "--out", str(out)),
        *("--presets", ",".join(presets), "--router", "tiny", "--video", "none", "--compile", "off"),
        *("--latent", *map(str, LATENT), "--clip", "3", "2", *map(str, LATENT[1:]), "--text", *map(str, TEXT)),
        *("--batch", "8"),
        *("--warmup", "1", "--steps", "2", "--smoke-steps", "2", "--peak-tflops", str(PEAK_TFLOPS)),
    ]
    env = {**os.environ, "ATOLL_TORCH_THREADS": "1", "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(command, capture_output=True, text=True, timeout=800, check=False, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    document: dict[str, Any] = json.loads(out.read_text())
    return document


def counted_flops_per_sample() -> float:
    """FLOPs of one forward and backward of the tiny expert, counted here independently of the bench."""
    model = build_expert("tiny", latent_shape=LATENT, text_dim=TEXT[1], seed=0)
    x0, noise = torch.randn(2, *LATENT), torch.randn(2, *LATENT)
    sigma = torch.rand(2)
    counter = FlopCounterMode(display=False)
    with counter:
        prediction = velocity(model, flow.add_noise(x0, noise, sigma), sigma, torch.randn(2, *TEXT), torch.ones(2, 4))
        flow.flow_matching_loss(prediction, x0, noise).sum().backward()
    return counter.get_total_flops() / 2


def test_report_has_its_shape(report: dict[str, Any]) -> None:
    assert report["schema"] == "atoll-gpu-bench/v1"
    assert report["environment"]["device"] == "cpu"
    assert report["environment"]["torch"] == torch.__version__
    assert report["peakTflops"] == PEAK_TFLOPS
    assert report["skipped"] == []
    assert [(r["model"], r["preset"], r["compile"]) for r in report["runs"]][-1] == ("router", "tiny", False)
    for run in report["runs"]:
        assert run["error"] is None, run["error"]
        assert run["globalBatch"] == 8
        assert run["microBatch"] * run["gradAccum"] == 8
        assert run["precision"] == "fp32"
        assert run["steps"] == {"warmup": 1, "timed": 3, "checkpointEvery": 3, "presetCheckpointEvery": 100}
        assert run["samplesPerSecond"]["steady"] == pytest.approx(8 / run["stepSeconds"]["steady"])
        assert run["samplesPerSecond"]["amortised"] <= run["samplesPerSecond"]["steady"]
        assert run["bare"]["stepSeconds"] > 0
        assert run["loopOverBare"] == pytest.approx(run["stepSeconds"]["steady"] / run["bare"]["stepSeconds"])
        assert math.isfinite(run["loss"]["first"])
        assert math.isfinite(run["loss"]["last"])
        assert run["memory"]["plannerBytes"] > 0
        assert run["memory"]["measuredBytes"] is None  # no device memory to measure on a CPU
        assert any("scaled_dot_product" in kernel for kernel in run["attentionKernels"])


def test_mfu_is_computed_from_counted_flops(report: dict[str, Any]) -> None:
    run = report["runs"][0]
    assert (run["model"], run["preset"]) == ("expert", "tiny")
    flops = run["flopsPerSample"]
    assert flops["counted"] == pytest.approx(counted_flops_per_sample())
    assert flops["counted"] != flops["planner"]  # counted, not the planner's formula
    assert flops["countedOverPlanner"] == pytest.approx(flops["counted"] / flops["planner"])
    achieved = flops["counted"] * run["samplesPerSecond"]["steady"]
    assert run["achievedTflops"] == pytest.approx(achieved / 1e12)
    assert run["mfu"] == pytest.approx(achieved / (PEAK_TFLOPS * 1e12))


def test_torchrun_smoke_run_trains_the_stage_under_ddp(report: dict[str, Any]) -> None:
    smoke = report["ddpSmoke"]
    assert smoke["returncode"] == 0, smoke["stderr"]
    assert "backend=gloo ranks=1" in smoke["distributedDataParallel"]
    assert smoke["finalCheckpointStep"] == 2
    assert smoke["progress"]["state"] == "done"


def test_agent_reading_is_recorded(report: dict[str, Any]) -> None:
    agent = report["agent"]
    if agent["returncode"] == 0:  # a machine with NVML: what the agent would publish
        assert any(key.startswith("atoll.dev/") for key in agent["annotations"])
    else:  # no NVML here: the agent's own clear error is kept
        assert agent["annotations"] is None
        assert "NVML" in " ".join(agent["stderr"])
