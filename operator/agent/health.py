"""From NVML readings to a verdict per GPU and the compact annotations the agent puts on its Node.

Pure: readings and remembered XIDs in, strings out. A GPU is unhealthy when it cannot be
read (lost), raised a critical XID since the agent started (sticky, like NVIDIA's device
plugin: such a GPU needs a reset, after which the agent restarts), has uncorrected ECC
errors since the driver loaded, a failed or pending row remapping (or pending page
retirement on older GPUs), or is in a hardware slowdown (thermal, power brake). Software
power capping and thermal clock management are normal under load and only reported.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from atoll.operator.agent.nvml import HARDWARE_SLOWDOWNS, GpuReading
from atoll.operator.placement import labels
from atoll.operator.placement.gpus import canonical_product


@dataclass(frozen=True, kw_only=True, slots=True)
class Watch:
    """What the agent remembers between readings."""

    xids: Mapping[str, Sequence[int]] = field(default_factory=dict)
    """GPU uuid → critical XIDs seen since the agent started."""
    suspect: str | None = None
    """Why every GPU is suspect (an XID NVML could not attribute, a failed event wait)."""
    unwatched: Mapping[str, str] = field(default_factory=dict)
    """GPU uuid → why its XID events cannot be watched."""


def gpu_health(reading: GpuReading, watch: Watch | None = None) -> str:
    """`ok`, or the first reason this GPU should not be trusted with training."""
    watch = watch or Watch()
    xids = sorted(set(watch.xids.get(reading.uuid, ())))
    rows = reading.remapped_rows
    slow = [reason for reason in reading.throttle if reason in HARDWARE_SLOWDOWNS]
    checks: list[tuple[object, str]] = [
        (reading.error, reading.error or ""),
        (xids, "xid " + ",".join(str(x) for x in xids)),
        (watch.suspect, watch.suspect or ""),
        (reading.ecc_uncorrected, f"{reading.ecc_uncorrected} uncorrected ECC errors"),
        (rows is not None and rows.failure, "row remapping failed"),
        (rows is not None and rows.pending, "row remapping pending (reset the GPU)"),
        (reading.retired_pages_pending, "page retirement pending (reset the GPU)"),
        (slow, "throttled " + ",".join(slow)),
        (watch.unwatched.get(reading.uuid), watch.unwatched.get(reading.uuid, "")),
    ]
    return next((reason for condition, reason in checks if condition), labels.HEALTH_OK)


def node_health(readings: Sequence[GpuReading], watch: Watch | None = None) -> str:
    """`ok`, or `gpu <index>: <reason>` of the first unhealthy GPU (`, +N more` when several)."""
    if not readings:
        return "no GPU found by NVML"
    bad = []
    for reading in readings:
        verdict = gpu_health(reading, watch)
        if verdict != labels.HEALTH_OK:
            bad.append(f"gpu {reading.index}: {verdict}")
    if not bad:
        return labels.HEALTH_OK
    return bad[0] + (f", +{len(bad) - 1} more" if len(bad) > 1 else "")


def node_annotations(
    readings: Sequence[GpuReading], watch: Watch | None = None, now: datetime | None = None
) -> dict[str, str]:
    """The annotations the agent writes on its Node (keys in atoll.operator.placement.labels)."""
    moment = (now or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
    names = [r.name for r in readings if r.name]
    totals = [r.memory_total_mib for r in readings if r.memory_total_mib]
    per_gpu = []
    watch = watch or Watch()
    for reading in readings:
        item: dict[str, object] = {
            "i": reading.index,
            "uuid": reading.uuid,
            "health": gpu_health(reading, watch),
            "freeMiB": reading.memory_free_mib,
            "util": reading.utilization_percent,
            "tempC": reading.temperature_c,
        }
        if reading.throttle:
            item["throttle"] = list(reading.throttle)
        if reading.ecc_uncorrected:
            item["eccUncorrected"] = reading.ecc_uncorrected
        if reading.remapped_rows is not None and (
            reading.remapped_rows.correctable or reading.remapped_rows.uncorrectable
        ):
            item["remappedRows"] = [reading.remapped_rows.correctable, reading.remapped_rows.uncorrectable]
        if reading.retired_pages:
            item["retiredPages"] = reading.retired_pages
        if watch.xids.get(reading.uuid):
            item["xids"] = sorted(set(watch.xids[reading.uuid]))
        per_gpu.append(item)
    result = {
        labels.HEALTH: node_health(readings, watch),
        labels.HEARTBEAT: moment.isoformat().replace("+00:00", "Z"),
        labels.FREE_MIB: ",".join(str(r.memory_free_mib) for r in readings),
        labels.GPUS: json.dumps(per_gpu, separators=(",", ":")),
    }
    if names:
        result[labels.AGENT_PRODUCT] = canonical_product(max(set(names), key=names.count))
    if totals:
        result[labels.AGENT_MEMORY_MIB] = str(min(totals))
    return result
