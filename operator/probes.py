"""The operator's HTTP endpoint: `/metrics` (Prometheus), `/healthz` (liveness), `/readyz` (readiness).

Live: the event loop, where kopf watches and the reconcile daemons run, beat within
`stall_seconds`. Ready: connected to the API server (the leader election reached it lately,
or, without election, kopf's startup ran and the loop beats) and, on the replica that acts,
every run reconciling: a tick finished within `stall_seconds` whenever there are runs. A
standby is ready (it serves and takes over at once), and says so in the body. Serving never
calls the API server or a store.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from atoll.operator.leader import LeaderElector, Leadership
from atoll.operator.metrics import OperatorMetrics


class Health:
    """What the probes look at, updated by the kopf glue and read by the HTTP server's threads."""

    def __init__(
        self, leadership: Leadership, *, stall_seconds: float = 60.0, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self.leadership = leadership
        self.stall_seconds = stall_seconds
        self.monotonic = monotonic
        self._lock = threading.Lock()
        self._beat: float | None = None
        self._started = False
        self._runs = 0
        self._last_tick: float | None = None
        self._acting_since: float | None = None

    def beat(self) -> None:
        """The event loop is alive (called from it every few seconds)."""
        with self._lock:
            self._beat = self.monotonic()
            acting = self.leadership.acting()
            if acting and self._acting_since is None:
                self._acting_since = self._beat
            elif not acting:
                self._acting_since = None

    def started(self) -> None:
        with self._lock:
            self._started = True

    def run_started(self) -> None:
        with self._lock:
            self._runs += 1

    def run_stopped(self) -> None:
        with self._lock:
            self._runs -= 1

    def ticked(self) -> None:
        with self._lock:
            self._last_tick = self.monotonic()

    def live(self) -> tuple[bool, str]:
        with self._lock:
            if self._beat is None:
                return True, "starting"
            stalled = self.monotonic() - self._beat
        return (stalled < self.stall_seconds, f"event loop beat {stalled:.1f} s ago")

    def ready(self) -> tuple[bool, str]:
        alive, why = self.live()
        with self._lock:
            started, runs, last_tick, acting_since = self._started, self._runs, self._last_tick, self._acting_since
            now = self.monotonic()
        if not alive or self._beat is None:
            return False, why if self._beat is not None else "the event loop has not started"
        if isinstance(self.leadership, LeaderElector):
            if not self.leadership.connected():
                return False, "the API server was not reached within the lease duration"
        elif not started:
            return False, "kopf has not started"
        if not self.leadership.acting():
            return True, f"standby (leader: {getattr(self.leadership, 'holder', lambda: None)() or 'none'})"
        if runs > 0 and acting_since is not None:
            since = max(last_tick or acting_since, acting_since)
            if now - since > self.stall_seconds:
                return False, f"leader, {runs} run(s), no reconcile tick for {now - since:.0f} s"
        return True, f"leader, {runs} run(s)"


def serve(metrics: OperatorMetrics, health: Health, address: str, port: int) -> ThreadingHTTPServer:
    """Start the endpoint on a daemon thread; returns the server (its `server_port` is the bound port)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._reply(200, generate_latest(metrics.registry), CONTENT_TYPE_LATEST)
            elif path in ("/healthz", "/livez"):
                ok, why = health.live()
                self._reply(200 if ok else 503, f"{'ok' if ok else 'unhealthy'}: {why}\n".encode())
            elif path == "/readyz":
                ok, why = health.ready()
                self._reply(200 if ok else 503, f"{'ready' if ok else 'not ready'}: {why}\n".encode())
            else:
                self._reply(404, b"not found: /metrics, /healthz, /readyz\n")

        def _reply(self, code: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return  # probes every few seconds would flood the log

    server = ThreadingHTTPServer((address, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server
