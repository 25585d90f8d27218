"""Reading GPUs through NVML (nvidia-ml-py's `pynvml`): per-GPU readings and XID events.

The NVML module is injected (`Nvml(module)`), the real `pynvml` by default, so tests run
against a double with the same functions, return types and NVMLError codes. Reads only:
never changes a GPU setting.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from atoll.errors import AtollError
from atoll.log import get_logger

log = get_logger(__name__)

APPLICATION_XIDS = frozenset({13, 31, 43, 45, 68, 109})
"""XIDs caused by applications, not the GPU (NVIDIA's device plugin ignores them too):
13 graphics engine exception, 31 GPU memory page fault, 43 GPU stopped processing,
45 preemptive cleanup, 68 video processor exception, 109 context switch timeout."""

# Clock event (throttle) reason bits, as in nvml.h.
THROTTLE_REASONS = {
    0x1: "gpu-idle",
    0x2: "applications-clocks",
    0x4: "sw-power-cap",
    0x8: "hw-slowdown",
    0x10: "sync-boost",
    0x20: "sw-thermal",
    0x40: "hw-thermal",
    0x80: "hw-power-brake",
    0x100: "display-clocks",
}
HARDWARE_SLOWDOWNS = frozenset({"hw-slowdown", "hw-thermal", "hw-power-brake"})
"""Throttling that signals a hardware problem (overheating beyond limits, power supply)."""


class NvmlUnavailableError(AtollError):
    """NVML cannot be used on this machine (no driver, no library, no permission)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class RemappedRows:
    """Row remapping state (Ampere and newer)."""

    correctable: int
    uncorrectable: int
    pending: bool
    failure: bool


@dataclass(frozen=True, kw_only=True, slots=True)
class GpuReading:
    """What NVML says about one GPU at one moment (None: the GPU does not support it)."""

    index: int
    uuid: str
    name: str
    memory_total_mib: int = 0
    memory_free_mib: int = 0
    utilization_percent: int | None = None
    temperature_c: int | None = None
    throttle: tuple[str, ...] = ()
    ecc_uncorrected: int | None = None
    """Volatile (since driver load) uncorrected ECC errors."""
    remapped_rows: RemappedRows | None = None
    retired_pages: int | None = None
    """Pages retired for double-bit ECC errors (pre-Ampere GPUs)."""
    retired_pages_pending: bool | None = None
    error: str | None = None
    """Why the GPU could not be read (e.g. `gpu lost`)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class XidEvent:
    """A critical XID error NVML reported for a GPU."""

    uuid: str | None
    """GPU of the event; None when NVML could not tell (every GPU is then suspect)."""
    xid: int | None
    """None: waiting for events failed (every GPU is then suspect, as the device plugin rules)."""


class Nvml:
    """An open NVML session over every GPU of this machine, with an XID event set."""

    def __init__(self, module: ModuleType | Any | None = None, *, ignored_xids: frozenset[int] = APPLICATION_XIDS):
        self.nvml: Any = module if module is not None else importlib.import_module("pynvml")
        self.ignored_xids = ignored_xids
        self.handles: list[Any] = []
        self.uuids: list[str] = []
        self.event_set: Any = None
        self.unwatched: dict[str, str] = {}
        """GPU uuid → why its XID events cannot be watched."""

    def open(self) -> None:
        """nvmlInit, find the GPUs, register their XID events. Raises NvmlUnavailableError."""
        nvml = self.nvml
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as error:
            raise NvmlUnavailableError(
                f"NVML is not available on this machine ({error}): `atoll agent` runs on GPU nodes with the"
                " NVIDIA driver (libnvidia-ml.so.1) installed, as a DaemonSet with the GPU devices visible"
            ) from None
        try:
            count = nvml.nvmlDeviceGetCount()
            self.handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
            self.uuids = [_text(nvml.nvmlDeviceGetUUID(h)) for h in self.handles]
        except nvml.NVMLError as error:
            self.close()
            raise NvmlUnavailableError(f"NVML cannot list the GPUs: {error}") from None
        self._register_events()
        log.info("nvml opened", gpus=len(self.handles), driver=self._driver())

    def close(self) -> None:
        nvml = self.nvml
        if self.event_set is not None:
            with _ignoring(nvml):
                nvml.nvmlEventSetFree(self.event_set)
            self.event_set = None
        with _ignoring(nvml):
            nvml.nvmlShutdown()

    def _driver(self) -> str | None:
        try:
            return _text(self.nvml.nvmlSystemGetDriverVersion())
        except self.nvml.NVMLError:
            return None

    def _register_events(self) -> None:
        """Watch XID errors, as NVIDIA's device plugin does (ECC events are read as counters)."""
        nvml = self.nvml
        try:
            self.event_set = nvml.nvmlEventSetCreate()
        except nvml.NVMLError as error:
            self.unwatched = dict.fromkeys(self.uuids, f"no event set: {error}")
            return
        for handle, uuid in zip(self.handles, self.uuids, strict=True):
            try:
                supported = nvml.nvmlDeviceGetSupportedEventTypes(handle) & nvml.nvmlEventTypeXidCriticalError
                if not supported:
                    log.warning("gpu reports no XID events; ECC and remapping are still watched", gpu=uuid)
                    continue
                nvml.nvmlDeviceRegisterEvents(handle, supported, self.event_set)
            except nvml.NVMLError as error:
                if _code(error) == nvml.NVML_ERROR_NOT_SUPPORTED:
                    log.warning("gpu too old for XID events; ECC and remapping are still watched", gpu=uuid)
                else:
                    self.unwatched[uuid] = f"xid events unavailable: {error}"

    def wait_events(self, timeout_ms: int) -> list[XidEvent]:
        """Critical XIDs that arrive within `timeout_ms` (then every one already queued)."""
        nvml = self.nvml
        if self.event_set is None:
            return []
        events: list[XidEvent] = []
        wait = timeout_ms
        while True:
            try:
                data = nvml.nvmlEventSetWait_v2(self.event_set, wait)
            except nvml.NVMLError as error:
                if _code(error) == nvml.NVML_ERROR_TIMEOUT:
                    return events
                # The device plugin's rule: a broken event wait makes every GPU suspect.
                log.error("nvml event wait failed", error=str(error))
                return [*events, XidEvent(uuid=None, xid=None)]
            wait = 0
            if data.eventType != nvml.nvmlEventTypeXidCriticalError:
                continue
            xid = int(data.eventData)
            if xid in self.ignored_xids:
                log.info("ignoring application xid", xid=xid)
                continue
            try:
                uuid: str | None = _text(nvml.nvmlDeviceGetUUID(data.device))
            except nvml.NVMLError:
                uuid = None
            log.warning("critical xid", xid=xid, gpu=uuid)
            events.append(XidEvent(uuid=uuid, xid=xid))

    def read(self) -> list[GpuReading]:
        """One reading per GPU, in NVML index order."""
        return [self._read_one(i, h, u) for i, (h, u) in enumerate(zip(self.handles, self.uuids, strict=True))]

    def _read_one(self, index: int, handle: Any, uuid: str) -> GpuReading:
        nvml = self.nvml
        name = ""
        try:
            name = _text(nvml.nvmlDeviceGetName(handle))
            return self._read_details(index, handle, uuid, name)
        except nvml.NVMLError as error:
            lost = _code(error) == nvml.NVML_ERROR_GPU_IS_LOST
            return GpuReading(index=index, uuid=uuid, name=name, error="gpu lost" if lost else f"nvml: {error}")

    def _read_details(self, index: int, handle: Any, uuid: str, name: str) -> GpuReading:
        nvml = self.nvml
        memory = nvml.nvmlDeviceGetMemoryInfo(handle)
        utilization = self._optional(lambda: nvml.nvmlDeviceGetUtilizationRates(handle))
        reasons = self._optional(lambda: _throttle_mask(nvml, handle))
        temperature = self._optional(lambda: nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU))
        ecc = self._optional(
            lambda: nvml.nvmlDeviceGetTotalEccErrors(
                handle, nvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, nvml.NVML_VOLATILE_ECC
            )
        )
        rows = self._optional(lambda: nvml.nvmlDeviceGetRemappedRows(handle))
        retired = pending = None
        if rows is None:  # pre-Ampere: page retirement instead of row remapping
            cause = nvml.NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR
            pages = self._optional(lambda: nvml.nvmlDeviceGetRetiredPages(handle, cause))
            retired = len(pages) if pages is not None else None
            flag = self._optional(lambda: nvml.nvmlDeviceGetRetiredPagesPendingStatus(handle))
            pending = bool(flag) if flag is not None else None
        return GpuReading(
            index=index,
            uuid=uuid,
            name=name,
            memory_total_mib=int(memory.total) // (1024 * 1024),
            memory_free_mib=int(memory.free) // (1024 * 1024),
            utilization_percent=int(utilization.gpu) if utilization is not None else None,
            temperature_c=int(temperature) if temperature is not None else None,
            throttle=tuple(label for bit, label in THROTTLE_REASONS.items() if reasons and reasons & bit),
            ecc_uncorrected=int(ecc) if ecc is not None else None,
            remapped_rows=None
            if rows is None
            else RemappedRows(
                correctable=int(rows[0]), uncorrectable=int(rows[1]), pending=bool(rows[2]), failure=bool(rows[3])
            ),
            retired_pages=retired,
            retired_pages_pending=pending,
        )

    def _optional(self, read: Any) -> Any:
        """`read()`, or None where the GPU or driver does not support it."""
        nvml = self.nvml
        try:
            return read()
        except nvml.NVMLError as error:
            if _code(error) in (nvml.NVML_ERROR_NOT_SUPPORTED, nvml.NVML_ERROR_FUNCTION_NOT_FOUND):
                return None
            raise


def _throttle_mask(nvml: Any, handle: Any) -> int:
    # nvmlDeviceGetCurrentClocksEventReasons replaced ...ThrottleReasons (deprecated) in R535.
    try:
        return int(nvml.nvmlDeviceGetCurrentClocksEventReasons(handle))
    except nvml.NVMLError as error:
        if _code(error) != nvml.NVML_ERROR_FUNCTION_NOT_FOUND:
            raise
        return int(nvml.nvmlDeviceGetCurrentClocksThrottleReasons(handle))


def _code(error: Exception) -> int | None:
    value = getattr(error, "value", None)
    return value if isinstance(value, int) else None


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@contextmanager
def _ignoring(nvml: Any) -> Iterator[None]:
    try:
        yield
    except nvml.NVMLError as error:
        log.debug("nvml cleanup", error=str(error))
