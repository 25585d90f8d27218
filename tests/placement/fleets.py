"""Random heterogeneous fleets and runs for planner property tests (seeded: every failure replays).

Each node's intended state is returned next to the Node objects, so tests judge the plan
against what the fleet *is*, not against the planner's own reading of it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from atoll.api import DDMRunSpec

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

# GFD product, memory MiB, compute capability major.
PRODUCTS = (
    ("NVIDIA-H100-80GB-HBM3", 81559, 9),
    ("NVIDIA-H200", 143771, 9),
    ("NVIDIA-A100-SXM4-80GB", 81920, 8),
    ("NVIDIA-A100-SXM4-40GB", 40960, 8),
    ("NVIDIA-L40S", 46068, 8),
    ("NVIDIA-L4", 23034, 8),
    ("NVIDIA-GeForce-RTX-4090", 24564, 8),
    ("NVIDIA-A10G", 23028, 8),
    ("Tesla-T4", 15360, 7),
    ("Tesla-V100-SXM2-16GB", 16384, 7),
)
STATES = ("ok",) * 8 + ("cordoned", "unhealthy", "stale", "notready", "tainted", "no-gpu")
USABLE = "ok"


def node(
    name: str,
    product: tuple[str, int, int],
    gpus: int,
    state: str = "ok",
    *,
    agent: bool = True,
    extra_labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A Node as `kubectl get node -o yaml` prints it, in the given state."""
    label, memory, major = product
    labels = {"kubernetes.io/hostname": name, **(extra_labels or {})}
    annotations: dict[str, str] = {}
    # A DGX-like host: 28 cores and 256 GiB per GPU (the largest preset's expert pod asks 16 and 96).
    allocatable: dict[str, str] = {"cpu": str(max(64, 28 * gpus)), "memory": f"{max(512, 256 * gpus)}Gi"}
    if state != "no-gpu":
        labels.update(
            {
                "nvidia.com/gpu.product": label,
                "nvidia.com/gpu.memory": str(memory),
                "nvidia.com/gpu.count": str(gpus),
                "nvidia.com/gpu.compute.major": str(major),
            }
        )
        allocatable["nvidia.com/gpu"] = str(gpus)
    if agent:
        beat = NOW - (timedelta(minutes=30) if state == "stale" else timedelta(seconds=20))
        annotations["atoll.dev/gpu-heartbeat"] = beat.isoformat().replace("+00:00", "Z")
        annotations["atoll.dev/gpu-health"] = "gpu 0: 2 uncorrected ECC errors" if state == "unhealthy" else "ok"
    taints = [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]
    if state == "tainted":
        taints.append({"key": "dedicated", "value": "inference", "effect": "NoSchedule"})
    spec: dict[str, Any] = {"taints": taints}
    if state == "cordoned":
        spec["unschedulable"] = True
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels, "annotations": annotations},
        "spec": spec,
        "status": {
            "allocatable": allocatable,
            "capacity": dict(allocatable),
            "conditions": [
                {"type": "Ready", "status": "False" if state == "notready" else "True", "reason": "KubeletReady"}
            ],
        },
    }


@dataclass(frozen=True)
class Case:
    """A random fleet, a run on it and what the fleet is."""

    seed: int
    nodes: list[dict[str, Any]]
    states: dict[str, str]
    gpus: dict[str, int]
    memory_mib: dict[str, int]
    used_gpus: dict[str, int]
    spec: DDMRunSpec
    sizes: list[int]


def random_case(seed: int, *, max_nodes: int = 10, max_experts: int = 10) -> Case:
    rng = random.Random(seed)
    nodes, states, gpus, memory, used = [], {}, {}, {}, {}
    for index in range(rng.randint(1, max_nodes)):
        product = rng.choice(PRODUCTS)
        count = rng.choice((1, 2, 4, 8))
        state = rng.choice(STATES)
        name = f"n{index:02d}-{product[0].lower()[-8:].strip('-')}"
        agent = rng.random() < 0.85 or state in ("unhealthy", "stale")  # only the agent says so
        nodes.append(node(name, product, count, state, agent=agent))
        states[name], gpus[name], memory[name] = state, count, product[1]
        if rng.random() < 0.25:
            used[name] = rng.randint(0, count)
    experts = rng.randint(1, max_experts)
    preset = rng.choice(("tiny", "dit-s/2", "dit-b/2", "dit-l/2", "dit-xl/2"))
    batch = rng.choice((24, 32, 64, 96, 256))
    pixel = rng.random() < 0.3
    spec = DDMRunSpec.model_validate(
        {
            "dataset": {
                "uri": "builtin://shapes",
                "resolution": 32 if pixel else 256,
                "vae": "identity" if pixel else "sd-vae-ft-mse",
            },
            "partition": {"clusters": experts},
            "weights": {"source": "hub"},
            "expert": {
                "preset": preset,
                "steps": rng.randint(100, 20_000),
                "globalBatchSize": batch,
                "stepsPolicy": rng.choice(("equal", "proportional")),
            },
            "placement": {
                "gpu": {"minMemoryGiB": rng.choice((0, 0, 16, 24, 40)), "maxPerExpert": rng.choice((1, 2, 4, 8))}
            },
        }
    )
    sizes = [rng.randint(1, 10_000) for _ in range(experts)]
    return Case(seed, nodes, states, gpus, memory, used, spec, sizes)
