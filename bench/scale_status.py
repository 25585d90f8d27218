"""What the operator-scale bench reads while the runs start: per expert, when its pod was
bound, when the pod ran and when its DDMExpert showed Running (watches), the writes to
DDMExperts and DDMRuns, the operator's own /metrics (ticks, their steps, the event loop's
lag, CPU), and the block of figures that settles the status-latency goal.

Reads only: it never writes to the cluster, and imports nothing of the operator but its
client (so bench/operator_scale.py can measure another checkout's operator).
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

from atoll.operator.kube import Kube


class Watcher:
    """First-seen times, per expert, of its pod bound, of its pod Running (kwok's doing) and of
    its DDMExpert showing Running, and the count of writes (watch MODIFIED events) to
    DDMExperts and DDMRuns, from watches."""

    def __init__(self, kube: Kube, namespace: str) -> None:
        self.kube = kube
        self.namespace = namespace
        self.bound: dict[tuple[str, int], float] = {}
        self.pod_running: dict[tuple[str, int], float] = {}
        self.running: dict[tuple[str, int], float] = {}
        self.seen_late: dict[tuple[str, int], float] = {}
        """Per expert: seconds from the API server's record of its Running status write (the
        status entry of managedFields, whole seconds) to this watcher seeing it; a large one
        means the watcher, not the operator, was late."""
        self.restarts: list[tuple[float, str]] = []
        """When (monotonic) and why a watch restarted."""
        self.expert_writes = 0
        self.expert_write_phases: dict[str, int] = {}
        """DDMExpert writes by the phase they wrote (a status passing through Pending to
        Running is two writes; two writes of one phase mean a write that changed nothing shown)."""
        self.run_writes = 0
        self.stop = threading.Event()
        self.threads = [
            threading.Thread(target=self._pods, daemon=True),
            threading.Thread(target=self._custom, args=("ddmexperts",), daemon=True),
            threading.Thread(target=self._custom, args=("ddmruns",), daemon=True),
        ]

    def start(self) -> Watcher:
        for thread in self.threads:
            thread.start()
        return self

    def _stream(self, list_call: Any, *args: Any, **kwargs: Any) -> Any:
        """Watch events as plain dicts, resumed from the last resourceVersion seen (no write is
        missed across the 60 s reconnects), listed anew only after 410 Gone. Decoding thousands
        of events into the client's models would cost this process CPU the measured parts share
        the cores with; and the client's own watch with `deserialize=False` fails on any ERROR
        event (KeyError 'raw_object')."""
        from kubernetes.watch.watch import iter_resp_lines

        version: str | None = None
        while not self.stop.is_set():
            try:
                response = list_call(
                    *args, watch=True, timeout_seconds=60, resource_version=version, allow_watch_bookmarks=True,
                    _preload_content=False, **kwargs,
                )  # fmt: skip
                for line in iter_resp_lines(response):  # type: ignore[no-untyped-call]
                    event = json.loads(line)
                    if event["type"] == "ERROR":
                        status = event.get("object") or {}
                        if status.get("code") == 410:
                            version = None
                        self.restarts.append((time.monotonic(), f"{status.get('code')} {status.get('message')}"))
                        print(f"watch restarted: {status.get('code')} {status.get('message')}")
                        break
                    version = event["object"]["metadata"]["resourceVersion"]
                    if event["type"] != "BOOKMARK":
                        yield event
            except Exception as error:
                self.restarts.append((time.monotonic(), f"{type(error).__name__}: {error}"))
                print(f"watch restarted: {type(error).__name__}: {error}")
                time.sleep(0.5)

    def _pods(self) -> None:
        for event in self._stream(
            self.kube.core.list_namespaced_pod, self.namespace, label_selector="atoll.dev/stage=expert"
        ):
            pod = event["object"]
            labels = pod["metadata"].get("labels") or {}
            key = (labels.get("atoll.dev/run", ""), int(labels.get("atoll.dev/expert", -1)))
            if pod["spec"].get("nodeName") and key not in self.bound:
                self.bound[key] = time.monotonic()
            if (pod.get("status") or {}).get("phase") == "Running" and key not in self.pod_running:
                self.pod_running[key] = time.monotonic()

    def _custom(self, plural: str) -> None:
        custom = self.kube.custom
        for event in self._stream(
            custom.list_namespaced_custom_object, "atoll.dev", "v1alpha1", self.namespace, plural
        ):
            item = event["object"]
            if event["type"] == "MODIFIED":
                if plural == "ddmexperts":
                    self.expert_writes += 1
                    phase = (item.get("status") or {}).get("phase") or "none"
                    self.expert_write_phases[phase] = self.expert_write_phases.get(phase, 0) + 1
                else:
                    self.run_writes += 1
            if plural != "ddmexperts":
                continue
            key = (item["spec"]["run"], int(item["spec"]["expert"]))
            if (item.get("status") or {}).get("phase") == "Running" and key not in self.running:
                self.running[key] = time.monotonic()
                written = status_written(item)
                if written is not None:
                    self.seen_late[key] = round(time.time() - written, 2)

    def timeline(self, t0: float) -> list[list[Any]]:
        """Per expert: run, expert, seconds from `t0` until its pod was seen bound, its pod
        Running and its DDMExpert Running (None: not seen), and how late the last was seen
        (`seen_late`), in the order the pods were bound."""

        def since(times: dict[tuple[str, int], float], key: tuple[str, int]) -> float | None:
            return round(times[key] - t0, 2) if key in times else None

        keys = sorted(self.bound, key=self.bound.__getitem__)
        moments = (self.bound, self.pod_running, self.running)
        return [[*key, *(since(times, key) for times in moments), self.seen_late.get(key)] for key in keys]

    def restarted(self, t0: float) -> list[list[Any]]:
        """The watches' restarts: seconds from `t0`, and why."""
        return [[round(at - t0, 2), why] for at, why in self.restarts]

    def delays(
        self, since: dict[tuple[str, int], float], until: dict[tuple[str, int], float] | None = None
    ) -> list[float]:
        """Seconds from `since` (pod bound, pod Running) to `until` (default: the DDMExpert
        showing Running), per expert, sorted."""
        until = self.running if until is None else until
        return sorted(until[key] - since[key] for key in until if key in since)


def status_written(item: dict[str, Any]) -> float | None:
    """When (Unix time, whole seconds) the API server recorded the object's last status write."""
    from datetime import datetime

    times = [
        entry["time"]
        for entry in item["metadata"].get("managedFields") or []
        if entry.get("subresource") == "status" and entry.get("time")
    ]
    return max(datetime.fromisoformat(t.replace("Z", "+00:00")).timestamp() for t in times) if times else None


def percentile(values: list[float], fraction: float) -> float:
    return values[min(len(values) - 1, int(fraction * len(values)))] if values else float("nan")


def spread(values: list[float]) -> dict[str, float]:
    """Median, p95 and max of sorted seconds, rounded."""
    return {
        "median": round(percentile(values, 0.5), 2),
        "p95": round(percentile(values, 0.95), 2),
        "max": round(values[-1], 2) if values else float("nan"),
    }


GOAL_SECONDS = 10.0
"""Every DDMExpert shows Running within this many seconds of its pod's binding."""


def acceptance(results: dict[str, Any]) -> str:
    """The figures that settle the goal, in one block: pod bound → DDMExpert Running (and its
    two parts: kwok's, then the operator's) and the writes per expert."""
    experts = results["expert_pods"]
    whole, kwok, own = results["bound_to_running"], results["bound_to_pod_running"], results["pod_running_to_running"]
    met = whole["max"] <= GOAL_SECONDS and results["experts_running"] == experts
    expert_writes, run_writes = results["operator_ddmexpert_writes"], results["operator_ddmrun_writes"]
    return "\n".join([
        f"acceptance ({results['nodes']} kwok nodes, {results['runs']} runs × {results['experts_per_run']} experts;"
        f" kwok pod workers {results['kwok_pod_workers']}; load average {results['load_before']} before,"
        f" {results['load_after']} after; autogroup scheduling {results.get('autogroup', '?')}):",
        f"  pod bound → DDMExpert Running: median {whole['median']:.1f} s, p95 {whole['p95']:.1f} s,"
        f" max {whole['max']:.1f} s over {results['experts_running']} of {experts} experts:"
        f" goal (every one within {GOAL_SECONDS:.0f} s) {'MET' if met else 'NOT MET'}",
        f"    pod bound → pod Running (kwok):          median {kwok['median']:.1f} s, p95 {kwok['p95']:.1f} s,"
        f" max {kwok['max']:.1f} s",
        f"    pod Running → DDMExpert Running (operator): median {own['median']:.1f} s, p95 {own['p95']:.1f} s,"
        f" max {own['max']:.1f} s",
        *watch_line(results),
        f"  writes: {expert_writes} DDMExpert ({expert_writes / experts:.2f} per expert),"
        f" {run_writes} DDMRun ({run_writes / results['runs']:.1f} per run, {run_writes / experts:.2f} per expert)",
        *phases_line(results),
    ])  # fmt: skip


def phases_line(results: dict[str, Any]) -> list[str]:
    """The DDMExpert writes by the phase each wrote (absent from an older run's results)."""
    phases = results.get("operator_ddmexpert_write_phases")
    if not phases:
        return []
    return ["    DDMExpert writes by phase written: " + ", ".join(f"{p} {n}" for p, n in sorted(phases.items()))]


def watch_line(results: dict[str, Any]) -> list[str]:
    """How late the bench's own watch saw the Running writes (the API server's record of each
    write has whole seconds, so up to 1 s of it is rounding) and how often its watches restarted."""
    late = results.get("running_seen_late")
    if not late:
        return []
    return [
        f"  (the bench saw those writes late by median {late['median']:.1f} s, max {late['max']:.1f} s,"
        f" up to 1 s of it rounding; its watches restarted {len(results.get('watch_restarts', []))} times)"
    ]


METRICS_PORT = 18931
EVENT_LOOP_LAG = "atoll_event_loop_lag_seconds"


def tick_times() -> dict[str, tuple[int, float]]:
    """Ticks so far and their mean wall time, whole and per step (the act step's parts too), and
    the event loop's mean lag (sampled every 2 s), from the operator's /metrics."""
    from urllib.request import urlopen

    from prometheus_client.parser import text_string_to_metric_families

    with urlopen(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=30) as response:
        text = response.read().decode()
    sums: dict[str, list[float]] = {}
    for family in text_string_to_metric_families(text):
        if family.name == "process_cpu_seconds":
            sums["operator CPU seconds"] = [1.0, family.samples[0].value]
        if family.name not in ("atoll_reconcile_seconds", "atoll_reconcile_step_seconds", EVENT_LOOP_LAG):
            continue
        for sample in family.samples:
            step = sample.labels.get("step") or ("event-loop lag" if family.name == EVENT_LOOP_LAG else "tick")
            if sample.name.endswith("_count"):
                sums.setdefault(step, [0.0, 0.0])[0] = sample.value
            elif sample.name.endswith("_sum"):
                sums.setdefault(step, [0.0, 0.0])[1] = sample.value
    return {step: (int(count), total / count if count else 0.0) for step, (count, total) in sums.items()}
