"""A watch of one island's atoll pods on a thread of its own: what the reconciler reads of them
(atoll.operator.islands.registry) follows the island's API server as events arrive, not at the
island monitor's next probe.

A watch starts from the pods a probe listed (or lists them itself), then watches from the last
resourceVersion it saw (bookmarks included): a stream the API server ends is resumed from
there, 410 Gone (that version was compacted away) lists again at once, any other failure
reconnects after the island's probe backoff (5 s, 10 s, … 300 s), or as soon as a probe
reaches the island again. Only pods with the origin run label are watched. An island that
stops answering keeps its last known pods (the registry's rule). It stops when the island is
removed or its kubeconfig Secret changes. It never writes to the island and never logs a
kubeconfig: failures are logged by their error's type.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from atoll.log import get_logger
from atoll.operator import api_json
from atoll.operator.islands.dispatch import LABEL_ORIGIN_RUN_UID
from atoll.operator.islands.kubeconfig import client_for
from atoll.operator.islands.status import backoff_seconds

log = get_logger(__name__)

WATCH_SECONDS = 60
"""How long the API server keeps one watch request open (then it is resumed from the last version)."""
CONNECT_TIMEOUT_SECONDS = 10.0
READ_TIMEOUT_SECONDS = WATCH_SECONDS + 30.0
"""No byte for this long (no event, no end of stream): the connection is taken for dead."""
LIST_TIMEOUT_SECONDS = 30.0
QUIET_RESUME_SECONDS = 1.0
"""After a stream that ended with no event at all: the pause before resuming (never a tight loop)."""

Body = Mapping[str, Any]


class GoneError(Exception):
    """The resourceVersion to resume from was compacted away (410): list again."""


class WatchFailedError(Exception):
    """The API server ended the watch with an error other than 410."""


def followed(body: Body) -> bool:
    """Whether a pod is one the watch follows: it carries the origin run label."""
    return LABEL_ORIGIN_RUN_UID in ((body.get("metadata") or {}).get("labels") or {})


@dataclass
class PodCache:
    """The followed pods as the watch knows them (by name) and the resourceVersion to resume from. Pure."""

    pods: dict[str, Body]
    resource_version: str
    """Empty: nothing to resume from (the next connection lists first)."""

    @classmethod
    def listed(cls, items: Iterable[Body], resource_version: str) -> PodCache:
        """The cache of a list (of any pods: only the followed ones are kept) at its resourceVersion."""
        return cls({str(b["metadata"]["name"]): b for b in items if followed(b)}, resource_version)

    def apply(self, event: Mapping[str, Any]) -> bool:
        """One watch event; whether the pods changed. Raises GoneError on 410, WatchFailedError on another ERROR."""
        kind, body = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            if body.get("code") == 410:
                raise GoneError(str(body.get("reason") or "Expired"))
            raise WatchFailedError(f"{body.get('code')} {body.get('reason') or ''}".strip())
        metadata = body.get("metadata") or {}
        if metadata.get("resourceVersion"):
            self.resource_version = str(metadata["resourceVersion"])
        name = str(metadata.get("name") or "")
        if kind == "DELETED":
            return self.pods.pop(name, None) is not None
        if kind in ("ADDED", "MODIFIED") and name:
            changed = self.pods.get(name) != body
            self.pods[name] = body
            return changed
        return False  # BOOKMARK: only its resourceVersion counts


class PodSource(Protocol):
    """Where a watch reads an island's followed pods from."""

    def list(self) -> tuple[list[Body], str]:
        """The followed pods and the list's resourceVersion."""
        ...

    def watch(self, resource_version: str) -> Iterator[Mapping[str, Any]]:
        """The watch events after `resource_version`, until the API server ends the stream."""
        ...

    def interrupt(self) -> None:
        """End a watch stream being read on another thread (stop)."""
        ...

    def close(self) -> None: ...


class KubePodSource:
    """The island's API server, through its kubeconfig, confined to the island's namespace."""

    def __init__(self, kubeconfig: str, namespace: str) -> None:
        from kubernetes import client

        self.namespace = namespace
        self._api = client_for(kubeconfig, retries=0)
        self._core: Any = client.CoreV1Api(self._api)
        self._lock = threading.Lock()
        self._response: Any = None

    def list(self) -> tuple[list[Body], str]:
        response = self._core.list_namespaced_pod(
            self.namespace, label_selector=LABEL_ORIGIN_RUN_UID, _preload_content=False,
            _request_timeout=(CONNECT_TIMEOUT_SECONDS, LIST_TIMEOUT_SECONDS),
        )  # fmt: skip
        data = api_json.loads(response.data)
        return list(data["items"]), str((data.get("metadata") or {}).get("resourceVersion") or "")

    def watch(self, resource_version: str) -> Iterator[Mapping[str, Any]]:
        from kubernetes.watch import watch as kube_watch

        lines: Callable[[Any], Iterator[str]] = kube_watch.iter_resp_lines  # untyped
        response = self._core.list_namespaced_pod(
            self.namespace, label_selector=LABEL_ORIGIN_RUN_UID, watch=True, resource_version=resource_version,
            allow_watch_bookmarks=True, timeout_seconds=WATCH_SECONDS, _preload_content=False,
            _request_timeout=(CONNECT_TIMEOUT_SECONDS, READ_TIMEOUT_SECONDS),
        )  # fmt: skip
        with self._lock:
            self._response = response
        try:
            for line in lines(response):
                if line.strip():
                    yield api_json.loads(line)
        finally:
            with self._lock:
                self._response = None
            response.release_conn()

    def interrupt(self) -> None:
        with self._lock:
            response = self._response
        if response is not None:
            with contextlib.suppress(ValueError, OSError):
                response.shutdown()  # wakes the read blocked on another thread

    def close(self) -> None:
        self._api.close()


class PodWatch:
    """One island's pod watch: `publish(pods)` with every followed pod whenever they change."""

    def __init__(
        self,
        island: str,
        source: PodSource,
        publish: Callable[[list[Body]], None],
        *,
        seed: PodCache | None = None,
        version: str = "",
        namespace: str = "",
        backoff: Callable[[int], float] = backoff_seconds,
    ) -> None:
        self.island = island
        self.source = source
        self._publish_to = publish
        self.cache = seed
        self.version = version
        """The kubeconfig Secret's resourceVersion this watch connects with."""
        self.namespace = namespace
        self.backoff = backoff
        self.failures = 0
        """Failed connections in a row."""
        self._stopped = threading.Event()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._listed = False
        """Whether the last `follow` listed (rather than resumed)."""

    # --- one connection -------------------------------------------------------------------

    def follow(self) -> int:
        """List when there is nothing to resume from, then apply one watch stream until it ends;
        how many events it brought."""
        self._listed = False
        if self.cache is None or not self.cache.resource_version:
            items, version = self.source.list()
            self.cache, self._listed = PodCache.listed(items, version), True
            self._publish()
        events = 0
        for event in self.source.watch(self.cache.resource_version):
            if self._stopped.is_set():
                break
            changed = self.cache.apply(event)
            events += 1
            self.failures = 0
            if changed:
                self._publish()
        return events

    def attempt(self) -> float | None:
        """`follow` once, then how long to wait before the next (None: at once)."""
        try:
            events = self.follow()
        except Exception as error:
            gone = isinstance(error, GoneError) or getattr(error, "status", None) == 410
            if gone and not self._listed:  # a version just listed that is gone already counts as a failure
                if self.cache is not None:
                    self.cache.resource_version = ""  # its pods stay until the list replaces them
                log.info("island pod watch: its resourceVersion is gone, listing again", island=self.island)
                return None
            if self._stopped.is_set():
                return None
            self.failures += 1
            delay = self.backoff(self.failures)
            log.warning(
                "island pod watch failed, reconnecting", island=self.island, error=type(error).__name__,
                failures=self.failures, retry_seconds=delay,
            )  # fmt: skip
            return delay
        self.failures = 0
        return None if events else QUIET_RESUME_SECONDS

    def _publish(self) -> None:
        with self._lock:  # never after stop() returned
            if self._stopped.is_set() or self.cache is None:
                return
            self._publish_to(list(self.cache.pods.values()))

    # --- the thread -----------------------------------------------------------------------

    def run(self) -> None:
        try:
            while not self._stopped.is_set():
                delay = self.attempt()
                if delay is not None and self._wake.wait(delay):
                    self._wake.clear()
        finally:
            self.source.close()

    def start(self) -> PodWatch:
        """Publish the seed now (on the caller's thread), then watch on a daemon thread."""
        if self.cache is not None:
            self._publish()
        self._thread = threading.Thread(target=self.run, name=f"island-watch-{self.island}", daemon=True)
        self._thread.start()
        return self

    def nudge(self) -> None:
        """The island answered a probe: a watch waiting out its backoff reconnects now."""
        self._wake.set()

    def stop(self) -> None:
        """No publication after this returns; the thread ends at its next event or at once."""
        with self._lock:
            self._stopped.set()
        self._wake.set()
        self.source.interrupt()

    def join(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout)


class IslandWatches:
    """One pod watch per island reached, each publishing into `publish(island, pods)`."""

    def __init__(
        self,
        publish: Callable[[str, list[Body]], None],
        *,
        source: Callable[[str, str], PodSource] = KubePodSource,
        backoff: Callable[[int], float] = backoff_seconds,
    ) -> None:
        self._publish = publish
        self._source = source
        self._backoff = backoff
        self._lock = threading.Lock()
        self._watches: dict[str, PodWatch] = {}

    def ensure(self, island: str, *, namespace: str, kubeconfig: str, version: str, seed: PodCache | None) -> None:
        """A probe reached the island: watch it with this kubeconfig (a new watch, seeded with what
        the probe listed, when there is none or its kubeconfig or namespace changed), else nudge it."""
        with self._lock:
            current = self._watches.get(island)
            if current is not None and (current.version, current.namespace) == (version, namespace):
                current.nudge()
                return
            self._retire(island)
            watch = PodWatch(
                island, self._source(kubeconfig, namespace), lambda pods: self._publish(island, pods),
                seed=seed, version=version, namespace=namespace, backoff=self._backoff,
            )  # fmt: skip
            self._watches[island] = watch.start()
        log.info("watching the island's pods", island=island, namespace=namespace)

    def retire(self, island: str, *, unless_version: str) -> None:
        """Stop the island's watch unless it connects with the kubeconfig of `unless_version`."""
        with self._lock:
            current = self._watches.get(island)
            if current is not None and current.version != unless_version:
                self._retire(island)

    def keep_only(self, islands: Iterable[str]) -> None:
        """Stop the watches of islands whose ComputeIsland is gone."""
        kept = set(islands)
        with self._lock:
            for island in [name for name in self._watches if name not in kept]:
                self._retire(island)

    def stop_all(self) -> None:
        with self._lock:
            for island in list(self._watches):
                self._retire(island)

    def watching(self) -> dict[str, PodWatch]:
        with self._lock:
            return dict(self._watches)

    def _retire(self, island: str) -> None:
        watch = self._watches.pop(island, None)
        if watch is not None:
            watch.stop()
            log.info("island pod watch stopped", island=island)
