"""`make dev-up` / `make dev-down`: the test environment in the background for a person —
control plane, GPU fleet, MinIO, the pod process runtime, Atoll's CRDs and the operator —
with its state under .dev/.

`up` writes .dev/kubeconfig and .dev/env and a Secret `minio-credentials` in namespace
default, applies crds/ and starts `atoll operator` with the dev MinIO as its default store,
so `kubectl apply -f manifests/examples/quickstart.yaml` trains a run. `up --autoscaler
karpenter` starts from a small fleet instead and runs Karpenter's kwok provider with one
NodePool per GPU product (tests/env/karpenter.py), so the fleet grows. `up --islands N` also
starts N compute islands (tests/env/devislands.py: a control plane, GPU fleet and pod runtime
each), registers them with `atoll island add` and runs the operator with islands on. `down` stops
everything `up` started and checks that no process is left. It never signals a process
that does not belong to .dev/ (pids are checked against their command line).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

from tests.env import devislands, fleet, karpenter, kube
from tests.env.binaries import MissingPrerequisiteError
from tests.env.cluster import ControlPlane
from tests.env.minio import MinioServer
from tests.env.process import start_group, stop_group
from tests.env.runtime_process import REPO_ROOT, PodRuntimeProcess

DEV = REPO_ROOT / ".dev"
STATE = DEV / "state.json"
CLUSTER_NAME = "atoll-dev"
DEFAULT_STORE = "s3://atoll/runs"
OPERATOR_MARKER = "atoll operator"
AUTOSCALER_MARKER = "karpenter-kwok"
AUTOSCALERS = ("karpenter",)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _ours(pid: int, marker: str) -> bool:
    """Whether pid is alive and still the process we started (its command line names marker)."""
    return marker in _cmdline(pid)


def leftover_processes(root: Path = DEV) -> list[tuple[int, str]]:
    """Processes whose command line or working directory lies under root (what `down` must not leave)."""
    found = []
    own = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == own:
            continue
        pid = int(entry.name)
        try:
            cwd = str((entry / "cwd").readlink())
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if stat[0] == "Z":
            continue
        command = _cmdline(pid)
        if str(root) in command or cwd == str(root) or cwd.startswith(f"{root}/"):
            found.append((pid, command[:160]))
    return found


def _read_state() -> dict[str, Any] | None:
    try:
        state: dict[str, Any] = json.loads(STATE.read_text())
    except (OSError, ValueError):
        return None
    return state


def is_up(state: dict[str, Any] | None) -> bool:
    if not state:
        return False
    cluster = ControlPlane(DEV / "cluster", name=CLUSTER_NAME, kubeconfig=DEV / "kubeconfig")
    alive = [pid for pid in cluster.pids().values() if _ours(pid, str(DEV))]
    autoscaler = (state.get("autoscaler") or {}).get("pid")
    island_runtimes = [island["runtime"] for island in state.get("islands") or []]
    return (
        bool(alive)
        and all(_ours(pid, "tests.env.podruntime") for pid in island_runtimes)
        and (autoscaler is None or _ours(autoscaler, AUTOSCALER_MARKER))
        and _ours(state["minio"]["pid"], str(DEV / "minio"))
        and _ours(state["runtime"]["pid"], "tests.env.podruntime")
        and _ours((state.get("operator") or {}).get("pid", 0), OPERATOR_MARKER)
    )


def _usage() -> str:
    return "\n".join(
        [
            "Atoll dev environment is up:",
            "  source .dev/env    # KUBECONFIG, MINIO_*, and the pinned kubectl first on PATH",
            "  kubectl get nodes -L nvidia.com/gpu.product -L nvidia.com/gpu.memory",
            "  kubectl apply -f manifests/examples/quickstart.yaml && kubectl get ddm,ddmx -w",
            f"kubectl: {shlex.quote(str(_kubectl()))}",
            "MinIO credentials: Secret minio-credentials (accessKey, secretKey, endpoint) in namespace default",
            f"the operator's default store: {DEFAULT_STORE} (runs without storage.uri)",
            "logs: .dev/operator.log, .dev/cluster/kwok/clusters/atoll-dev/logs/, .dev/minio/minio.log,"
            " .dev/runtime/ (pod logs)",
            "stop everything: make dev-down",
        ]
    )


def _kubectl() -> Path:
    from tests.env import binaries

    return binaries.binary("kubectl")


def up(autoscaler: str | None = None, island_count: int = 0) -> int:
    state = _read_state()
    if is_up(state):
        print("the dev environment is already up (make dev-down stops it)")
        print(_usage())
        return 0
    if state is not None or DEV.exists():
        print("cleaning up a stale .dev/ first")
        down(quiet=True)
    DEV.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    cluster = ControlPlane(DEV / "cluster", name=CLUSTER_NAME, kubeconfig=DEV / "kubeconfig")
    minio = MinioServer(DEV / "minio")
    runtime = PodRuntimeProcess(DEV / "kubeconfig", DEV / "runtime")
    autoscaler_pid: int | None = None
    dev_islands = devislands.islands(DEV, island_count)
    island_state: list[dict[str, Any]] = []
    try:
        print("starting the control plane (kwokctl, binary runtime)…", flush=True)
        cluster.start()
        print(f"starting MinIO on {minio.endpoint}…", flush=True)
        minio.start()
        print("starting the pod process runtime…", flush=True)
        runtime.start()
        _write_state(cluster, minio, runtime)
        from kubernetes import client

        core: Any = client.CoreV1Api(cluster.api_client())
        pools = karpenter.DEV_FLEET if autoscaler == "karpenter" else fleet.DEFAULT_POOLS
        names = fleet.apply(core, fleet.nodes(pools))
        kube.wait_nodes_ready(core, names, timeout=120)
        if autoscaler == "karpenter":
            print("starting Karpenter (kwok provider) with a NodePool per GPU product…", flush=True)
            karpenter.apply_crds(cluster.kubectl)
            manifests = karpenter.dev_node_pools()
            cluster.kubectl("apply", "-f", "-", input="\n---\n".join(json.dumps(m) for m in manifests))
            autoscaler_pid = karpenter.Karpenter(DEV / "kubeconfig", DEV / "karpenter").start().pid
            _write_state(cluster, minio, runtime, autoscaler_pid=autoscaler_pid)
        for island, mix in zip(dev_islands, devislands.ISLAND_MIXES, strict=False):
            print(f"starting compute island {island.name} (control plane, fleet, pod runtime)…", flush=True)
            island_state.append({"name": island.name, "runtime": None})
            _write_state(cluster, minio, runtime, autoscaler_pid=autoscaler_pid, islands=island_state)
            _, island_runtime, _ = devislands.start(island, mix)
            island_state[-1]["runtime"] = island_runtime.pid
            _write_state(cluster, minio, runtime, autoscaler_pid=autoscaler_pid, islands=island_state)
        print("applying Atoll's CRDs and starting the operator…", flush=True)
        cluster.kubectl("apply", "-f", str(REPO_ROOT / "crds"))
        for island in dev_islands:
            devislands.register(island, DEV / "kubeconfig", "default")
        operator = _start_operator(minio, islands=bool(dev_islands))
        _write_state(cluster, minio, runtime, operator, autoscaler_pid=autoscaler_pid, islands=island_state)
        core.create_namespaced_secret(
            "default",
            {
                "metadata": {"name": "minio-credentials"},
                "stringData": {
                    "accessKey": minio.access_key,
                    "secretKey": minio.secret_key,
                    "endpoint": minio.endpoint,
                },
            },
        )
    except BaseException:
        print("dev-up failed; stopping what it started", file=sys.stderr)
        if not STATE.exists():
            _write_state(cluster, minio, runtime)
        down(quiet=True)
        raise
    env = {"KUBECONFIG": str(DEV / "kubeconfig"), **minio.env(), "PATH": f"{_kubectl().parent}:$PATH"}
    (DEV / "env").write_text(
        "".join(f"export {key}={value if key == 'PATH' else shlex.quote(value)}\n" for key, value in env.items())
    )
    products = sorted(fleet.products_of(fleet.nodes(pools)))
    print(f"up in {time.monotonic() - started:.0f}s: {len(names)} nodes, GPU products {', '.join(products)}")
    if autoscaler == "karpenter":
        print(
            "Karpenter grows the fleet for pending GPU pods (NodePools autoscaled-<product>, log"
            " .dev/karpenter/karpenter.log): kubectl get nodepools,nodeclaims"
        )
    if dev_islands:
        print(
            f"compute islands {', '.join(i.name for i in dev_islands)} (kubectl get island; their kubeconfigs:"
            " .dev/islands/<name>/kubeconfig); restrict a run to one with spec.placement.islands.restrict"
        )
    print(_usage())
    return 0


def _start_operator(minio: MinioServer, *, islands: bool = False) -> int:
    """`atoll operator` in its own session, its log in .dev/operator.log; returns its pid."""
    env = {
        "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
        "HOME": os.environ.get("HOME", str(DEV)),
        "LANG": os.environ.get("LANG", "C.UTF-8"),
        "KUBECONFIG": str(DEV / "kubeconfig"),
        **minio.env(),
    }
    command = [
        sys.executable, "-m", "atoll", "operator",
        "--default-store", DEFAULT_STORE, "--default-store-secret", "minio-credentials",
        # Every GPU of a pod becomes a training process on this machine's CPU: one each.
        "--max-gpus-per-pod", "1",
        *(["--island-namespace", "default", "--island-interval", "2"] if islands else []),
    ]  # fmt: skip
    process = start_group(command, log=DEV / "operator.log", env=env, cwd=DEV)
    return process.pid


def _write_state(
    cluster: ControlPlane,
    minio: MinioServer,
    runtime: PodRuntimeProcess,
    operator: int | None = None,
    *,
    autoscaler_pid: int | None = None,
    islands: list[dict[str, Any]] | None = None,
) -> None:
    state = {
        "cluster": {"name": cluster.name, "kubeconfig": str(cluster.kubeconfig), "ports": cluster.ports},
        "minio": {"pid": minio.pid, "endpoint": minio.endpoint},
        "runtime": {"pid": runtime.pid},
        "operator": {"pid": operator},
        "autoscaler": {"pid": autoscaler_pid} if autoscaler_pid else None,
        "islands": islands or [],
    }
    DEV.mkdir(parents=True, exist_ok=True)
    STATE.write_text(json.dumps(state, indent=2))


def down(*, quiet: bool = False) -> int:
    state = _read_state() or {}
    # The operator first (it would recreate pods), then the runtime: it stops the pod
    # processes it started.
    for key, marker in (
        ("operator", OPERATOR_MARKER),
        ("autoscaler", AUTOSCALER_MARKER),
        ("runtime", "tests.env.podruntime"),
        ("minio", str(DEV / "minio")),
    ):
        pid = (state.get(key) or {}).get("pid")
        if pid and _ours(pid, marker):
            stop_group(pid, grace=15)
    for island in state.get("islands") or []:
        pid = island.get("runtime")
        if pid and _ours(pid, "tests.env.podruntime"):
            stop_group(pid, grace=15)
        devislands.stop(devislands.DevIsland(island["name"], DEV / "islands" / island["name"]))
    if (DEV / "cluster").exists():
        cluster = ControlPlane(DEV / "cluster", name=CLUSTER_NAME, kubeconfig=DEV / "kubeconfig")
        cluster.started = True
        try:
            cluster.stop()
        except Exception as error:
            print(f"kwokctl delete cluster: {error}", file=sys.stderr)
    left = leftover_processes()
    for pid, _ in left:  # processes under .dev/ are ours by construction
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if left:
        time.sleep(0.5)
    still = leftover_processes()
    if still:
        print(f"error: processes still running under {DEV}: {still}", file=sys.stderr)
        return 1
    shutil.rmtree(DEV, ignore_errors=True)
    if not quiet:
        killed = f" (killed {len(left)} stray process(es): {[p for p, _ in left]})" if left else ""
        print(f"the dev environment is down; no process left{killed}")
    return 0


def status() -> int:
    state = _read_state()
    if not is_up(state):
        print("the dev environment is down (make dev-up starts it)")
        return 1
    print(json.dumps(state, indent=2))
    print(_usage())
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.env.devenv", description=__doc__)
    parser.add_argument("command", choices=("up", "down", "status"))
    parser.add_argument(
        "--autoscaler", choices=AUTOSCALERS, help="up: start from a small fleet that this autoscaler grows"
    )
    parser.add_argument(
        "--islands", type=int, default=0, metavar="N", help="up: also start N compute islands (at most 4)"
    )
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            return up(args.autoscaler, args.islands)
        return {"down": down, "status": status}[args.command]()
    except MissingPrerequisiteError as missing:
        print(f"error: {missing}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
