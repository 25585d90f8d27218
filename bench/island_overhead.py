"""The operator's overhead per compute island: memory, idle CPU and dispatch latency, 1 to 10 islands.

    .venv/bin/python bench/island_overhead.py [--islands 1,2,5,10] [--nodes 200] [--experts 8]
                                              [--json OUT.json]

Starts a home control plane and up to 10 island control planes (the pinned binaries of
tests/env: etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok each, on
loopback), each island with `--nodes` kwok-simulated GPU nodes (8 GPUs each, five products).
For each island count it starts a fresh `atoll operator --island-namespace` with that many
ComputeIslands registered (admin kubeconfigs, inlined) and measures:

* **memory**: the operator's resident set (VmRSS) once every island is Connected and after
  the dispatch below, and its peak (VmHWM);
* **idle CPU**: the operator's CPU seconds over 60 s with every island connected and no run
  (the probe loop lists each island's nodes and pods every `--island-interval`, 10 s);
* **dispatch latency**: one DDMRun per island, restricted to it, `--experts` one-GPU experts
  each, applied together (partitions pre-seeded in the store, as in bench/operator_scale.py,
  here a MinIO: islands reach only an S3 store; kwok runs the pods, never executed): seconds
  from the apply until
  every expert pod exists on its island, and until every DDMExpert at home shows Running
  (the mirror reads an island's pods at each probe, so this includes up to one interval).

Nothing here compares against another system: the figures are absolute costs, to be read
against the interval and the fleet size.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from atoll.operator.crd import all_crds, render_crds  # noqa: E402
from atoll.operator.islands.kubeconfig import standalone  # noqa: E402
from atoll.operator.islands.register import island_manifest, kubeconfig_secret  # noqa: E402
from atoll.progress import StageProgress  # noqa: E402
from atoll.store import open_store  # noqa: E402
from bench.operator_scale import peak_rss_mib, run_manifest, wait  # noqa: E402
from bench.placement import hardware  # noqa: E402
from tests.env import fleet as fleet_builders  # noqa: E402
from tests.env.cluster import ControlPlane  # noqa: E402
from tests.env.minio import MinioServer  # noqa: E402
from tests.env.process import kill_group, start_group  # noqa: E402

HOME_NAMESPACE = "bench-runs"
ISLAND_NAMESPACE = "atoll"
SECRETS_NAMESPACE = "atoll-system"
BUCKET = "atoll"
STORE_SECRET = "minio-credentials"


def seed_store(run: str, experts: int) -> None:
    """What a finished partition stage leaves in the run's S3 store (its pod never runs under kwok)."""
    store = open_store(f"s3://{BUCKET}/runs/{HOME_NAMESPACE}/{run}")
    partition = {"clusters": experts, "sizes": [1000 + k for k in range(experts)]}
    store.put_json("partition/stats.json", partition)
    store.put_bytes("partition/progress.json", StageProgress(stage="partition", state="done", step=1).to_json())
    store.put_json("partition/done.json", {**partition, "attempt": 1})


def _core(plane: ControlPlane) -> Any:
    from kubernetes import client

    return client.CoreV1Api(plane.api_client())


def start_island(index: int, work: Path, nodes: int) -> ControlPlane:
    plane = ControlPlane(work / f"island-{index}", name=f"atoll-bench-island-{index}")
    plane.start()
    core = _core(plane)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(core.create_node, fleet_builders.simulated_fleet(nodes)))
    plane.kubectl("create", "namespace", ISLAND_NAMESPACE)
    return plane


def register(home: ControlPlane, name: str, plane: ControlPlane) -> None:
    home.kubectl("apply", "-f", "-", input=json.dumps(island_manifest(name, namespace=ISLAND_NAMESPACE)))
    uid = home.kubectl_json("get", "computeisland", name)["metadata"]["uid"]
    text = standalone(plane.kubeconfig.read_text(), base=plane.kubeconfig.parent)
    secret = kubeconfig_secret(name, namespace=SECRETS_NAMESPACE, kubeconfig=text, owner_uid=uid)
    home.kubectl("apply", "-f", "-", input=json.dumps(secret))


def connected(home: ControlPlane, names: list[str]) -> bool:
    items = home.kubectl_json("get", "computeislands")["items"]
    ok = set()
    for item in items:
        conditions = {c["type"]: c["status"] for c in (item.get("status") or {}).get("conditions") or []}
        if conditions.get("Connected") == "True" and conditions.get("Ready") == "True":
            ok.add(item["metadata"]["name"])
    return set(names) <= ok


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100  # utime + stime, in clock ticks of 1/100 s


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def island_run(name: str, island: str, experts: int) -> dict[str, Any]:
    manifest = run_manifest(name, experts)
    manifest["spec"]["placement"]["islands"] = {"restrict": [island]}
    return manifest


class Dispatch:
    """One run per island applied at once; when each island's expert pods exist there, and
    when each run's DDMExperts all show Running at home (monotonic seconds)."""

    def __init__(self, home: ControlPlane, islands: dict[str, ControlPlane], runs: dict[str, str], experts: int):
        self.home, self.islands, self.runs, self.experts = home, islands, runs, experts
        self.created: dict[str, float] = {}
        self.running: dict[str, float] = {}
        self.stop = threading.Event()
        self.t0 = 0.0

    def _watch_island(self, island: str) -> None:
        core = _core(self.islands[island])
        selector = f"atoll.dev/run={self.runs[island]},atoll.dev/stage=expert"
        while not self.stop.is_set() and island not in self.created:
            if len(core.list_namespaced_pod(ISLAND_NAMESPACE, label_selector=selector).items) >= self.experts:
                self.created[island] = time.monotonic()
            time.sleep(0.25)

    def _all_running(self) -> bool:
        items = self.home.kubectl_json("get", "ddmexperts", "-n", HOME_NAMESPACE)["items"]
        for island, run in self.runs.items():
            phases = [(x.get("status") or {}).get("phase") for x in items if x["spec"].get("run") == run]
            if island not in self.running and len(phases) >= self.experts and all(p == "Running" for p in phases):
                self.running[island] = time.monotonic()
        return len(self.running) == len(self.runs)

    def run(self, timeout: float) -> None:
        threads = [threading.Thread(target=self._watch_island, args=(i,), daemon=True) for i in self.runs]
        documents = "\n---\n".join(yaml.safe_dump(island_run(r, i, self.experts)) for i, r in self.runs.items())
        self.t0 = time.monotonic()
        self.home.kubectl("apply", "-n", HOME_NAMESPACE, "-f", "-", input=documents)
        for thread in threads:
            thread.start()
        try:
            wait(self._all_running, timeout, "every DDMExpert Running", interval=0.5)
            wait(lambda: len(self.created) == len(self.runs), 60, "every island's pods seen")
        except TimeoutError:
            for kind in ("ddmruns", "ddmexperts"):
                for item in self.home.kubectl_json("get", kind, "-n", HOME_NAMESPACE)["items"]:
                    print(item["metadata"]["name"], item.get("status"), file=sys.stderr)
            raise
        finally:
            self.stop.set()

    def seconds(self, when: dict[str, float]) -> list[float]:
        return sorted(when[i] - self.t0 for i in self.runs)


def measure(  # noqa: PLR0917 - the bench's parts
    home: ControlPlane,
    islands: dict[str, ControlPlane],
    minio: MinioServer,
    work: Path,
    args: argparse.Namespace,
    phase: int,
) -> dict[str, Any]:
    names = list(islands)
    runs = {island: f"p{phase}-{island}" for island in names}
    for run in runs.values():
        seed_store(run, args.experts)
    command = [
        sys.executable, "-m", "atoll", "operator", "--kubeconfig", str(home.kubeconfig), "--namespace", HOME_NAMESPACE,
        "--default-store", f"s3://{BUCKET}/runs", "--default-store-secret", STORE_SECRET,
        "--interval", "1", "--store-poll", "2",
        "--island-namespace", SECRETS_NAMESPACE, "--island-interval", str(args.interval),
        "--max-gpus-per-pod", "1",
    ]  # fmt: skip
    env = {**os.environ, **minio.env()}
    operator = start_group(command, log=work / f"operator-{len(names)}.log", env=env, cwd=REPO)
    dispatch = Dispatch(home, islands, runs, args.experts)
    try:
        wait(lambda: connected(home, names), 300, f"{len(names)} islands connected", interval=1)
        time.sleep(args.interval)  # one more probe round: the operator's view is filled
        rss_connected = rss_mib(operator.pid)
        before = cpu_seconds(operator.pid)
        time.sleep(args.idle)
        idle_cpu = cpu_seconds(operator.pid) - before
        dispatch.run(args.timeout)
        rss_after, peak = rss_mib(operator.pid), peak_rss_mib(operator.pid)
        home.kubectl("delete", "ddmruns", "--all", "-n", HOME_NAMESPACE, "--wait=false")
        wait(lambda: not home.kubectl_json("get", "ddmruns", "-n", HOME_NAMESPACE)["items"], 300, "runs deleted", 1)
    finally:
        kill_group(operator.pid, proc=operator)
    for plane in islands.values():
        _core(plane).delete_collection_namespaced_pod(ISLAND_NAMESPACE, grace_period_seconds=0)
    to_pods, to_running = dispatch.seconds(dispatch.created), dispatch.seconds(dispatch.running)
    return {
        "islands": len(names),
        "nodes": len(names) * args.nodes,
        "rssConnectedMiB": round(rss_connected, 1),
        "rssAfterDispatchMiB": round(rss_after, 1),
        "peakRssMiB": round(peak, 1),
        "idleCpuSecondsPerMinute": round(idle_cpu * 60 / args.idle, 2),
        "podsOnIslandMedianSeconds": round(statistics.median(to_pods), 1),
        "podsOnIslandMaxSeconds": round(to_pods[-1], 1),
        "expertsRunningMedianSeconds": round(statistics.median(to_running), 1),
        "expertsRunningMaxSeconds": round(to_running[-1], 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--islands", default="1,2,5,10", help="island counts to measure, ascending")
    parser.add_argument("--nodes", type=int, default=200, help="kwok GPU nodes per island")
    parser.add_argument("--experts", type=int, default=8, help="experts of each island's run")
    parser.add_argument("--interval", type=float, default=10.0, help="the operator's --island-interval")
    parser.add_argument("--idle", type=float, default=60.0, help="seconds of idle CPU measurement")
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--json", help="also write the rows as JSON to this file")
    args = parser.parse_args()
    counts = sorted(int(n) for n in args.islands.split(","))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a killed bench still stops its control planes
    print(f"# island overhead — {hardware()}; {args.nodes} kwok GPU nodes per island, interval {args.interval}s")
    work = Path(tempfile.mkdtemp(prefix="atoll-island-overhead-"))
    home = ControlPlane(work / "home", name="atoll-bench-home")
    minio = MinioServer(work / "minio")
    planes: dict[str, ControlPlane] = {}
    rows = []
    try:
        home.start()
        minio.start()
        os.environ.update(minio.env())
        minio.client().make_bucket(BUCKET)  # type: ignore[attr-defined]
        home.kubectl("apply", "--server-side", "-f", "-", input=render_crds(all_crds()))
        home.kubectl("wait", "--for=condition=Established", "crd/ddmruns.atoll.dev", "crd/computeislands.atoll.dev")
        for namespace in (HOME_NAMESPACE, SECRETS_NAMESPACE):
            home.kubectl("create", "namespace", namespace)
        credentials = {"accessKey": minio.access_key, "secretKey": minio.secret_key, "endpoint": minio.endpoint}
        secret = {"metadata": {"name": STORE_SECRET, "namespace": HOME_NAMESPACE}, "stringData": credentials}
        home.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "Secret", **secret}))
        header = (
            "| islands | kwok nodes | RSS connected MiB | RSS after dispatch MiB | peak MiB | idle CPU s/min"
            " | apply → pods on island (median / max) s | apply → DDMExperts Running (median / max) s |"
        )
        print(header)
        print("|---" * (header.count("|") - 1) + "|")
        for phase, count in enumerate(counts):
            started = time.monotonic()
            while len(planes) < count:
                name = f"island-{len(planes) + 1}"
                planes[name] = start_island(len(planes) + 1, work, args.nodes)
                register(home, name, planes[name])
            print(f"  ({count} islands up in {time.monotonic() - started:.0f}s)", file=sys.stderr, flush=True)
            row = measure(home, planes, minio, work, args, phase)
            rows.append(row)
            print(
                f"| {row['islands']} | {row['nodes']} | {row['rssConnectedMiB']:.0f} | {row['rssAfterDispatchMiB']:.0f}"
                f" | {row['peakRssMiB']:.0f} | {row['idleCpuSecondsPerMinute']:.2f}"
                f" | {row['podsOnIslandMedianSeconds']:.1f} / {row['podsOnIslandMaxSeconds']:.1f}"
                f" | {row['expertsRunningMedianSeconds']:.1f} / {row['expertsRunningMaxSeconds']:.1f} |",
                flush=True,
            )
    finally:
        for plane in planes.values():
            plane.close()
        home.close()
        minio.close()
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
