"""An in-memory NVML for agent tests: the pynvml functions the agent calls, with pynvml's own
constants, structs and NVMLError classes, over a configurable set of fake GPUs.

Errors are real `pynvml.NVMLError` instances built from NVML return codes (so
`except pynvml.NVMLError_NotSupported` and `.value` behave as with a driver), memory and
utilisation come back as pynvml's ctypes structs, and the event set queues events
`c_nvmlEventData_t`-shaped, raising NVML_ERROR_TIMEOUT when empty.
"""

from __future__ import annotations

import types
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import pynvml

MIB = 1024 * 1024


@dataclass
class FakeGpu:
    """One GPU's state; None for a feature the GPU does not support (NVML_ERROR_NOT_SUPPORTED)."""

    name: str = "NVIDIA H100 80GB HBM3"
    uuid: str = "GPU-00000000-0000-0000-0000-000000000000"
    memory_total_mib: int = 81559
    memory_free_mib: int = 81000
    utilization: int | None = 0
    temperature: int | None = 35
    throttle_mask: int | None = 0x1  # gpu idle
    ecc_uncorrected: int | None = 0
    remapped_rows: tuple[int, int, int, int] | None = (0, 0, 0, 0)
    retired_pages: list[int] | None = None
    retired_pending: int | None = None
    supported_events: int = pynvml.nvmlEventTypeXidCriticalError | pynvml.nvmlEventTypeDoubleBitEccError
    lost: bool = False
    register_error: int | None = None
    """NVML return code nvmlDeviceRegisterEvents fails with, if any."""


@dataclass
class _Handle:
    index: int


@dataclass
class FakeNvml:
    """The module-like double: pass it as the agent's NVML module."""

    gpus: list[FakeGpu] = field(default_factory=lambda: [FakeGpu()])
    driver_loaded: bool = True
    wait_error: int | None = None
    """When set, nvmlEventSetWait_v2 fails with this NVML return code."""
    events: deque[Any] = field(default_factory=deque)
    calls: list[str] = field(default_factory=list)
    initialised: bool = False
    registered: dict[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Constants and exception classes exactly as pynvml defines them.
        for name in dir(pynvml):
            if name.startswith(("NVML_", "nvmlEventType", "nvmlClocks", "NVMLError")) or name == "NVMLError":
                setattr(self, name, getattr(pynvml, name))

    # -- helpers for tests --

    def xid(self, gpu: int, xid: int, event_type: int = pynvml.nvmlEventTypeXidCriticalError) -> None:
        """Queue an event for GPU `gpu` (index) as the driver would."""
        self.events.append(
            types.SimpleNamespace(
                device=_Handle(gpu),
                eventType=event_type,
                eventData=xid,
                gpuInstanceId=0xFFFFFFFF,
                computeInstanceId=0xFFFFFFFF,
            )
        )

    def _gpu(self, handle: _Handle) -> FakeGpu:
        self._check()
        gpu = self.gpus[handle.index]
        if gpu.lost:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)
        return gpu

    def _check(self) -> None:
        if not self.initialised:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_UNINITIALIZED)

    @staticmethod
    def _supported(value: Any) -> Any:
        if value is None:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return value

    # -- the pynvml functions the agent calls --

    def nvmlInit(self) -> None:
        self.calls.append("nvmlInit")
        if not self.driver_loaded:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_DRIVER_NOT_LOADED)
        self.initialised = True

    def nvmlShutdown(self) -> None:
        self.calls.append("nvmlShutdown")
        self._check()
        self.initialised = False

    def nvmlSystemGetDriverVersion(self) -> str:
        self._check()
        return "570.133.20"

    def nvmlDeviceGetCount(self) -> int:
        self._check()
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> _Handle:
        self._check()
        if not 0 <= index < len(self.gpus):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return _Handle(index)

    def nvmlDeviceGetUUID(self, handle: _Handle) -> str:
        self._check()
        return self.gpus[handle.index].uuid

    def nvmlDeviceGetName(self, handle: _Handle) -> str:
        return self._gpu(handle).name

    def nvmlDeviceGetMemoryInfo(self, handle: _Handle) -> Any:
        gpu = self._gpu(handle)
        memory = pynvml.c_nvmlMemory_t()
        memory.total = gpu.memory_total_mib * MIB
        memory.free = gpu.memory_free_mib * MIB
        memory.used = (gpu.memory_total_mib - gpu.memory_free_mib) * MIB
        return memory

    def nvmlDeviceGetUtilizationRates(self, handle: _Handle) -> Any:
        gpu = self._gpu(handle)
        rates = pynvml.c_nvmlUtilization_t()
        rates.gpu = self._supported(gpu.utilization)
        rates.memory = 0
        return rates

    def nvmlDeviceGetTemperature(self, handle: _Handle, sensor: int) -> int:
        assert sensor == pynvml.NVML_TEMPERATURE_GPU
        return int(self._supported(self._gpu(handle).temperature))

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle: _Handle) -> int:
        return int(self._supported(self._gpu(handle).throttle_mask))

    def nvmlDeviceGetTotalEccErrors(self, handle: _Handle, error_type: int, counter_type: int) -> int:
        assert error_type == pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED
        assert counter_type == pynvml.NVML_VOLATILE_ECC
        return int(self._supported(self._gpu(handle).ecc_uncorrected))

    def nvmlDeviceGetRemappedRows(self, handle: _Handle) -> tuple[int, int, int, int]:
        rows: tuple[int, int, int, int] = self._supported(self._gpu(handle).remapped_rows)
        return rows

    def nvmlDeviceGetRetiredPages(self, handle: _Handle, cause: int) -> list[int]:
        assert cause == pynvml.NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR
        pages: list[int] = self._supported(self._gpu(handle).retired_pages)
        return pages

    def nvmlDeviceGetRetiredPagesPendingStatus(self, handle: _Handle) -> int:
        return int(self._supported(self._gpu(handle).retired_pending))

    def nvmlEventSetCreate(self) -> object:
        self._check()
        return object()

    def nvmlEventSetFree(self, event_set: object) -> None:
        self._check()

    def nvmlDeviceGetSupportedEventTypes(self, handle: _Handle) -> int:
        return self._gpu(handle).supported_events

    def nvmlDeviceRegisterEvents(self, handle: _Handle, event_types: int, event_set: object) -> None:
        gpu = self._gpu(handle)
        if gpu.register_error is not None:
            raise pynvml.NVMLError(gpu.register_error)
        if not event_types & gpu.supported_events:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        self.registered[handle.index] = event_types

    def nvmlEventSetWait_v2(self, event_set: object, timeout_ms: int) -> Any:
        self._check()
        if self.wait_error is not None:
            raise pynvml.NVMLError(self.wait_error)
        if not self.events:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_TIMEOUT)
        return self.events.popleft()
