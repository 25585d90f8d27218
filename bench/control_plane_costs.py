"""Where the control plane's time goes while a bench runs: CPU seconds per component process
(etcd, kube-apiserver, kube-scheduler, kube-controller-manager, kwok, the operator), the API
server's own latency per verb and resource (its `apiserver_request_duration_seconds`, the
time it held each request, and the time requests waited in API Priority and Fairness queues),
and optionally a CPU profile of the API server (`/debug/pprof/profile`, read with `go tool
pprof`).

Why: a client-side latency (a status patch that takes 1.5 s as the operator sees it) says
nothing about where it is spent; the API server's histogram and the components' CPU tell the
API server's share apart from the client's queueing and from CPU taken by other processes.

Reads only: it never writes to the cluster.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from atoll.operator.kube import Kube

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

_HISTOGRAMS = {
    "apiserver_request_duration_seconds": ("verb", "resource", "subresource"),
    "apiserver_flowcontrol_request_wait_duration_seconds": ("priority_level", "execute"),
    "etcd_request_duration_seconds": ("operation", "type"),
}


def _get(kube: Kube, path: str, query: list[tuple[str, str]] | None = None, *, timeout: float = 60) -> bytes:
    """The body of a GET of one of the API server's own paths, with the client's credentials."""
    client = kube.core.api_client
    method, url, headers, body, post = client.param_serialize(
        "GET", path, query_params=query or [], auth_settings=["BearerToken"]
    )
    response = client.call_api(method, url, headers, body, post, _request_timeout=timeout)
    data: bytes = response.read()
    return data


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process pid so far (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def component_cpu(pids: dict[str, int]) -> dict[str, float]:
    """CPU seconds so far of each named process."""
    return {name: cpu_seconds(pid) for name, pid in pids.items()}


def cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {name: round(after[name] - before.get(name, 0.0), 1) for name in after}


Histograms = dict[tuple[str, tuple[str, ...]], tuple[float, float]]
"""(histogram, its chosen label values) → (count, sum)."""


def histograms(text: str, wanted: dict[str, tuple[str, ...]]) -> Histograms:
    """The wanted histograms of a Prometheus text page, summed over every label not named."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[tuple[str, tuple[str, ...]], list[float]] = {}
    for family in text_string_to_metric_families(text):
        labels = wanted.get(family.name)
        if labels is None:
            continue
        for sample in family.samples:
            kind = 0 if sample.name.endswith("_count") else 1 if sample.name.endswith("_sum") else None
            if kind is None:
                continue
            key = (family.name, tuple(sample.labels.get(label, "") for label in labels))
            out.setdefault(key, [0.0, 0.0])[kind] += sample.value
    return {key: (count, total) for key, (count, total) in out.items()}


def apiserver_metrics(kube: Kube) -> Histograms:
    """The API server's request and etcd latencies (the histograms above), from its /metrics."""
    return histograms(_get(kube, "/metrics").decode(), _HISTOGRAMS)


ETCD_HISTOGRAMS: dict[str, tuple[str, ...]] = {
    "etcd_disk_wal_fsync_duration_seconds": (),
    "etcd_disk_backend_commit_duration_seconds": (),
}


def etcd_metrics(port: int) -> Histograms:
    """etcd's own disk latencies (WAL fsync, backend commit), from its plain /metrics on the
    client port: whether its writes wait on the disk or on the CPU."""
    from urllib.request import urlopen

    with urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as response:
        return histograms(response.read().decode(), ETCD_HISTOGRAMS)


def events_by_reason(kube: Kube, namespace: str) -> tuple[dict[str, int], dict[str, list[str]]]:
    """Events in a namespace, counted by who posted them and why ("component/Reason"), and up
    to three messages of each reason (what an unexpected count was about)."""
    import json
    from collections import Counter

    items = json.loads(kube.core.list_namespaced_event(namespace, _preload_content=False).data)["items"]
    counts: Counter[str] = Counter()
    examples: dict[str, list[str]] = {}
    for item in items:
        source = (item.get("source") or {}).get("component") or item.get("reportingComponent") or "?"
        key = f"{source}/{item.get('reason')}"
        counts[key] += 1
        if len(shown := examples.setdefault(key, [])) < 3:
            shown.append(f"{(item.get('involvedObject') or {}).get('name')}: {item.get('message')}")
    return dict(counts.most_common()), examples


def latency_delta(
    before: Histograms,
    after: Histograms,
    *,
    top: int = 12,
) -> list[dict[str, Any]]:
    """The requests served between two snapshots, busiest first: count, mean and total seconds."""
    rows: list[dict[str, Any]] = []
    for key, (count, total) in after.items():
        count0, total0 = before.get(key, (0.0, 0.0))
        n, seconds = count - count0, total - total0
        if n <= 0:
            continue
        rows.append({
            "metric": key[0].removesuffix("_seconds"),
            "labels": "/".join(value for value in key[1] if value),
            "count": int(n),
            "mean_ms": round(1000 * seconds / n, 1),
            "total_s": round(seconds, 1),
        })  # fmt: skip
    rows.sort(key=lambda row: -float(row["total_s"]))
    return rows[:top]


def format_latency(rows: list[dict[str, Any]]) -> str:
    return "\n".join(
        f"  {row['metric']:<48} {row['labels']:<40} {row['count']:>7} × {row['mean_ms']:>8.1f} ms"
        f" = {row['total_s']:>7.1f} s"
        for row in rows
    )


def apiserver_profile(kube: Kube, seconds: int, out: Path, binary: Path) -> str:
    """A CPU profile of the API server over `seconds` (blocks that long), saved to `out`; returns
    `go tool pprof -top` of it (empty when Go is not installed)."""
    out.write_bytes(_get(kube, "/debug/pprof/profile", [("seconds", str(seconds))], timeout=seconds + 60))
    go = shutil.which("go")
    if go is None:
        return ""
    result = subprocess.run(
        [go, "tool", "pprof", "-top", "-nodecount", "35", str(binary), str(out)],
        capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip
    return result.stdout + result.stderr[-2000:]


class Costs:
    """The control plane's costs from `start()` to `stop()`: CPU seconds per process, the API
    server's and etcd's latencies, and the Events posted in a namespace."""

    def __init__(self, kube: Kube, processes: dict[str, int], etcd_port: int, namespace: str) -> None:
        self.kube, self.processes, self.etcd_port, self.namespace = kube, processes, etcd_port, namespace
        self.cpu: dict[str, float] = {}
        self.requests: Histograms = {}

    def _requests(self) -> Histograms:
        requests = apiserver_metrics(self.kube)
        try:
            requests.update(etcd_metrics(self.etcd_port))
        except OSError as error:  # a diagnostic: the bench's figures do not depend on it
            print(f"etcd metrics unavailable: {error}")
        return requests

    def start(self) -> Costs:
        self.cpu, self.requests = component_cpu(self.processes), self._requests()
        return self

    def stop(self) -> dict[str, Any]:
        cpu = cpu_delta(self.cpu, component_cpu(self.processes))
        requests = latency_delta(self.requests, self._requests(), top=16)
        events, examples = events_by_reason(self.kube, self.namespace)
        print(f"CPU seconds per process meanwhile: {cpu}")
        print("API server and etcd, requests served meanwhile (busiest first: count × mean time each):")
        print(format_latency(requests))
        print(f"Events in {self.namespace}, by who posted them and why: {events}")
        for key, messages in examples.items():
            print(f"  {key}: " + " | ".join(message[:160] for message in messages))
        return {"cpu_seconds_per_process": cpu, "requests": requests, "events": events, "event_examples": examples}
