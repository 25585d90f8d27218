"""NVML telemetry: absent cleanly without a GPU, complete readings with one (NVML double)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch

from atoll.trainer.telemetry import GpuTelemetry


class NVMLError(Exception):
    pass


def fake_nvml(*, power: bool = True) -> Any:
    """The slice of pynvml's API telemetry uses, for one H100 that may not report power."""

    def get_power(handle: str) -> int:
        if not power:
            raise NVMLError("Not Supported")
        return 312_500

    return SimpleNamespace(
        NVMLError=NVMLError,
        NVML_TEMPERATURE_GPU=0,
        nvmlInit=lambda: None,
        nvmlShutdown=lambda: None,
        nvmlDeviceGetCount=lambda: 2,
        nvmlDeviceGetHandleByIndex=lambda i: f"gpu{i}",
        nvmlDeviceGetHandleByUUID=lambda uuid: uuid,
        nvmlDeviceGetName=lambda h: b"NVIDIA H100 80GB HBM3",
        nvmlDeviceGetUtilizationRates=lambda h: SimpleNamespace(gpu=97, memory=41),
        nvmlDeviceGetMemoryInfo=lambda h: SimpleNamespace(used=60 * 2**30, total=80 * 2**30),
        nvmlDeviceGetTemperature=lambda h, sensor: 71,
        nvmlDeviceGetPowerUsage=get_power,
        nvmlDeviceGetEnforcedPowerLimit=lambda h: 700_000,
    )


def test_no_gpu_means_no_telemetry() -> None:
    if torch.cuda.is_available():  # a GPU machine: real NVML must answer
        telemetry = GpuTelemetry.open(count=1)
        assert telemetry is not None
        assert telemetry.read()["gpus"][0]["memoryTotalMiB"] > 0
        telemetry.close()
    else:
        assert GpuTelemetry.open(count=1) is None


def test_readings_per_gpu() -> None:
    telemetry = GpuTelemetry.open(count=2, nvml=fake_nvml())
    assert telemetry is not None
    assert telemetry.product() == "NVIDIA H100 80GB HBM3"
    gpus = telemetry.read()["gpus"]
    assert len(gpus) == 2
    assert gpus[1] == {
        "index": 1,
        "name": "NVIDIA H100 80GB HBM3",
        "utilizationPercent": 97,
        "memoryUtilizationPercent": 41,
        "memoryUsedMiB": 61440,
        "memoryTotalMiB": 81920,
        "temperatureC": 71,
        "powerW": 312.5,
        "powerLimitW": 700.0,
    }
    by_uuid = GpuTelemetry.open(["0e0b1c2d"], nvml=fake_nvml(power=False))
    assert by_uuid is not None
    reading = by_uuid.read()["gpus"][0]
    assert "powerW" not in reading  # unsupported readings are left out, never fail
    assert reading["temperatureC"] == 71
