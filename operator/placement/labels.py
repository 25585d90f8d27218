"""Node label and annotation keys: those GPU Feature Discovery writes and those the agent writes.

The NVML agent (atoll.operator.agent) publishes the annotations, the planner reads them.
Constants only.
"""

from __future__ import annotations

# GPU Feature Discovery (NVIDIA) labels and the device plugin's extended resource.
GPU_PRODUCT = "nvidia.com/gpu.product"
GPU_MEMORY_MIB = "nvidia.com/gpu.memory"
GPU_COUNT = "nvidia.com/gpu.count"
GPU_COMPUTE_MAJOR = "nvidia.com/gpu.compute.major"
GPU_RESOURCE = "nvidia.com/gpu"
HOSTNAME = "kubernetes.io/hostname"

# The atoll agent's annotations on its own Node.
HEALTH = "atoll.dev/gpu-health"
"""`ok` when every GPU is healthy, otherwise a short reason such as `gpu 3: xid 79`."""
HEALTH_OK = "ok"
HEARTBEAT = "atoll.dev/gpu-heartbeat"
"""RFC 3339 UTC time of the agent's last report; older than the planner's limit = stale."""
FREE_MIB = "atoll.dev/gpu-free-mib"
"""Free memory of each GPU in MiB, comma-separated in NVML index order."""
AGENT_PRODUCT = "atoll.dev/gpu-product"
"""The GPU product as NVML names it, GFD-style (spaces as dashes): used when GFD labels are absent."""
AGENT_MEMORY_MIB = "atoll.dev/gpu-memory-mib"
"""Total memory of one GPU in MiB (the smallest, where GPUs differ)."""
GPUS = "atoll.dev/gpus"
"""Compact JSON list, one object per GPU: index, uuid, health, utilisation, temperature, throttling."""
