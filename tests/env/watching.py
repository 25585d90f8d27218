"""A minimal informer for the pod process runtime: list, then watch from the list's
resourceVersion, and list again whenever the watch expires (410 Gone) or the API server
goes away. Events go to a queue as plain dicts; a full list arrives as one "SYNC" event.
"""

from __future__ import annotations

import json
import queue
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

WATCH_TIMEOUT_S = 120
"""Server-side watch timeout; the watch is renewed from the last resourceVersion after it."""


class Informer:
    """Feeds (kind, event type, object) for one list function into a queue until stopped."""

    def __init__(
        self,
        kind: str,
        lister: Callable[..., Any],
        kwargs: dict[str, Any],
        events: queue.Queue[tuple[str, str, Any]],
        stopping: threading.Event,
    ) -> None:
        self.kind = kind
        self.lister = lister
        self.kwargs = kwargs
        self.events = events
        self.stopping = stopping

    def run(self) -> None:
        backoff = 0.2
        while not self.stopping.is_set():
            try:
                version = self._list()
                backoff = 0.2
                while not self.stopping.is_set():
                    version = self._watch(version)
            except Exception as error:  # an expired watch or an unreachable API server: list again
                if self.stopping.is_set():
                    return
                if getattr(error, "status", None) != 410:
                    print(f"{self.kind} watch: {type(error).__name__}: {error}"[:500], file=sys.stderr, flush=True)
                    time.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)

    def _list(self) -> str:
        response = self.lister(_preload_content=False, _request_timeout=30, **self.kwargs)
        body = json.loads(response.data)
        self.events.put((self.kind, "SYNC", body.get("items") or []))
        return str(body["metadata"]["resourceVersion"])

    def _watch(self, version: str) -> str:
        """One watch request; returns the resourceVersion to continue from."""
        from kubernetes import watch

        watch_module: Any = watch
        watcher = watch_module.Watch()
        stream = watcher.stream(
            self.lister,
            resource_version=version,
            timeout_seconds=WATCH_TIMEOUT_S,
            allow_watch_bookmarks=True,
            deserialize=False,
            _request_timeout=WATCH_TIMEOUT_S + 30,
            **self.kwargs,
        )
        for event in stream:
            obj = event.get("object") or {}
            version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
            if event["type"] in ("ADDED", "MODIFIED", "DELETED"):
                self.events.put((self.kind, event["type"], obj))
            if self.stopping.is_set():
                break
        return version
