"""What a stage pod asks of its node: CPU and memory (requests equal to limits, so the pod is
Guaranteed QoS), a memory-backed /dev/shm, the size of its scratch volume, how long it may
take to stop, and the environment that points every cache at the scratch volume (the root
filesystem is read-only) and the thread pools at the CPU limit.

Sizes come from the stage's preset, the plan's GPU count (a pod without GPUs counts as one)
and the spec's overrides (`placement.cpuPerGpu`, `placement.memoryPerGpuGiB`). Pure: no API
calls; never reads the cluster.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from atoll.api.presets import get_preset
from atoll.api.spec import DDMRunSpec
from atoll.stages import StageJob

GIB = 1024**3

PRESET_CPU_PER_GPU: dict[str, float] = {"tiny": 1.0, "dit-s/2": 8.0, "dit-b/2": 8.0, "dit-l/2": 12.0, "dit-xl/2": 16.0}
"""CPU cores per GPU by preset: data loading, the shuffle window, checkpoint staging; the
tiny preset trains on one core (more threads only contend on a small machine)."""
PRESET_MEMORY_PER_GPU_GIB: dict[str, float] = {
    "tiny": 2.0,
    "dit-s/2": 32.0,
    "dit-b/2": 48.0,
    "dit-l/2": 64.0,
    "dit-xl/2": 96.0,
}
"""Host memory (GiB) per GPU by preset: two shuffle windows of latents, a staged checkpoint,
pinned buffers, /dev/shm."""
SHM_PER_GPU_GIB = 8.0
"""Shared memory (the dshm volume) per GPU: NCCL's buffers, data loader workers; at most a
quarter of the pod's memory."""
CHECKPOINT_BYTES_PER_PARAMETER = 16
"""model fp32 + EMA fp32 + AdamW's two fp32 moments."""
UPLOAD_BYTES_PER_SECOND = 50 * 1024**2
"""A conservative object-store upload rate for the grace period."""
STOP_MARGIN_SECONDS = 60
"""Time to reach the next step boundary and exit, on top of the checkpoint upload."""
SCRATCH = "/tmp"  # noqa: S108 - the pod's own emptyDir, not the host's /tmp
SHM = "/dev/shm"  # noqa: S108 - the pod's own memory-backed emptyDir


@dataclass(frozen=True, kw_only=True, slots=True)
class PodResources:
    """The sizes of one stage pod."""

    cpu: float
    """Cores (request = limit)."""
    memory_gib: float
    """Request = limit; /dev/shm is part of it."""
    shm_gib: float
    scratch_gib: float
    grace_seconds: int
    """terminationGracePeriodSeconds: enough to commit and upload a checkpoint."""

    def container(self, gpu_resource: str, gpus: int) -> dict[str, Any]:
        """The stage container's `resources` (requests equal to limits: Guaranteed QoS)."""
        amounts: dict[str, str] = {"cpu": _cpu(self.cpu), "memory": _mebibytes(self.memory_gib)}
        if gpus:
            amounts[gpu_resource] = str(gpus)
        return {"requests": dict(amounts), "limits": dict(amounts)}

    def volumes(self) -> list[dict[str, Any]]:
        """The scratch volume and the memory-backed /dev/shm, both size-limited."""
        return [
            {"name": "scratch", "emptyDir": {"sizeLimit": _mebibytes(self.scratch_gib)}},
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": _mebibytes(self.shm_gib)}},
        ]


def stage_preset(spec: DDMRunSpec, job: StageJob) -> str:
    """The preset that sizes a stage's pod: the router's for the router, the experts' otherwise."""
    return spec.router.preset if job.stage == "router" else spec.expert.preset


def pod_resources(spec: DDMRunSpec, job: StageJob, gpus: int) -> PodResources:
    """The sizes of one stage attempt's pod on `gpus` GPUs."""
    preset = stage_preset(spec, job)
    units = max(gpus, 1)
    cpu = (spec.placement.cpu_per_gpu or PRESET_CPU_PER_GPU.get(preset, 8.0)) * units
    memory = (spec.placement.memory_per_gpu_gi_b or PRESET_MEMORY_PER_GPU_GIB.get(preset, 64.0)) * units
    checkpoint = get_preset(preset).architecture.approx_parameters() * CHECKPOINT_BYTES_PER_PARAMETER
    scratch = 2.0 + 4 * checkpoint / GIB + (0.0 if preset == "tiny" else 32.0)
    return PodResources(
        cpu=cpu,
        memory_gib=memory,
        shm_gib=min(SHM_PER_GPU_GIB * units, memory / 4),
        scratch_gib=math.ceil(scratch),
        grace_seconds=STOP_MARGIN_SECONDS + math.ceil(checkpoint / UPLOAD_BYTES_PER_SECOND),
    )


def runtime_env(container: str) -> list[dict[str, Any]]:
    """Threads from the CPU limit (downward API, rounded up to whole cores) and every cache on
    the scratch volume (the root filesystem is read-only)."""
    threads = {"resourceFieldRef": {"containerName": container, "resource": "limits.cpu", "divisor": "1"}}
    env: list[dict[str, Any]] = [
        {"name": name, "valueFrom": threads} for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "ATOLL_TORCH_THREADS")
    ]
    # Idle OpenMP threads sleep instead of spinning on cores other pods share (as the local runtime does).
    env.append({"name": "OMP_WAIT_POLICY", "value": "PASSIVE"})
    caches = {  # the Hugging Face, torch and Triton caches default to $XDG_CACHE_HOME or $HOME
        "HOME": SCRATCH,
        "XDG_CACHE_HOME": f"{SCRATCH}/.cache",
        "MPLCONFIGDIR": f"{SCRATCH}/matplotlib",
        "ATOLL_WEIGHTS_CACHE": f"{SCRATCH}/atoll-weights",
    }
    env += [{"name": name, "value": value} for name, value in caches.items()]
    return env


def weights_env(spec: DDMRunSpec) -> list[dict[str, Any]]:
    """Where the trainer finds pretrained weights (spec.weights): a volume's directory, or the
    hub cache on a volume (the volumes themselves come from spec.template)."""
    weights = spec.weights
    if weights.source == "volume" and weights.path:
        return [{"name": "ATOLL_WEIGHTS_DIR", "value": weights.path}]
    if weights.source == "hub" and weights.path:
        return [{"name": "HF_HOME", "value": weights.path}, {"name": "HF_HUB_CACHE", "value": weights.path}]
    return []


def _cpu(cores: float) -> str:
    return f"{math.ceil(cores * 1000)}m"


def _mebibytes(gib: float) -> str:
    return f"{math.ceil(gib * 1024)}Mi"
