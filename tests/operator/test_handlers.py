"""The kopf glue: its copy of the indexes (taken at once, it never changes with the indexes), kopf's settings,
its watch streams decoded by orjson, and the wake an island's pod watch sends a run's reconciler."""

from __future__ import annotations

import asyncio
import json
import threading

import kopf
import orjson
from kopf._cogs.clients import api as kopf_api

from atoll.operator.api_json import decode_watches_with_orjson
from atoll.operator.handlers import gpu_holders, island_waker, kopf_settings, snapshot
from atoll.operator.ledger import GpuHolder
from atoll.operator.settings import OperatorSettings

from .situations import FLEET, expert, pod


def test_a_snapshot_is_a_copy_of_the_indexes() -> None:
    pods = [pod("expert", 1, expert_index=0)]
    indexes = {
        "run_pods": {("ns", "r"): pods, ("ns", "other"): [pod("router", 1)]},
        "run_experts": {("ns", "r"): [expert(0)]},
        "gpu_nodes": {node.name: [node] for node in FLEET},
        "gpu_pods": {"ns/r-expert-0-a1": [GpuHolder("a100-0", 1)], "x/hog": [GpuHolder("h100-0", 8)]},
    }
    copied = snapshot(("ns", "r"), indexes)
    holders = gpu_holders(indexes["gpu_pods"])
    assert [p.name for p in copied.pods] == ["r-expert-0-a1"]
    assert [e.name for e in copied.experts] == ["r-expert-0"]
    assert {n.name for n in copied.nodes} == {"h100-0", "a100-0", "t4-0"}
    assert holders == {"ns/r-expert-0-a1": GpuHolder("a100-0", 1), "x/hog": GpuHolder("h100-0", 8)}
    # kopf keeps updating its indexes; the tick that took the copy does not see it.
    pods.append(pod("expert", 2, expert_index=0))
    indexes["gpu_pods"]["y/new"] = [GpuHolder("t4-0", 4)]
    del indexes["gpu_nodes"]["t4-0"]
    assert len(copied.pods) == 1
    assert "y/new" not in holders
    assert len(copied.nodes) == 3


def test_kopf_keeps_no_diff_base_for_the_kinds_it_only_indexes() -> None:
    """kopf deep-copies every watched object's essence on each event to find its changes; only
    DDMRuns have handlers that use it (the finalizer, the daemon), so pods, nodes and DDMExperts
    get an empty one, and DDMRuns the full one."""
    storage = kopf_settings(OperatorSettings()).persistence.diffbase_storage
    metadata = {"name": "x", "namespace": "ns", "labels": {"a": "b"}}
    for kind in ("Pod", "Node", "DDMExpert"):
        body = kopf.Body({"apiVersion": "v1", "kind": kind, "metadata": metadata, "spec": {"big": list(range(1000))}})
        assert storage.build(body=body) == {}, kind
    run = kopf.Body({"apiVersion": "atoll.dev/v1alpha1", "kind": "DDMRun", "metadata": metadata, "spec": {"k": 1}})
    assert storage.build(body=run) == {"metadata": {"labels": {"a": "b"}}, "spec": {"k": 1}}


def test_kopf_decodes_its_watch_streams_with_orjson() -> None:
    """kopf has no setting for its decoder: the operator hands the module that decodes its watch
    lines an orjson `loads`. A kopf that moved that code fails here (the operator would only warn)."""
    assert decode_watches_with_orjson()
    assert decode_watches_with_orjson()  # idempotent
    assert kopf_api.json.loads is orjson.loads
    assert json.loads is not orjson.loads  # the standard library's json is left alone
    line = json.dumps({"type": "MODIFIED", "object": {"kind": "Pod", "metadata": {"name": "p", "labels": {"é": "1"}}}})
    assert kopf_api.json.loads(line) == json.loads(line)
    assert kopf_api.json.dumps({"a": 1}) == json.dumps({"a": 1})


def test_an_island_pod_change_wakes_its_runs_reconciler_from_the_watchs_thread() -> None:
    async def scenario() -> tuple[bool, bool]:
        wakes = {("ns", "r"): asyncio.Event(), ("ns", "other"): asyncio.Event()}
        wake = island_waker(asyncio.get_running_loop(), wakes)
        thread = threading.Thread(target=lambda: (wake("ns", "r"), wake("ns", "gone")))
        thread.start()
        thread.join()
        await asyncio.wait_for(wakes[("ns", "r")].wait(), timeout=5)
        return wakes[("ns", "r")].is_set(), wakes[("ns", "other")].is_set()

    assert asyncio.run(scenario()) == (True, False), "only that run's reconciler; a run not here is ignored"
    loop = asyncio.new_event_loop()
    loop.close()
    island_waker(loop, {})("ns", "r")  # the operator stopping: no error on the watch's thread
