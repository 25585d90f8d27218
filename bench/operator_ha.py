"""Operator high availability and footprint: leader failover time and memory with N runs.

    .venv/bin/python bench/operator_ha.py [--failovers 5] [--handovers 3] [--runs 0,10,50] [--json OUT.json]

In one control plane (the pinned binaries of tests/env), with the default Lease timings
(15 s lease, 10 s renew deadline, 2 s retry):
  * failover: two `atoll operator --leader-elect` processes; the leader is SIGKILLed (no
    hand-over) and the time until the other one's /metrics says `atoll_leader 1` and its
    reconcile count grows (it reconciled a run) is measured; the killed one is started again
    as the standby, and this is repeated. Baseline: the Lease duration, the least time any
    lease-based election must wait after a crash; the ratio says what the retry period and
    the operator add to it;
  * hand-over: the same with SIGTERM (the leader releases the Lease as it stops);
  * memory: one operator's resident set (VmRSS, after 20 s of ticks) with 0, 10, 50 DDMRuns,
    ratio against 0 runs. The runs' partition pods stay Pending (no nodes), so every run is
    reconciled every tick but none trains: the operator's own footprint.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from atoll import __version__  # noqa: E402
from atoll.operator.crd import all_crds, render_crds  # noqa: E402
from tests.env.cluster import ControlPlane  # noqa: E402
from tests.env.process import free_port, kill_group, start_group  # noqa: E402

NAMESPACE = "default"


def run_manifest(name: str, store: Path) -> dict[str, Any]:
    return {
        "apiVersion": "atoll.dev/v1alpha1",
        "kind": "DDMRun",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "dataset": {"uri": "builtin://digits", "resolution": 8},
            "partition": {"clusters": 4, "features": "pixels"},
            "expert": {"preset": "tiny", "steps": 100},
            "storage": {"uri": str(store)},
        },
    }


class Operator:
    def __init__(self, cluster: ControlPlane, work: Path, who: str, *extra: str) -> None:
        self.port = free_port()
        self.log = work / f"operator-{who}.log"
        self.command = [
            sys.executable, "-m", "atoll", "operator", "--kubeconfig", str(cluster.kubeconfig),
            "--namespace", NAMESPACE, "--interval", "5", "--metrics-port", str(self.port),
            "--metrics-address", "127.0.0.1", *extra,
        ]  # fmt: skip
        self.proc: Any = None

    def start(self) -> Operator:
        self.proc = start_group(self.command, log=self.log, cwd=REPO)
        return self

    def kill(self) -> None:
        kill_group(self.proc.pid, proc=self.proc)
        self.proc.wait(timeout=30)

    def terminate(self) -> None:
        import signal

        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)

    def metrics(self) -> dict[str, float]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as response:
                text = response.read().decode()
        except OSError:
            return {}
        values: dict[str, float] = {"runs": 0.0}
        for line in text.splitlines():
            if line.startswith(("atoll_leader ", "atoll_reconcile_seconds_count ")):
                name, value = line.split(" ", 1)
                values[name] = float(value)
            elif line.startswith("atoll_runs{"):
                values["runs"] += float(line.rsplit(" ", 1)[1])
        return values

    def rss_mib(self) -> float:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        kib = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
        return kib / 1024

    def leading(self) -> bool:
        return self.metrics().get("atoll_leader") == 1.0

    def reconciles(self) -> float:
        return self.metrics().get("atoll_reconcile_seconds_count", 0.0)


def wait(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.1)


def takeovers(cluster: ControlPlane, work: Path, rounds: int, *, clean: bool) -> list[float]:
    """Seconds from the leader's death (or SIGTERM) to the standby reconciling."""
    lease = "bench-" + ("clean" if clean else "kill")
    elect = ["--leader-elect", "--leader-namespace", NAMESPACE, "--leader-lease", lease]
    replicas = [Operator(cluster, work, f"{'t' if clean else 'k'}{i}", *elect).start() for i in range(2)]
    times: list[float] = []
    try:
        for _ in range(rounds):
            wait(lambda: any(r.leading() for r in replicas), 120, "a leader")
            leader = next(r for r in replicas if r.leading())
            standby = next(r for r in replicas if r is not leader)
            wait(lambda s=standby: s.metrics() != {}, 60, "the standby serving")
            before = standby.reconciles()
            started = time.monotonic()
            leader.terminate() if clean else leader.kill()
            wait(lambda s=standby, b=before: s.leading() and s.reconciles() > b, 120, "the takeover")
            times.append(time.monotonic() - started)
            print(f"  {'hand-over' if clean else 'failover'}: {times[-1]:.1f} s", flush=True)
            leader.start()
    finally:
        for replica in replicas:
            if replica.proc is not None and replica.proc.poll() is None:
                replica.kill()
    return times


def memory(cluster: ControlPlane, work: Path, counts: list[int]) -> dict[int, float]:
    store = work / "store"
    operator = Operator(cluster, work, "memory").start()
    made = 0
    rss: dict[int, float] = {}
    try:
        for count in counts:
            while made < count:
                manifest = json.dumps(run_manifest(f"run-{made}", store))
                cluster.kubectl("apply", "-f", "-", input=manifest)
                made += 1
            wait(lambda n=count: operator.metrics().get("runs", 0) >= n, 300, "every run reconciled")
            time.sleep(20)
            rss[count] = operator.rss_mib()
            print(f"  {count} runs: {rss[count]:.0f} MiB", flush=True)
    finally:
        operator.kill()
    return rss


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--failovers", type=int, default=5)
    parser.add_argument("--handovers", type=int, default=3)
    parser.add_argument("--runs", default="0,10,50")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="atoll-ha-") as tmp:
        work = Path(tmp)
        cluster = ControlPlane(work / "cluster")
        cluster.start()
        try:
            cluster.kubectl("apply", "--server-side", "-f", "-", input=render_crds(all_crds()))
            cluster.kubectl("wait", "--for=condition=Established", "crd/ddmruns.atoll.dev", "--timeout=60s")
            cluster.kubectl("apply", "-f", "-", input=json.dumps(run_manifest("ha-probe", work / "store")))
            print("failover (SIGKILL):", flush=True)
            killed = takeovers(cluster, work, args.failovers, clean=False)
            print("hand-over (SIGTERM):", flush=True)
            clean = takeovers(cluster, work, args.handovers, clean=True)
            cluster.kubectl("delete", "ddmrun", "ha-probe", "--wait=false")
            print("memory:", flush=True)
            rss = memory(cluster, work, [int(n) for n in args.runs.split(",")])
        finally:
            cluster.stop()
    lease = 15.0
    result = {
        "atoll": __version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": __import__("os").cpu_count(),
        "failover_seconds": killed,
        "failover_median": statistics.median(killed),
        "failover_max": max(killed),
        "failover_vs_lease": statistics.median(killed) / lease,
        "handover_seconds": clean,
        "handover_median": statistics.median(clean),
        "rss_mib": rss,
        "rss_vs_no_runs": {n: value / rss[min(rss)] for n, value in rss.items()},
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
