"""NVML readings of the GPUs a stage trains on, for its progress.json heartbeat.

Utilisation, memory, temperature and power per GPU through nvidia-ml-py (pynvml). Where
there is no GPU or no NVML library, `GpuTelemetry.open` returns None and the heartbeat
simply carries no telemetry. Reading telemetry must never fail a training step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from types import ModuleType
from typing import Any

from atoll.log import get_logger

log = get_logger(__name__)


class GpuTelemetry:
    """Open NVML handles of the GPUs one training process uses."""

    def __init__(self, nvml: ModuleType, handles: list[Any]) -> None:
        self._nvml = nvml
        self._handles = handles

    @classmethod
    def open(cls, uuids: Sequence[str] = (), *, count: int = 1, nvml: ModuleType | None = None) -> GpuTelemetry | None:
        """Handles of the GPUs with `uuids` (torch's device UUIDs), else of the first `count` GPUs.

        None when NVML is unavailable (no driver, CPU-only machine) or no GPU matches.
        `nvml` is the pynvml module (injectable for tests).
        """
        if nvml is None:
            try:
                import pynvml
            except ImportError:
                return None
            nvml = pynvml
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as error:
            log.info("NVML unavailable: no GPU telemetry", reason=str(error))
            return None
        try:
            if uuids:
                handles = [nvml.nvmlDeviceGetHandleByUUID(_nvml_uuid(uuid)) for uuid in uuids]
            else:
                available = nvml.nvmlDeviceGetCount()
                handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(min(count, available))]
        except nvml.NVMLError as error:
            log.warning("NVML could not open the training GPUs: no telemetry", reason=str(error))
            nvml.nvmlShutdown()
            return None
        if not handles:
            nvml.nvmlShutdown()
            return None
        return cls(nvml, handles)

    def product(self) -> str:
        """The (first) GPU's product name, e.g. 'NVIDIA H100 80GB HBM3'."""
        return _text(self._nvml.nvmlDeviceGetName(self._handles[0]))

    def read(self) -> dict[str, Any]:
        """{"gpus": [per GPU: name, utilisation %, memory MiB, temperature °C, power W]}; fields
        a GPU does not report are left out."""
        nvml = self._nvml
        gpus = []
        for index, handle in enumerate(self._handles):
            reading: dict[str, Any] = {"index": index}
            probes = (
                ("name", lambda h: _text(nvml.nvmlDeviceGetName(h))),
                ("utilizationPercent", lambda h: nvml.nvmlDeviceGetUtilizationRates(h).gpu),
                ("memoryUtilizationPercent", lambda h: nvml.nvmlDeviceGetUtilizationRates(h).memory),
                ("memoryUsedMiB", lambda h: nvml.nvmlDeviceGetMemoryInfo(h).used // 2**20),
                ("memoryTotalMiB", lambda h: nvml.nvmlDeviceGetMemoryInfo(h).total // 2**20),
                ("temperatureC", lambda h: nvml.nvmlDeviceGetTemperature(h, nvml.NVML_TEMPERATURE_GPU)),
                ("powerW", lambda h: round(nvml.nvmlDeviceGetPowerUsage(h) / 1000.0, 1)),
                ("powerLimitW", lambda h: round(nvml.nvmlDeviceGetEnforcedPowerLimit(h) / 1000.0, 1)),
            )
            for name, probe in probes:
                try:
                    reading[name] = probe(handle)
                except nvml.NVMLError:
                    continue  # e.g. power readings are not supported on every board
            gpus.append(reading)
        return {"gpus": gpus}

    def close(self) -> None:
        with contextlib.suppress(self._nvml.NVMLError):
            self._nvml.nvmlShutdown()


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _nvml_uuid(uuid: str) -> str:
    """torch reports '0e0b…' or 'GPU-0e0b…'; NVML wants the 'GPU-' form."""
    return uuid if uuid.startswith(("GPU-", "MIG-")) else f"GPU-{uuid}"
