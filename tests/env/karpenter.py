"""Karpenter's kwok provider as the test environment's autoscaler: its CRDs, a GPU
instance-types file built from the fleet's GPU products, NodePool / KWOKNodeClass builders,
and the Karpenter process itself, run against a control plane on loopback.

Karpenter creates its Nodes itself, annotated `kwok.x-k8s.io/node: fake`: the control plane's
kwok controller makes them Ready and simulates their pods, unless their NodePool labels them
`atoll.dev/execute: "true"` (`node_pool(..., execute=True)`): then kwok leaves them alone and
the pod process runtime is their kubelet, exactly as for the static fleet's GPU nodes. The builders are pure; only
`Karpenter` and `apply_crds` touch a process or a cluster, and nothing here signals a
process it did not start.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.env import binaries
from tests.env.fleet import (
    A100_40GB,
    EXECUTE_LABEL,
    GPU_RESOURCE,
    GPU_TAINT,
    H100,
    L4,
    POOL_LABEL,
    RTX_4090,
    T4,
    GpuProduct,
    Pool,
    gpu_labels,
)
from tests.env.process import free_port, http_ok, start_group, stop_group, wait_until

KARPENTER_VERSION = "v1.13.0"
CRD_DIR = Path(__file__).resolve().parent / "crds" / f"karpenter-{KARPENTER_VERSION}"
"""NodePool, NodeClaim, NodeOverlay and KWOKNodeClass, copied unchanged from the module's
kwok/charts/crds/ and kwok/apis/crds/ at KARPENTER_VERSION (the kwok chart's NodePool and
NodeClaim also admit the karpenter.kwok.sh labels)."""
CRD_NAMES = (
    "nodepools.karpenter.sh",
    "nodeclaims.karpenter.sh",
    "nodeoverlays.karpenter.sh",
    "kwoknodeclasses.karpenter.kwok.sh",
)
NODEPOOL_LABEL = "karpenter.sh/nodepool"
CAPACITY_TYPE_LABEL = "karpenter.sh/capacity-type"
ZONE = "test-zone-a"
SPOT_DISCOUNT = 0.4
"""Spot offerings cost this fraction of on-demand (NodePools below ask for on-demand only)."""


@dataclass(frozen=True)
class GpuInstanceType:
    """One instance type Karpenter may launch: `gpus` GPUs of one product, on-demand price per hour."""

    name: str
    gpu: GpuProduct
    gpus: int
    cpu: int
    memory_gib: int
    price_per_gpu_hour: float

    @property
    def price_per_hour(self) -> float:
        return round(self.gpus * self.price_per_gpu_hour, 4)


# On-demand prices per GPU-hour, rounded from public list prices: they only have to order the
# products the way clouds do. Two sizes per product: one GPU, and a full node like the fleet's.
GPU_INSTANCE_TYPES: tuple[GpuInstanceType, ...] = (
    GpuInstanceType("h100-1x", H100, 1, cpu=26, memory_gib=256, price_per_gpu_hour=3.00),
    GpuInstanceType("h100-8x", H100, 8, cpu=208, memory_gib=2048, price_per_gpu_hour=3.00),
    GpuInstanceType("a100-40gb-1x", A100_40GB, 1, cpu=12, memory_gib=144, price_per_gpu_hour=1.50),
    GpuInstanceType("a100-40gb-8x", A100_40GB, 8, cpu=96, memory_gib=1152, price_per_gpu_hour=1.50),
    GpuInstanceType("l4-1x", L4, 1, cpu=12, memory_gib=48, price_per_gpu_hour=0.80),
    GpuInstanceType("l4-4x", L4, 4, cpu=48, memory_gib=192, price_per_gpu_hour=0.80),
    GpuInstanceType("rtx4090-1x", RTX_4090, 1, cpu=16, memory_gib=64, price_per_gpu_hour=0.50),
    GpuInstanceType("rtx4090-4x", RTX_4090, 4, cpu=64, memory_gib=256, price_per_gpu_hour=0.50),
    GpuInstanceType("t4-1x", T4, 1, cpu=12, memory_gib=48, price_per_gpu_hour=0.35),
    GpuInstanceType("t4-4x", T4, 4, cpu=48, memory_gib=192, price_per_gpu_hour=0.35),
)


def _requirement(key: str, value: str) -> dict[str, Any]:
    return {"key": key, "operator": "In", "values": [value]}


def instance_types(types: Iterable[GpuInstanceType] = GPU_INSTANCE_TYPES) -> list[dict[str, Any]]:
    """The `-instance-types-file-path` document (kwok provider's InstanceTypeOptions).

    The GPU Feature Discovery labels go into each offering's requirements: the kwok provider
    copies single-valued offering requirements onto the Node it creates, and registers their
    keys as well-known labels, so a pod's node affinity on `nvidia.com/gpu.product` selects
    instance types of that product.
    """
    documents = []
    for kind in types:
        gpu_requirements = [_requirement(key, value) for key, value in gpu_labels(kind.gpu, kind.gpus).items()]
        offerings = [
            {
                "Price": round(kind.price_per_hour * discount, 4),
                "Available": True,
                "Requirements": [
                    _requirement(CAPACITY_TYPE_LABEL, capacity),
                    _requirement("topology.kubernetes.io/zone", ZONE),
                    *gpu_requirements,
                ],
            }
            for capacity, discount in (("on-demand", 1.0), ("spot", SPOT_DISCOUNT))
        ]
        documents.append(
            {
                "name": kind.name,
                "offerings": offerings,
                "architecture": "amd64",
                "operatingSystems": ["linux"],
                "resources": {
                    "cpu": str(kind.cpu),
                    "memory": f"{kind.memory_gib}Gi",
                    "ephemeral-storage": "1000Gi",
                    "pods": "110",
                    GPU_RESOURCE: str(kind.gpus),
                },
            }
        )
    return documents


def node_class(name: str = "default", *, registration_delay_s: int = 0) -> dict[str, Any]:
    """A KWOKNodeClass; registration_delay_s models how long a new instance takes to join."""
    spec: dict[str, Any] = {}
    if registration_delay_s:
        spec["nodeRegistrationDelay"] = f"{registration_delay_s}s"
    return {
        "apiVersion": "karpenter.kwok.sh/v1alpha1",
        "kind": "KWOKNodeClass",
        "metadata": {"name": name},
        "spec": spec,
    }


def node_pool(
    name: str,
    gpu: GpuProduct,
    *,
    limit_gpus: int,
    consolidate_after_s: int = 30,
    taints: Sequence[Mapping[str, str]] = (GPU_TAINT,),
    node_class_name: str = "default",
    execute: bool = False,
) -> dict[str, Any]:
    """A NodePool of one GPU product, at most limit_gpus GPUs, on-demand, removed when empty.

    Its nodes carry `atoll.dev/pool: <name>` like the static fleet's pools, and the GPU taint
    that every GPU node of the fleet has. `execute`: its nodes are labelled
    `atoll.dev/execute: "true"`, so the pod process runtime runs their pods (kwok does not).
    """
    if limit_gpus < 0:
        raise ValueError(f"limit_gpus must be >= 0, got {limit_gpus}")
    node_labels = {POOL_LABEL: name}
    if execute:
        node_labels[EXECUTE_LABEL] = "true"
    return {
        "apiVersion": "karpenter.sh/v1",
        "kind": "NodePool",
        "metadata": {"name": name},
        "spec": {
            "template": {
                "metadata": {"labels": node_labels},
                "spec": {
                    "requirements": [
                        _requirement("nvidia.com/gpu.product", gpu.product),
                        _requirement(CAPACITY_TYPE_LABEL, "on-demand"),
                    ],
                    "nodeClassRef": {"group": "karpenter.kwok.sh", "kind": "KWOKNodeClass", "name": node_class_name},
                    "taints": [dict(taint) for taint in taints],
                    "expireAfter": "Never",
                },
            },
            "limits": {GPU_RESOURCE: str(limit_gpus)},
            "disruption": {"consolidationPolicy": "WhenEmpty", "consolidateAfter": f"{consolidate_after_s}s"},
        },
    }


DEV_FLEET: tuple[Pool, ...] = (
    Pool("l4", 1, L4, 4, cpu=48, memory_gib=192, execute=True),
    Pool("t4", 1, T4, 4, cpu=48, memory_gib=192, execute=True),
    Pool("cpu", 1, None, 0, cpu=16, memory_gib=64, execute=False),
)
"""The small static fleet `make dev-up AUTOSCALER=karpenter` starts from: it must grow."""
DEV_LIMITS = {H100: 16, A100_40GB: 16, L4: 8, RTX_4090: 8, T4: 8}
"""GPUs each product's NodePool may grow to in the dev environment."""
DEV_REGISTRATION_DELAY_S = 20
"""How long a new dev node takes to join, like a real instance's boot (seconds)."""


def dev_node_pools(*, consolidate_after_s: int = 60) -> list[dict[str, Any]]:
    """The dev environment's KWOKNodeClass and one NodePool per GPU product (`autoscaled-<product>`),
    whose nodes the pod process runtime executes (runs train on them)."""
    pools = [
        node_pool(
            f"autoscaled-{slug(gpu)}", gpu, limit_gpus=limit, consolidate_after_s=consolidate_after_s, execute=True
        )
        for gpu, limit in DEV_LIMITS.items()
    ]
    return [node_class(registration_delay_s=DEV_REGISTRATION_DELAY_S), *pools]


def slug(gpu: GpuProduct) -> str:
    """A short name of a product for object names: h100, a100-40gb, l4, rtx4090, t4."""
    return next(kind.name for kind in GPU_INSTANCE_TYPES if kind.gpu == gpu).rsplit("-", 1)[0]


def apply_crds(kubectl: Any, *, timeout_s: int = 60) -> None:
    """Apply Karpenter's CRDs with `kubectl` (a ControlPlane.kubectl) and wait until they are Established."""
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD_DIR))
    kubectl(
        "wait", "--for", "condition=Established", f"--timeout={timeout_s}s",
        *(f"crd/{name}" for name in CRD_NAMES), timeout=timeout_s + 10,
    )  # fmt: skip


class Karpenter:
    """The `karpenter-kwok` binary against one cluster: leader election off, its own ports and log."""

    def __init__(
        self,
        kubeconfig: Path,
        workdir: Path,
        *,
        types: Sequence[GpuInstanceType] = GPU_INSTANCE_TYPES,
        batch_idle_s: float = 1.0,
        batch_max_s: float = 3.0,
    ):
        self.kubeconfig = Path(kubeconfig)
        self.workdir = Path(workdir)
        self.types = tuple(types)
        self.batch_idle_s = batch_idle_s
        """How long Karpenter waits for more pending pods before it provisions (its default is 1 s)."""
        self.batch_max_s = batch_max_s
        """The longest provisioning batch (its default of 10 s only slows tests down)."""
        self.binary = binaries.binary("karpenter-kwok")
        self.log_file = self.workdir / "karpenter.log"
        self.instance_types_file = self.workdir / "instance-types.json"
        self.metrics_port = 0
        self.health_port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def environment(self) -> dict[str, str]:
        """Karpenter's settings (it reads every option from the environment as well as from flags).

        Upstream binds its metrics and health ports on every interface (`:<port>`, not
        configurable); the ports are free ones chosen on 127.0.0.1 and only read from there.
        """
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.workdir),
            "KUBECONFIG": str(self.kubeconfig),
            "DISABLE_LEADER_ELECTION": "true",
            "METRICS_PORT": str(self.metrics_port),
            "HEALTH_PROBE_PORT": str(self.health_port),
            "INSTANCE_TYPES_FILE_PATH": str(self.instance_types_file),
            "BATCH_IDLE_DURATION": f"{self.batch_idle_s:g}s",
            "BATCH_MAX_DURATION": f"{self.batch_max_s:g}s",
            "LOG_LEVEL": "debug",
        }

    def start(self, *, timeout: float = 120.0) -> Karpenter:
        """Start Karpenter and wait until its health endpoint says it is ready."""
        if self.running:
            return self
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.instance_types_file.write_text(json.dumps(instance_types(self.types), indent=2))
        self.metrics_port = free_port()
        self.health_port = free_port(taken={self.metrics_port})
        proc = self._proc = start_group([str(self.binary)], log=self.log_file, env=self.environment(), cwd=self.workdir)
        wait_until(
            lambda: http_ok(f"http://127.0.0.1:{self.health_port}/readyz"),
            timeout=timeout,
            what="Karpenter",
            alive=lambda: None if proc.poll() is None else f"exited with {proc.returncode}; see {self.log_file}",
        )
        return self

    def stop(self, *, grace: float = 15.0) -> None:
        """SIGTERM Karpenter, SIGKILL after grace seconds."""
        if self._proc is not None:
            stop_group(self._proc.pid, grace=grace, proc=self._proc)
        self._proc = None

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def remove_node_pools(kubectl: Any, *, timeout_s: int = 120) -> list[str]:
    """Delete every NodePool and KWOKNodeClass and wait until Karpenter has removed its NodeClaims
    (and so its Nodes); returns the NodeClaims still there after timeout_s (Karpenter must still run)."""
    kubectl("delete", "nodepools.karpenter.sh", "--all", "--wait=false")
    with contextlib.suppress(subprocess.CalledProcessError):  # a timeout: the leftovers are returned
        kubectl(
            "wait", "--for=delete", "nodeclaims.karpenter.sh", "--all", f"--timeout={timeout_s}s",
            timeout=timeout_s + 10,
        )  # fmt: skip
    left = kubectl("get", "nodeclaims.karpenter.sh", "-o", "name").stdout.split()
    kubectl("delete", "kwoknodeclasses.karpenter.kwok.sh", "--all", "--wait=false")
    return list(left)


def force_remove_nodes(kubectl: Any) -> list[str]:
    """Nodes Karpenter left behind (it was stopped too early), their finalizers dropped and deleted."""
    names = kubectl("get", "nodes", "-l", NODEPOOL_LABEL, "-o", "name").stdout.split()
    for name in names:
        kubectl("patch", name, "--type=merge", "-p", '{"metadata":{"finalizers":null}}', check=False)
        kubectl("delete", name, "--wait=false", check=False)
    return names
