"""An island's pod watch on recorded events: it resumes from the last resourceVersion it saw
(bookmarks included), lists again on 410 Gone, backs off on other failures, publishes into the
registry the reconciler reads (waking the run), and the island monitor starts, keeps and stops
one watch per island. The island's API server is a recorded stream here; the test against a
real one is tests/operator/test_island_watch_cluster.py."""

from __future__ import annotations

import copy
import threading
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

import pytest

from atoll.api.island import ComputeIslandSpec
from atoll.operator.islands.dispatch import LABEL_ORIGIN_NAMESPACE, LABEL_ORIGIN_OWNER_UID, LABEL_ORIGIN_RUN_UID
from atoll.operator.islands.monitor import IslandMonitor
from atoll.operator.islands.registry import IslandRegistry
from atoll.operator.islands.remote import Islands
from atoll.operator.islands.status import Outcome, Reached
from atoll.operator.islands.watch import (
    QUIET_RESUME_SECONDS,
    GoneError,
    IslandWatches,
    PodCache,
    PodWatch,
    WatchFailedError,
)
from tests.operator.test_island_rotation import NAMESPACE, Home

SPEC = ComputeIslandSpec.model_validate({"kubeconfigSecretRef": {"name": "s"}, "namespace": "atoll"})


def pod(name: str, version: str, phase: str = "Pending", *, run: str = "r", origin: bool = True) -> dict[str, Any]:
    labels = {"atoll.dev/run": run, "atoll.dev/stage": "expert", "atoll.dev/expert": "0", "atoll.dev/attempt": "1"}
    if origin:
        labels |= {LABEL_ORIGIN_NAMESPACE: "ns", LABEL_ORIGIN_RUN_UID: f"{run}-uid", LABEL_ORIGIN_OWNER_UID: "x"}
    return {
        "metadata": {"name": name, "namespace": "atoll", "labels": labels, "resourceVersion": version},
        "spec": {"nodeName": "t4-0", "containers": [{}]},
        "status": {"phase": phase},
    }


def event(kind: str, body: Mapping[str, Any]) -> dict[str, Any]:
    return {"type": kind, "object": dict(body)}


def bookmark(version: str) -> dict[str, Any]:
    return {"type": "BOOKMARK", "object": {"kind": "Pod", "metadata": {"resourceVersion": version}}}


GONE = {"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired", "message": "too old"}}


class Recorded:
    """An island's API server as a list answer and recorded watch streams, one per connection."""

    def __init__(self, listed: list[dict[str, Any]], version: str, streams: list[list[Any]]) -> None:
        self.listed, self.version, self.streams = listed, version, streams
        self.lists = 0
        self.watched_from: list[str] = []
        self.interrupted = self.closed = False

    def list(self) -> tuple[list[Mapping[str, Any]], str]:
        self.lists += 1
        return list(self.listed), self.version

    def watch(self, resource_version: str) -> Iterator[Mapping[str, Any]]:
        self.watched_from.append(resource_version)
        for item in self.streams.pop(0):
            if isinstance(item, Exception):
                raise item
            yield item

    def interrupt(self) -> None:
        self.interrupted = True

    def close(self) -> None:
        self.closed = True


class Blocking(Recorded):
    """An island whose watch streams stay open, with no event, until interrupted."""

    def __init__(self) -> None:
        super().__init__([], "0", [])
        self.ended = threading.Event()

    def watch(self, resource_version: str) -> Iterator[Mapping[str, Any]]:
        self.watched_from.append(resource_version)
        self.ended.wait(30)
        yield from ()

    def interrupt(self) -> None:
        super().interrupt()
        self.ended.set()


class Published:
    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def __call__(self, pods: list[Mapping[str, Any]]) -> None:
        self.calls.append(sorted(f"{p['metadata']['name']}:{p['status']['phase']}" for p in pods))


def test_the_cache_follows_events_and_keeps_only_pods_with_the_origin_label() -> None:
    cache = PodCache.listed([pod("a", "10"), pod("theirs", "10", origin=False)], "12")
    assert (list(cache.pods), cache.resource_version) == (["a"], "12")
    assert cache.apply(event("MODIFIED", pod("a", "13", "Running")))
    assert not cache.apply(event("MODIFIED", pod("a", "13", "Running"))), "the same object again"
    assert cache.apply(event("ADDED", pod("b", "14")))
    assert not cache.apply(bookmark("20"))
    assert cache.resource_version == "20", "a bookmark moves the version to resume from"
    assert cache.apply(event("DELETED", pod("a", "21", "Running")))
    assert (list(cache.pods), cache.resource_version) == (["b"], "21")
    with pytest.raises(GoneError):
        cache.apply(GONE)
    with pytest.raises(WatchFailedError, match="500"):
        cache.apply({"type": "ERROR", "object": {"code": 500, "reason": "InternalError"}})


def test_a_stream_that_ends_is_resumed_from_the_last_version_seen_without_listing() -> None:
    source = Recorded([], "0", [[event("MODIFIED", pod("a", "11", "Running")), bookmark("15")], []])
    published = Published()
    watch = PodWatch("lab", source, published, seed=PodCache.listed([pod("a", "9")], "10"))
    assert watch.attempt() is None
    assert watch.attempt() == QUIET_RESUME_SECONDS, "a stream with no event at all: never a tight loop"
    assert source.watched_from == ["10", "15"]
    assert source.lists == 0, "a seeded watch never lists while it can resume"
    assert published.calls == [["a:Running"]]


def test_410_gone_lists_again_and_the_list_replaces_every_pod() -> None:
    streams: list[list[Any]] = [
        [event("ADDED", pod("b", "11", "Running")), GONE],
        [event("MODIFIED", pod("c", "31", "Running"))],
    ]
    source = Recorded([pod("c", "29"), pod("d", "30", "Succeeded")], "30", streams)
    published = Published()
    watch = PodWatch("lab", source, published, seed=PodCache.listed([pod("a", "9")], "10"))
    assert watch.attempt() is None, "no backoff: list again at once"
    assert watch.cache is not None
    assert set(watch.cache.pods) == {"a", "b"}, "the last known pods stay until the list replaces them"
    assert watch.attempt() is None
    assert source.lists == 1
    assert source.watched_from == ["10", "30"], "the new watch starts at the list's version"
    assert published.calls == [["a:Pending", "b:Running"], ["c:Pending", "d:Succeeded"], ["c:Running", "d:Succeeded"]]


class ExpiredError(Exception):
    status = 410


class RefusedError(OSError):
    pass


def test_a_410_answer_lists_again_and_other_failures_back_off_until_a_stream_works() -> None:
    source = Recorded([pod("a", "40")], "40", [[ExpiredError()], [RefusedError()], [RefusedError()], [bookmark("41")]])
    watch = PodWatch("lab", source, Published(), seed=PodCache.listed([], "5"), backoff=lambda n: 5.0 * 2 ** (n - 1))
    assert watch.attempt() is None, "410 as the answer to the watch request: list again"
    assert watch.attempt() == 5.0, "the island refuses the connection"
    assert watch.attempt() == 10.0, "the island's backoff, failure after failure"
    assert watch.attempt() is None
    assert watch.failures == 0
    assert source.watched_from == ["5", "40", "40", "40"], "a failed connection resumes from where it was"
    assert source.lists == 1


def test_a_version_gone_right_after_its_list_backs_off_instead_of_listing_in_a_loop() -> None:
    source = Recorded([pod("a", "50")], "50", [[GONE], [GONE], [GONE]])
    watch = PodWatch("lab", source, Published(), backoff=lambda n: 7.0 * n)
    assert watch.attempt() == 7.0, "listed, and that version gone at once: a failure"
    assert watch.attempt() is None, "resumed after the backoff, gone: list again at once"
    assert watch.attempt() == 14.0
    assert (source.lists, source.watched_from) == (2, ["50", "50", "50"])


def test_nothing_is_published_after_stop_and_the_thread_ends() -> None:
    source = Recorded([], "0", [[RefusedError()]] * 100)
    published = Published()
    watch = PodWatch("lab", source, published, seed=PodCache.listed([pod("a", "9")], "10"), backoff=lambda n: 60.0)
    watch.start()
    assert published.calls == [["a:Pending"]], "the seed is published at once, on the caller's thread"
    watch.stop()
    watch.join(timeout=10)
    assert source.closed
    assert source.interrupted
    assert watch.cache is not None
    watch.cache.pods["b"] = pod("b", "11")
    watch._publish()
    assert published.calls == [["a:Pending"]]


def test_the_registry_takes_the_watchs_pods_over_the_probes_and_tells_which_runs_changed() -> None:
    registry = IslandRegistry(connect=lambda text: None)
    woken: list[tuple[str, str]] = []
    registry.on_pod_change = lambda namespace, run: woken.append((namespace, run))
    registry.watched("lab", [pod("x", "1")])
    assert registry.pods_of("ns", "r") == (), "an island not reached yet is not known"
    registry.reached("lab", SPEC, kubeconfig="k", version="1", nodes=[], pods=[pod("r-0", "5")], accepts=True)
    registry.watched("lab", [pod("r-0", "6", "Running"), pod("q-0", "7", run="q")])
    assert [(p.name, p.phase) for p in registry.pods_of("ns", "r")] == [("r-0", "Running")]
    assert sorted(woken) == [("ns", "q"), ("ns", "r")]
    registry.reached("lab", SPEC, kubeconfig="k", version="1", nodes=[], pods=[pod("r-0", "5")], accepts=True)
    assert [p.phase for p in registry.pods_of("ns", "r")] == ["Running"], "an older probe list does not win"
    woken.clear()
    registry.watched("lab", [pod("r-0", "6", "Running"), pod("q-0", "7", run="q")])
    assert woken == [], "nothing changed"
    registry.watched("lab", [pod("q-0", "7", run="q")])
    assert woken == [("ns", "r")]
    assert registry.pods_of("ns", "r") == ()


class Island:
    """A probe that always reaches the island, listing `pods` at version `version`."""

    def __init__(self) -> None:
        self.pods: list[dict[str, Any]] = [pod("r-0", "3")]
        self.version = "4"

    def probe(self, kubeconfig: str, namespace: str) -> Outcome:
        return Reached(version="v1.36.3", nodes=(), used_gpus={}, pods=tuple(self.pods), pods_version=self.version)


def test_the_monitor_seeds_one_watch_per_island_and_replaces_it_when_the_kubeconfig_rotates() -> None:
    home, island = Home(), Island()
    sources: list[tuple[str, Blocking]] = []

    def source(kubeconfig: str, namespace: str) -> Blocking:
        assert namespace == "atoll"
        sources.append((kubeconfig, Blocking()))
        return sources[-1][1]

    registry = IslandRegistry(connect=lambda text: text)
    watches = IslandWatches(registry.watched, source=source)
    monitor = IslandMonitor(
        None, NAMESPACE, probe=island.probe, islands=Islands(registry, kube=None),  # type: ignore[arg-type]
        watches=watches,
    )  # fmt: skip
    monitor.custom, monitor.core = home, home
    try:
        monitor.tick(datetime(2026, 12, 1, tzinfo=UTC))
        first = watches.watching()["lab"]
        assert first.cache is not None
        assert (first.version, first.cache.resource_version) == ("1", "4"), "seeded with the probe's list"
        assert [p.name for p in registry.pods_of("ns", "r")] == ["r-0"]
        monitor.tick(datetime(2026, 12, 1, 0, 1, tzinfo=UTC))
        assert watches.watching()["lab"] is first, "the same kubeconfig: the same watch"
        home.rotate("second")
        monitor.tick(datetime(2026, 12, 1, 0, 2, tzinfo=UTC))
        assert watches.watching()["lab"] is not first
        assert [k for k, _ in sources] == ["first", "second"]
        assert sources[0][1].interrupted, "the old credentials' watch stopped"
        home.island = copy.deepcopy(home.island)
        home.list_cluster_custom_object = lambda *args: {"items": []}  # type: ignore[method-assign]
        monitor.tick(datetime(2026, 12, 1, 0, 3, tzinfo=UTC))
        assert watches.watching() == {}, "the island removed: its watch stopped"
    finally:
        monitor.stop()
