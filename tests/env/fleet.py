"""Pure builders of Node objects for a heterogeneous fake GPU fleet, labelled the way NVIDIA
GPU Feature Discovery labels real nodes, plus `apply` to create them in a cluster.

GPU nodes of the default fleet carry `atoll.dev/execute: "true"` and are NOT kwok-managed:
the pod process runtime is their kubelet. A small CPU-only pool and the large simulated
fleets for benchmarks are kwok-managed (annotation `kwok.x-k8s.io/node: fake`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from tests.env.cluster import KWOK_NODE_ANNOTATION

EXECUTE_LABEL = "atoll.dev/execute"
POOL_LABEL = "atoll.dev/pool"
GPU_RESOURCE = "nvidia.com/gpu"
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}


@dataclass(frozen=True)
class GpuProduct:
    """One GPU model as GPU Feature Discovery reports it."""

    product: str
    """`nvidia.com/gpu.product`, e.g. NVIDIA-H100-80GB-HBM3."""
    memory_mib: int
    family: str
    compute_major: int
    compute_minor: int


H100 = GpuProduct("NVIDIA-H100-80GB-HBM3", 81559, "hopper", 9, 0)
A100_40GB = GpuProduct("NVIDIA-A100-SXM4-40GB", 40960, "ampere", 8, 0)
L4 = GpuProduct("NVIDIA-L4", 23034, "ada-lovelace", 8, 9)
RTX_4090 = GpuProduct("NVIDIA-GeForce-RTX-4090", 24564, "ada-lovelace", 8, 9)
T4 = GpuProduct("Tesla-T4", 15360, "turing", 7, 5)
PRODUCTS: tuple[GpuProduct, ...] = (H100, A100_40GB, L4, RTX_4090, T4)


@dataclass(frozen=True)
class Pool:
    """A group of identical nodes."""

    name: str
    nodes: int
    gpu: GpuProduct | None
    gpus_per_node: int
    cpu: int
    memory_gib: int
    execute: bool
    """True: the pod process runtime runs this pool's pods; False: kwok simulates them."""
    pods: int = 110

    def node_names(self) -> list[str]:
        return [f"{self.name}-{index}" for index in range(self.nodes)]


DEFAULT_POOLS: tuple[Pool, ...] = (
    Pool("h100", 2, H100, 8, cpu=208, memory_gib=2048, execute=True),
    Pool("a100-40gb", 2, A100_40GB, 8, cpu=96, memory_gib=1152, execute=True),
    Pool("l4", 2, L4, 4, cpu=48, memory_gib=192, execute=True),
    Pool("rtx4090", 2, RTX_4090, 4, cpu=64, memory_gib=256, execute=True),
    Pool("t4", 2, T4, 4, cpu=48, memory_gib=192, execute=True),
    Pool("cpu", 2, None, 0, cpu=16, memory_gib=64, execute=False),
)


def gpu_labels(gpu: GpuProduct, count: int) -> dict[str, str]:
    """The GPU Feature Discovery labels of a node with `count` GPUs of one product."""
    return {
        "nvidia.com/gpu.present": "true",
        "nvidia.com/gpu.product": gpu.product,
        "nvidia.com/gpu.memory": str(gpu.memory_mib),
        "nvidia.com/gpu.count": str(count),
        "nvidia.com/gpu.family": gpu.family,
        "nvidia.com/gpu.compute.major": str(gpu.compute_major),
        "nvidia.com/gpu.compute.minor": str(gpu.compute_minor),
    }


def node(pool: Pool, index: int) -> dict[str, Any]:
    """The Node object (a plain manifest) of node `index` of `pool`."""
    name = f"{pool.name}-{index}"
    labels = {
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        POOL_LABEL: pool.name,
    }
    annotations: dict[str, str] = {"node.alpha.kubernetes.io/ttl": "0"}
    resources = {"cpu": str(pool.cpu), "memory": f"{pool.memory_gib}Gi", "pods": str(pool.pods)}
    taints: list[dict[str, str]] = []
    if pool.gpu is not None:
        labels.update(gpu_labels(pool.gpu, pool.gpus_per_node))
        resources[GPU_RESOURCE] = str(pool.gpus_per_node)
        taints.append(dict(GPU_TAINT))
    if pool.execute:
        labels[EXECUTE_LABEL] = "true"
    else:
        labels["type"] = "kwok"
        annotations[KWOK_NODE_ANNOTATION] = "fake"
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels, "annotations": annotations},
        "spec": {"taints": taints},
        "status": {
            "capacity": dict(resources),
            "allocatable": dict(resources),
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": name}],
            "nodeInfo": {
                "architecture": "amd64",
                "operatingSystem": "linux",
                "kubeletVersion": "fake",
                "kubeProxyVersion": "fake",
                "containerRuntimeVersion": "atoll-pod-runtime" if pool.execute else "kwok",
                "kernelVersion": "",
                "osImage": "",
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
            },
        },
    }


def nodes(pools: Iterable[Pool]) -> list[dict[str, Any]]:
    """Every node of every pool, in pool order."""
    return [node(pool, index) for pool in pools for index in range(pool.nodes)]


def default_fleet() -> list[dict[str, Any]]:
    """The fleet the tests and `make dev-up` use: 5 GPU products × 2 executed nodes + 2 kwok CPU nodes."""
    return nodes(DEFAULT_POOLS)


def simulated_pools(total: int = 1000, products: Sequence[GpuProduct] = PRODUCTS) -> list[Pool]:
    """`total` kwok-managed GPU nodes spread as evenly as possible over `products` (for scale benchmarks)."""
    if total < 0:
        raise ValueError(f"total must be >= 0, got {total}")
    base, extra = divmod(total, len(products))
    pools = []
    for rank, gpu in enumerate(products):
        count = base + (1 if rank < extra else 0)
        if count:
            slug = gpu.product.lower().removeprefix("nvidia-").removeprefix("tesla-")
            pools.append(Pool(f"sim-{slug}", count, gpu, 8, cpu=96, memory_gib=1024, execute=False))
    return pools


def simulated_fleet(total: int = 1000) -> list[dict[str, Any]]:
    """`total` kwok-managed GPU nodes (nothing executes their pods; kwok marks them Running)."""
    return nodes(simulated_pools(total))


def products_of(fleet: Iterable[dict[str, Any]]) -> set[str]:
    """The distinct `nvidia.com/gpu.product` values of a list of nodes."""
    return {
        n["metadata"]["labels"]["nvidia.com/gpu.product"]
        for n in fleet
        if "nvidia.com/gpu.product" in n["metadata"]["labels"]
    }


@dataclass(frozen=True)
class Fleet:
    """The nodes of a fleet created in a cluster (what the `fleet` fixture returns)."""

    nodes: tuple[dict[str, Any], ...]

    @property
    def names(self) -> list[str]:
        return [n["metadata"]["name"] for n in self.nodes]

    @property
    def products(self) -> set[str]:
        return products_of(self.nodes)

    def executed(self) -> list[str]:
        """Names of the nodes whose pods the pod process runtime runs."""
        return [n["metadata"]["name"] for n in self.nodes if n["metadata"]["labels"].get(EXECUTE_LABEL) == "true"]

    def simulated(self) -> list[str]:
        """Names of the kwok-managed nodes."""
        return [n["metadata"]["name"] for n in self.nodes if KWOK_NODE_ANNOTATION in n["metadata"]["annotations"]]

    def with_product(self, product: str) -> list[str]:
        return [
            n["metadata"]["name"]
            for n in self.nodes
            if n["metadata"]["labels"].get("nvidia.com/gpu.product") == product
        ]


def apply(core_v1: Any, fleet: Iterable[dict[str, Any]]) -> list[str]:
    """Create the nodes (existing ones are left alone); returns the names. core_v1: CoreV1Api."""
    from kubernetes.client.exceptions import ApiException

    names = []
    for manifest in fleet:
        try:
            core_v1.create_node(manifest)
        except ApiException as error:
            if error.status != 409:
                raise
        names.append(manifest["metadata"]["name"])
    return names
