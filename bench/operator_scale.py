"""Operator scale on kwok: 1000 simulated GPU nodes, 16 DDMRuns × 64 experts.

    .venv/bin/python bench/operator_scale.py [--nodes 1000] [--runs 16] [--experts 64] [--json OUT.json]
                                             [--skip-baselines] [--switch-interval-ms MS]

In one control plane (the pinned binaries of tests/env) it measures
  * baselines: the same number of bare one-GPU pods (the operator's pod shape: GPU request,
    tolerations, security context), created directly with the client from 16 threads, and
    the time until the kube-scheduler has bound every one: once naming only a GPU product
    (the scheduler picks among ~200 nodes per pod) and once pinned to a node by name like
    the operator's planned pods (the scheduler checks one node);
  * operator: `kubectl apply` of the DDMRuns, and the time until every expert pod is bound
    (the operator creates 64 DDMExperts and 64 expert pods per run, places them, and
    patches statuses and posts Events meanwhile);
and prints their ratio and the operator's peak memory (VmHWM of its process). Status
latency: watches on the expert pods and the DDMExperts record when each pod was first seen
bound and when its DDMExpert first showed Running; the bench prints the distribution of
that delay per expert, and the writes to DDMExpert and DDMRun objects (watch MODIFIED
events) while the runs start. Pods are left to kwok's stages, never executed, so each run's
partition is pre-seeded in its store (stats.json, a `done` progress.json and the done
marker): the operator starts at "partition done". The runs are applied once the
kube-controller-manager is done with the new nodes (`settled`), as on a cluster whose nodes
joined long ago. With --skip-baselines only the operator
part runs, and the bench imports nothing of the operator (so it can measure another
checkout's operator: PYTHONPATH=that checkout's package tree).

A little over 400 lines: one benchmark, its watches and its report in one script (the
control plane's costs are measured by bench/control_plane_costs.py).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
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

from atoll import __version__  # noqa: E402
from atoll.operator.crd import all_crds, render_crds  # noqa: E402
from atoll.operator.kube import Kube, load_config  # noqa: E402
from atoll.progress import StageProgress  # noqa: E402
from atoll.store import open_store  # noqa: E402
from tests.env import fleet as fleet_builders  # noqa: E402
from tests.env.cluster import KWOK_POD_WORKERS, ControlPlane  # noqa: E402
from tests.env.process import kill_group, start_group  # noqa: E402

sys.path.insert(0, str(REPO / "bench"))
from control_plane_costs import Costs, apiserver_profile  # noqa: E402
from scale_status import METRICS_PORT, Watcher, acceptance, percentile, spread, tick_times  # noqa: E402

WORKERS = 16
CONTROLLER_MANAGER_QPS = 200
"""The kube-controller-manager's request rate here (its default, 20, takes minutes to settle
1000 new nodes; see `settled`)."""
NOT_READY_TAINT = "node.kubernetes.io/not-ready"


def run_manifest(name: str, experts: int) -> dict[str, Any]:
    return {
        "apiVersion": "atoll.dev/v1alpha1",
        "kind": "DDMRun",
        "metadata": {"name": name},
        "spec": {
            "dataset": {"uri": "builtin://digits", "resolution": 8},
            "partition": {"clusters": experts, "features": "pixels"},
            "expert": {"preset": "tiny", "steps": 1000, "checkpointEvery": 100},
            "router": {"preset": "tiny", "steps": 500},
            # One GPU per expert, like the bare pods it is compared with.
            "placement": {"gpu": {"maxPerExpert": 1}},
        },
    }


def seed_partition(root: Path, namespace: str, name: str, experts: int) -> None:
    """What a finished partition stage leaves in the store (its pod never runs under kwok)."""
    store = open_store(str(root / namespace / name))
    sizes = [1000 + k for k in range(experts)]
    store.put_json("partition/stats.json", {"clusters": experts, "sizes": sizes})
    done = StageProgress(stage="partition", state="done", step=1, total_steps=1)
    store.put_bytes("partition/progress.json", done.to_json())
    store.put_json("partition/done.json", {"clusters": experts, "sizes": sizes, "attempt": 1})


def wait(check: Any, timeout: float, what: str, interval: float = 0.5) -> float:
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"{what} not reached after {timeout:.0f}s")
        time.sleep(interval)
    return time.monotonic() - start


def bound(kube: Kube, namespace: str, selector: str) -> tuple[int, int]:
    items = json.loads(kube.core.list_namespaced_pod(namespace, label_selector=selector, _preload_content=False).data)[
        "items"
    ]
    return len(items), sum(1 for pod in items if pod["spec"].get("nodeName"))


def bare_pods(
    count: int, namespace: str, products: list[str], pinned_to: list[dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """Pods shaped like the operator's expert pods, without an owner, round-robin over products
    (or, `pinned_to` nodes given, each pinned to one of them by name like a planned pod)."""
    from atoll.api.spec import DDMRunSpec
    from atoll.operator.placement import Assignment
    from atoll.operator.pods import Owner, StageAttempt, build_pod
    from atoll.operator.settings import OperatorSettings
    from atoll.stages import StageJob

    spec = DDMRunSpec.model_validate(run_manifest("bare", 2)["spec"])
    owner = Owner(api_version="v1", kind="None", name="none", uid="none")
    pods = []
    for index in range(count):
        product = products[index % len(products)]
        node = ""
        if pinned_to:
            target = pinned_to[index % len(pinned_to)]
            node = target["metadata"]["name"]
            product = target["metadata"]["labels"]["nvidia.com/gpu.product"]
        item = StageAttempt(
            run="bare",
            namespace=namespace,
            job=StageJob("expert", index),
            attempt=1,
            spec_uri="/dev/null",
            store_uri="/dev/null",
            store_secret=None,
            owner=owner,
            assignment=Assignment(
                expert=index, node=node, gpu_product=product, gpus=1, micro_batch=None, grad_accum=None
            ),
            pinned=bool(node),
        )
        pod = build_pod(item, spec, OperatorSettings())
        del pod["metadata"]["ownerReferences"]
        pod["spec"]["affinity"]["nodeAffinity"].pop("preferredDuringSchedulingIgnoredDuringExecution", None)
        pods.append(pod)
    return pods


def create_all(kube: Kube, pods: list[dict[str, Any]]) -> None:
    with ThreadPoolExecutor(WORKERS) as pool:
        list(pool.map(kube.create_pod, pods))


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start_fleet(cluster: ControlPlane, kube: Kube, count: int) -> list[dict[str, Any]]:
    """The kwok GPU nodes (all Ready), the CRDs and the two namespaces."""
    started = time.monotonic()
    nodes = fleet_builders.simulated_fleet(count)
    with ThreadPoolExecutor(WORKERS) as pool:
        list(pool.map(kube.core.create_node, nodes))

    def all_ready() -> bool:
        items = _nodes(kube)
        ready = [n for n in items if any(c["type"] == "Ready" and c["status"] == "True" for c in _conditions(n))]
        return len(ready) >= count

    wait(all_ready, 600, "every kwok node Ready", interval=2)
    print(f"{count} kwok GPU nodes Ready after {time.monotonic() - started:.0f}s")
    wait(lambda: settled(kube), 600, "the kube-controller-manager done with the new nodes", interval=2)
    print(f"{count} kwok GPU nodes settled after {time.monotonic() - started:.0f}s")
    cluster.kubectl("apply", "--server-side", "-f", "-", input=render_crds(all_crds()))
    cluster.kubectl("wait", "--for=condition=Established", "crd/ddmruns.atoll.dev", "crd/ddmexperts.atoll.dev")
    for namespace in ("bench-bare", "bench-runs"):
        cluster.kubectl("create", "namespace", namespace)
    wait(lambda: cluster.kubectl("get", "sa", "default", "-n", "bench-runs", check=False).returncode == 0, 60, "sa")
    return nodes


def settled(kube: Kube) -> bool:
    """Whether the kube-controller-manager is done with the new nodes, as it is on a cluster
    whose nodes joined long ago: each node's not-ready taint lifted and its beta labels added.
    Until then it writes every node two or three times more (those two and the TTL annotation),
    at its default 20 requests/s for minutes after 1000 nodes turn Ready, and each write is a
    watch event for the operator, the scheduler and kwok during the burst measured here."""
    return all(
        "beta.kubernetes.io/os" in (n["metadata"].get("labels") or {})
        and not any(t.get("key") == NOT_READY_TAINT for t in n["spec"].get("taints") or ())
        for n in _nodes(kube)
    )


def _nodes(kube: Kube) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = json.loads(kube.core.list_node(_preload_content=False).data)["items"]
    return items


def _conditions(node: dict[str, Any]) -> list[dict[str, Any]]:
    conditions: list[dict[str, Any]] = node["status"].get("conditions") or []
    return conditions


def baseline(
    cluster: ControlPlane, kube: Kube, nodes: list[dict[str, Any]], total: int, timeout: float, *, pinned: bool
) -> dict[str, float]:
    """Bare pods created directly: seconds until created and until all bound.

    pinned=False: each pod names only a GPU product, the kube-scheduler picks the node (what
    one does without a planner). pinned=True: each pod is pinned to a node by name, exactly
    like the operator's planned pods, so the difference to the operator is its own overhead.
    """
    label = "pinned" if pinned else "bare"
    pods = bare_pods(total, "bench-bare", sorted(fleet_builders.products_of(nodes)), nodes if pinned else None)
    t0 = time.monotonic()
    create_all(kube, pods)
    created = time.monotonic() - t0
    wait(lambda: bound(kube, "bench-bare", "atoll.dev/run=bare")[1] >= total, timeout, f"{label} pods bound")
    done = time.monotonic() - t0
    print(f"baseline ({label}): {total} pods created in {created:.1f}s, all bound after {done:.1f}s")
    # One API call (kubectl deleting 1024 pods one by one outlived its 60 s timeout on a busy machine).
    kube.core.delete_collection_namespaced_pod("bench-bare", grace_period_seconds=0)
    wait(lambda: bound(kube, "bench-bare", "atoll.dev/run=bare")[0] == 0, 600, "bare pods deleted", interval=2)
    return {f"{label}_created_seconds": round(created, 2), f"{label}_bound_seconds": round(done, 2)}


def operated(cluster: ControlPlane, kube: Kube, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The DDMRuns through the operator: seconds until every expert pod is bound and every
    DDMExpert shows Running, the delay per expert between the two, writes, peak memory."""
    total = args.runs * args.experts
    store = work / "store"
    names = [f"bench-{i:02d}" for i in range(args.runs)]
    for name in names:
        seed_partition(store, "bench-runs", name, args.experts)
    log = work / "operator.log"
    command = [
        sys.executable, "-m", "atoll", "operator", "--kubeconfig", str(cluster.kubeconfig),
        "--namespace", "bench-runs", "--default-store", str(store), "--interval", "1", "--store-poll", "2",
        "--metrics-port", str(METRICS_PORT), "--metrics-address", "127.0.0.1",
    ]  # fmt: skip
    if args.switch_interval_ms is not None:  # given only when asked: an older operator may not know the flag
        command += ["--switch-interval-ms", str(args.switch_interval_ms)]
    operator = start_group(command, log=log, cwd=REPO)
    profiler = _profile(operator.pid, work, args.py_spy)
    watcher = Watcher(kube, "bench-runs").start()
    try:
        wait(lambda: "Initial authentication has finished" in log.read_text(), 120, "operator started")
        time.sleep(3)  # let kopf list nodes and pods into its indexes before the clock starts
        documents = "\n---\n".join(yaml.safe_dump(run_manifest(name, args.experts)) for name in names)
        processes = {**cluster.pids(), "operator": operator.pid, "bench": os.getpid()}
        costs = Costs(kube, processes, cluster.ports["etcdPort"], "bench-runs").start()
        t0 = time.monotonic()
        cluster.kubectl("apply", "-n", "bench-runs", "-f", "-", input=documents)
        profile = _apiserver_profile(cluster, kube, work, args.apiserver_profile)
        created = wait(lambda: _count(kube, "ddmexperts") >= total, args.timeout, "every DDMExpert", interval=1)
        wait(lambda: len(watcher.bound) >= total, args.timeout, "pods bound")
        done = max(watcher.bound.values()) - t0
        print(f"operator: {args.runs} runs × {args.experts} experts, every expert pod bound after {done:.1f}s")
        wait(lambda: len(watcher.running) >= total, args.timeout, "every DDMExpert Running")
        running = max(watcher.running.values()) - t0
        print("from the apply until every DDMExpert showed Running:")
        control_plane = costs.stop()
        time.sleep(10)  # writes that still follow (heartbeat-free: nothing should change any more)
        rss = peak_rss_mib(operator.pid)
        ticks = tick_times()
    finally:
        watcher.stop.set()
        if profiler is not None:
            profiler.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT only
            profiler.wait(timeout=120)
        kill_group(operator.pid, proc=operator)
    if profile is not None:
        profile.join()
    delays = watcher.delays(watcher.bound)
    own = watcher.delays(watcher.pod_running)
    kwok = watcher.delays(watcher.bound, watcher.pod_running)
    print(
        f"every DDMExpert status Running after {running:.1f}s ({running - done:.1f}s after the last pod bound);"
        f" per expert, pod bound → DDMExpert Running: median {percentile(delays, 0.5):.1f}s,"
        f" p95 {percentile(delays, 0.95):.1f}s, max {delays[-1]:.1f}s; pod Running → DDMExpert Running:"
        f" median {percentile(own, 0.5):.1f}s, max {own[-1]:.1f}s; writes: {watcher.expert_writes} DDMExpert,"
        f" {watcher.run_writes} DDMRun; operator peak RSS {rss:.0f} MiB"
    )
    print(
        "reconcile ticks: "
        + ", ".join(f"{step} {count} × {mean * 1000:.0f} ms" for step, (count, mean) in ticks.items())
    )
    return {
        "operator_experts_created_seconds": round(created, 2),
        "operator_bound_seconds": round(done, 2),
        "operator_status_running_seconds": round(running, 2),
        "operator_running_after_last_bound_seconds": round(running - done, 2),
        "operator_bound_to_running_median_seconds": round(percentile(delays, 0.5), 2),
        "operator_bound_to_running_p95_seconds": round(percentile(delays, 0.95), 2),
        "operator_bound_to_running_max_seconds": round(delays[-1], 2),
        "operator_pod_running_to_running_median_seconds": round(percentile(own, 0.5), 2),
        "operator_pod_running_to_running_max_seconds": round(own[-1], 2),
        "experts_running": len(delays),
        "bound_to_running": spread(delays),
        "bound_to_pod_running": spread(kwok),
        "pod_running_to_running": spread(own),
        "operator_ddmexpert_writes": watcher.expert_writes,
        "operator_ddmexpert_write_phases": dict(watcher.expert_write_phases),
        "operator_ddmrun_writes": watcher.run_writes,
        "operator_peak_rss_mib": round(rss, 1),
        "control_plane": control_plane,
        "per_expert": watcher.timeline(t0),
        "watch_restarts": watcher.restarted(t0),
        "running_seen_late": spread(sorted(watcher.seen_late.values())),
        "operator_ticks": {
            step: {"count": count, "mean_seconds": round(mean, 4)} for step, (count, mean) in ticks.items()
        },
    }


def _profile(pid: int, work: Path, out: Path | None) -> subprocess.Popen[bytes] | None:
    """py-spy recording the operator (every thread, GIL holders only) until stopped, if asked."""
    if out is None:
        return None
    command = ["py-spy", "record", "--pid", str(pid), "--threads", "--gil", "--rate", "50", "--format", "raw",
               "--output", str(out), "--nonblocking"]  # fmt: skip
    return subprocess.Popen(command, stdout=(work / "py-spy.log").open("wb"), stderr=subprocess.STDOUT)


def _apiserver_profile(cluster: ControlPlane, kube: Kube, work: Path, out: Path | None) -> threading.Thread | None:
    """A 30 s CPU profile of the API server from now on (the start-up burst), in a thread, if asked;
    its `go tool pprof -top` is printed when it ends."""
    if out is None:
        return None

    def record() -> None:
        try:
            print(
                "API server CPU profile, 30 s from the apply:\n"
                + apiserver_profile(kube, 30, out, cluster.paths["kube-apiserver"])
            )
        except Exception as error:  # a diagnostic: the bench's figures do not depend on it
            print(f"API server profile failed: {error}")

    thread = threading.Thread(target=record, daemon=True)
    thread.start()
    return thread


def _count(kube: Kube, plural: str) -> int:
    items = kube.custom.list_namespaced_custom_object("atoll.dev", "v1alpha1", "bench-runs", plural)["items"]
    return len(items)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=16)
    parser.add_argument("--experts", type=int, default=64)
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--keep", action="store_true", help="keep the work directory (cluster logs, operator.log)")
    parser.add_argument("--skip-baselines", action="store_true", help="measure only the operator")
    parser.add_argument(
        "--py-spy", type=Path, metavar="OUT", help="record the operator with py-spy (raw format) into OUT"
    )
    parser.add_argument(
        "--apiserver-profile", type=Path, metavar="OUT",
        help="record a 30 s CPU profile of the API server from the apply into OUT (pprof format)",
    )  # fmt: skip
    parser.add_argument(
        "--kwok-pod-workers", type=int, default=KWOK_POD_WORKERS, metavar="N",
        help=f"pods kwok plays stages for at once (default {KWOK_POD_WORKERS} as in tests/env; kwok's own default: 4)",
    )  # fmt: skip
    parser.add_argument(
        "--switch-interval-ms", type=float, metavar="MS",
        help="the operator's --switch-interval-ms (default: the operator's own default)",
    )  # fmt: skip
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a killed bench still stops its control plane
    total = args.runs * args.experts
    work = Path(tempfile.mkdtemp(prefix="atoll-bench-scale-"))
    results: dict[str, Any] = {
        "nodes": args.nodes,
        "runs": args.runs,
        "experts_per_run": args.experts,
        "expert_pods": total,
        "atoll": __version__,
        "python": platform.python_version(),
        "cpu": subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout.splitlines()[:15],
        "kwok_pod_workers": args.kwok_pod_workers,
        "controller_manager_qps": CONTROLLER_MANAGER_QPS,
        "switch_interval_ms": args.switch_interval_ms,
        "load_before": _load(),
        "autogroup": _autogroup(),
    }
    cluster = ControlPlane(
        work / "cluster", kwok_pod_workers=args.kwok_pod_workers, controller_manager_qps=CONTROLLER_MANAGER_QPS
    )
    try:
        cluster.start()
        kube = Kube(load_config(str(cluster.kubeconfig)))
        nodes = start_fleet(cluster, kube, args.nodes)
        if not args.skip_baselines:
            results.update(baseline(cluster, kube, nodes, total, args.timeout, pinned=False))
            results.update(baseline(cluster, kube, nodes, total, args.timeout, pinned=True))
        results.update(operated(cluster, kube, work, args))
    finally:
        cluster.close()
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    if not args.skip_baselines:
        bound_seconds = results["operator_bound_seconds"]
        results["ratio_operator_to_bare"] = round(bound_seconds / results["bare_bound_seconds"], 2)
        results["ratio_operator_to_pinned"] = round(bound_seconds / results["pinned_bound_seconds"], 2)
        print(
            f"ratio operator / bare pods: {results['ratio_operator_to_bare']:.2f};"
            f" operator / pinned bare pods: {results['ratio_operator_to_pinned']:.2f}"
        )
    results["load_after"] = _load()
    print(json.dumps({k: v for k, v in results.items() if k != "cpu"}, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    print(acceptance(results))
    return 0


def _load() -> str:
    """The 1, 5 and 15 minute load averages (the machine is shared: say how busy it was)."""
    return " / ".join(f"{value:.1f}" for value in os.getloadavg())


def _autogroup() -> str:
    """Whether the kernel shares the CPU out per session (autogroup scheduling): while it is on,
    a nice value holds only inside its own session, so another job "at nice 19" takes as much
    of the cores as any one component of the bench. `echo 0 >
    /proc/sys/kernel/sched_autogroup_enabled` (as root) turns it off for processes started
    after; `echo 19 > /proc/PID/autogroup` lowers a running job's whole session."""
    try:
        return {"1": "on", "0": "off"}.get(Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip(), "?")
    except OSError:
        return "absent"


if __name__ == "__main__":
    sys.exit(main())
