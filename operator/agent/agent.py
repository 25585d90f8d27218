"""The agent loop: watch XID events, read the GPUs every interval, publish the summary on the Node.

One `Agent` per node (a DaemonSet pod). It publishes at every interval (the heartbeat the
planner checks for staleness) and at once when a critical XID arrives. Publishing goes
through an injected callable; `NodePublisher` patches the Node's annotations through the
API server and is the only place here that talks to Kubernetes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from atoll.errors import AtollError
from atoll.log import get_logger
from atoll.operator.agent.health import Watch, node_annotations
from atoll.operator.agent.nvml import Nvml, XidEvent
from atoll.operator.placement import labels

log = get_logger(__name__)

DEFAULT_INTERVAL_SECONDS = 30.0
"""Between two reports; the planner treats a node as stale after 180 s (six missed reports)."""
EVENT_SLICE_MS = 1000
"""Longest single wait for NVML events, so a stop request is seen within a second."""


class AgentError(AtollError):
    """The agent cannot do its job (node missing, not allowed to patch it)."""


class Agent:
    """Reads NVML, remembers XIDs, publishes the Node annotations."""

    def __init__(
        self,
        nvml: Nvml,
        publish: Callable[[dict[str, str]], None],
        *,
        interval_seconds: float = DEFAULT_INTERVAL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.nvml = nvml
        self.publish = publish
        self.interval_seconds = interval_seconds
        self.clock = clock
        self.wall_clock = wall_clock
        self.watch = Watch(unwatched=dict(nvml.unwatched))
        self.next_report = float("-inf")
        self.last: dict[str, str] | None = None

    def record(self, events: list[XidEvent]) -> bool:
        """Remember critical XIDs (sticky); True when any arrived."""
        if not events:
            return False
        xids = {uuid: list(values) for uuid, values in self.watch.xids.items()}
        suspect = self.watch.suspect
        for event in events:
            if event.xid is None:
                suspect = "nvml event wait failed"
            elif event.uuid is None or event.uuid not in self.nvml.uuids:
                suspect = f"xid {event.xid} on an unidentified GPU"
            else:
                xids.setdefault(event.uuid, []).append(event.xid)
        self.watch = replace(self.watch, xids=xids, suspect=suspect)
        return True

    def report(self) -> dict[str, str]:
        """Read every GPU and publish; returns what was published."""
        summary = node_annotations(self.nvml.read(), self.watch, self.wall_clock())
        self.next_report = self.clock() + self.interval_seconds  # also when publishing fails: retry then
        self.publish(summary)
        if self.last is None or self.last.get(labels.HEALTH) != summary[labels.HEALTH]:
            log.info("gpu health", health=summary[labels.HEALTH], free_mib=summary[labels.FREE_MIB])
        self.last = summary
        return summary

    def step(self, wait_ms: int = EVENT_SLICE_MS) -> dict[str, str] | None:
        """Wait up to `wait_ms` for XIDs; report when one arrived or the interval has passed."""
        remaining = self.next_report - self.clock()
        timeout_ms = 0 if remaining <= 0 else min(wait_ms, int(remaining * 1000))
        arrived = self.record(self.nvml.wait_events(timeout_ms))
        if arrived or self.clock() >= self.next_report:
            return self.report()
        return None

    def run(self, stop: threading.Event, *, once: bool = False) -> None:
        """Report until `stop` is set (once: a single report). Transient API errors are retried."""
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        while not stop.is_set():
            try:
                if once:  # events already queued count, then one report
                    self.record(self.nvml.wait_events(0))
                    self.report()
                else:
                    self.step()
            except (ApiException, HTTPError, OSError) as error:
                # The API server being away for a while must not kill a DaemonSet pod.
                if once:
                    raise
                log.warning("publishing failed; retrying at the next interval", error=str(error))
            if once:
                return


class NodePublisher:
    """Merges the annotations into one Node through the API server (a JSON merge patch)."""

    def __init__(self, node: str, api: Any | None = None) -> None:
        self.node = node
        self.api = api

    def __call__(self, summary: Mapping[str, str]) -> None:
        from kubernetes.client.exceptions import ApiException

        api = self.api = self.api or core_v1()
        try:
            api.patch_node(self.node, {"metadata": {"annotations": dict(summary)}})
        except ApiException as error:
            if error.status == 404:
                raise AgentError(
                    f"node {self.node} does not exist: set --node (or NODE_NAME from spec.nodeName) to this node's name"
                ) from None
            if error.status in (401, 403):
                raise AgentError(
                    f"not allowed to patch node {self.node} ({error.status} {error.reason}): the agent's"
                    " ServiceAccount needs `patch` on `nodes`"
                ) from None
            raise


def core_v1() -> Any:
    """A CoreV1Api from the in-cluster service account, else the current kubeconfig."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config()  # type: ignore[no-untyped-call]
    return client.CoreV1Api()
