"""`make dev-up ISLANDS=N`: N compute islands next to the dev cluster, for a person to try
multi-cluster runs.

Each island is a control plane of its own (etcd, kube-apiserver, scheduler,
controller-manager, kwok; on loopback) with a small GPU fleet of a different mix, a pod
process runtime of its own that executes its expert pods, and charts/atoll-island installed in
namespace `atoll`. The one dev MinIO serves every island (all on this machine). Under
`.dev/islands/<name>/`: `kubeconfig` (admin, for kubectl) and `operator.kubeconfig` (the
island chart's least-privilege ServiceAccount token, what `atoll island add` registered at
home). Never touches anything outside .dev/.
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.env import binaries, kube
from tests.env import fleet as fleet_builders
from tests.env.cluster import ControlPlane
from tests.env.runtime_process import PodRuntimeProcess

ISLAND_NAMESPACE = "atoll"
RELEASE = "atoll-island"
MAX_ISLANDS = 4
ISLAND_MIXES: tuple[tuple[fleet_builders.Pool, ...], ...] = tuple(
    tuple(
        fleet_builders.Pool(name, nodes, gpu, gpus, cpu=48, memory_gib=192, execute=True)
        for name, nodes, gpu, gpus in mix
    )
    for mix in (
        (("l4", 2, fleet_builders.L4, 4), ("a100-40gb", 1, fleet_builders.A100_40GB, 8)),
        (("rtx4090", 2, fleet_builders.RTX_4090, 4), ("t4", 2, fleet_builders.T4, 4)),
        (("h100", 1, fleet_builders.H100, 8),),
        (("t4", 4, fleet_builders.T4, 4),),
    )
)
"""The GPU mix of island 1, 2, …: different from each other and from home's."""


@dataclass
class DevIsland:
    name: str
    directory: Path

    @property
    def plane(self) -> ControlPlane:
        return ControlPlane(self.directory / "cluster", name=f"atoll-dev-{self.name}", kubeconfig=self.kubeconfig)

    @property
    def kubeconfig(self) -> Path:
        return self.directory / "kubeconfig"

    @property
    def operator_kubeconfig(self) -> Path:
        return self.directory / "operator.kubeconfig"


def islands(dev: Path, count: int) -> list[DevIsland]:
    if not 0 <= count <= MAX_ISLANDS:
        raise SystemExit(f"ISLANDS must be between 0 and {MAX_ISLANDS}, got {count}")
    return [DevIsland(f"island-{index}", dev / "islands" / f"island-{index}") for index in range(1, count + 1)]


def start(island: DevIsland, mix: tuple[fleet_builders.Pool, ...]) -> tuple[ControlPlane, PodRuntimeProcess, list[str]]:
    """Start the island's control plane, fleet, pod runtime and chart; write its two kubeconfigs."""
    plane = island.plane
    plane.start()
    runtime = PodRuntimeProcess(island.kubeconfig, island.directory / "runtime")
    runtime.start()
    from kubernetes import client

    core: Any = client.CoreV1Api(plane.api_client())
    names = fleet_builders.apply(core, fleet_builders.nodes(mix))
    kube.wait_nodes_ready(core, names, timeout=120)
    plane.kubectl("create", "namespace", ISLAND_NAMESPACE)
    helm = binaries.binary("helm")
    rendered = subprocess.run(
        [str(helm), "template", RELEASE, str(_chart()), "--namespace", ISLAND_NAMESPACE, "--set", "tokenSecret=false"],
        capture_output=True, text=True, check=True, timeout=120,
    ).stdout  # fmt: skip
    plane.kubectl("apply", "-f", "-", input=rendered)
    _write_operator_kubeconfig(island, plane)
    return plane, runtime, names


def register(island: DevIsland, home_kubeconfig: Path, operator_namespace: str) -> None:
    """`atoll island add` with the least-privilege kubeconfig (it checks the access first)."""
    command = [
        sys.executable, "-m", "atoll", "island", "add", island.name,
        "--kubeconfig", str(island.operator_kubeconfig), "--namespace", ISLAND_NAMESPACE,
        "--home-kubeconfig", str(home_kubeconfig), "--operator-namespace", operator_namespace,
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"atoll island add {island.name} failed:\n{result.stdout}{result.stderr}")


def stop(island: DevIsland) -> None:
    plane = island.plane
    if (island.directory / "cluster").exists():
        plane.started = True
        try:
            plane.stop()
        except Exception as error:
            print(f"kwokctl delete cluster {plane.name}: {error}", file=sys.stderr)


def _chart() -> Path:
    return Path(__file__).resolve().parents[2] / "charts" / "atoll-island"


def _write_operator_kubeconfig(island: DevIsland, plane: ControlPlane) -> None:
    """A kubeconfig with a token of the island chart's ServiceAccount (a day long), its CA inlined."""
    deadline = time.monotonic() + 30
    while True:  # the ServiceAccount exists a moment after the apply
        result = plane.kubectl("create", "token", RELEASE, "-n", ISLAND_NAMESPACE, "--duration", "24h", check=False)
        if result.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    if result.returncode != 0:
        raise RuntimeError(f"cannot mint a token for {RELEASE} on {island.name}: {result.stderr}")
    import base64

    ca = base64.b64encode((plane.cluster_dir / "pki" / "ca.crt").read_bytes()).decode()
    document = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": island.name, "cluster": {"server": plane.server, "certificate-authority-data": ca}}],
        "users": [{"name": RELEASE, "user": {"token": result.stdout.strip()}}],
        "contexts": [{"name": island.name, "context": {"cluster": island.name, "user": RELEASE}}],
        "current-context": island.name,
    }
    island.operator_kubeconfig.write_text(yaml.safe_dump(document))
    island.operator_kubeconfig.chmod(0o600)
