"""The act step's concurrency: what one run's writes may wait for while other runs act.

A fake API (threads blocked on purpose) stands in for the API server's latency; what is
tested is the executor's own queueing, which a real API server would only make slower.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from kubernetes.client.exceptions import ApiException

from atoll.api.status import DDMExpertStatus, DDMRunStatus
from atoll.operator.ledger import GpuLedger
from atoll.operator.reconcile.actions import CreateExpert, CreatePod, Decision, PatchExpertStatus
from atoll.operator.reconcile.executor import Executor
from atoll.operator.reconcile.observation import RunMemory, RunObject
from atoll.operator.reconcile.observer import RunStores

WAIT = 10.0


class SlowApi:
    """Pod and DDMExpert creations block until released; status patches answer at once
    (unless `patching` is set)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.creating = threading.Semaphore(0)
        self.patched: list[str] = []
        self.experts: list[str] = []
        self.refused: set[str] = set()
        """DDMExperts whose status patch the API server refuses."""
        self.patching: threading.Semaphore | None = None
        """Set: status patches block until released too."""

    def create_pod(self, manifest: dict[str, Any]) -> bool:
        self.creating.release()
        self.release.wait(WAIT * 3)
        return True

    def create_expert(self, manifest: dict[str, Any]) -> bool:
        self.experts.append(manifest["metadata"]["name"])
        self.creating.release()
        self.release.wait(WAIT * 3)
        return True

    def patch_expert_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        if name in self.refused:
            raise ApiException(status=500, reason="Internal Server Error")
        if self.patching is not None:
            self.patching.release()
            assert self.release.wait(WAIT)
        self.patched.append(name)


def _run(name: str) -> RunObject:
    return RunObject(name=name, namespace="ns", uid=f"uid-{name}")


def _decision(*actions: Any) -> Decision:
    return Decision(actions=tuple(actions), status=DDMRunStatus(), events=(), memory=RunMemory())


def _pod(run: str, k: int) -> CreatePod:
    manifest = {"metadata": {"namespace": "ns", "name": f"{run}-expert-{k}-a1"}, "spec": {}}
    return CreatePod(stage=f"expert-{k}", manifest=manifest)


def _patch(run: str, k: int) -> PatchExpertStatus:
    return PatchExpertStatus(expert=k, name=f"{run}-expert-{k}", status=DDMExpertStatus(phase="Running"))


def test_a_runs_status_writes_do_not_wait_for_another_runs_pod_creations() -> None:
    api = SlowApi()
    executor = Executor(api, GpuLedger(), RunStores(), parallel=2)  # type: ignore[arg-type]
    with ThreadPoolExecutor(2) as ticks:
        placing = ticks.submit(executor.apply, _run("a"), _decision(*(_pod("a", k) for k in range(6))))
        for _ in range(2):  # every creation thread is busy with run a's pods, four more queued
            assert api.creating.acquire(timeout=WAIT)
        watching = ticks.submit(executor.apply, _run("b"), _decision(_patch("b", 0), _patch("b", 1)))
        try:
            applied = watching.result(timeout=WAIT)
        finally:
            api.release.set()
        assert applied.errors == []
        assert executor.status_writer.wait_idle(WAIT)
        assert executor.status_writer.failures(_run("b").key) == set()
        assert sorted(api.patched) == ["b-expert-0", "b-expert-1"]
        assert not placing.result(timeout=WAIT).errors


def test_a_placing_ticks_statuses_go_out_while_its_pods_are_created() -> None:
    api = SlowApi()
    executor = Executor(api, GpuLedger(), RunStores(), parallel=2)  # type: ignore[arg-type]
    with ThreadPoolExecutor(1) as ticks:
        placing = ticks.submit(executor.apply, _run("a"), _decision(_pod("a", 0), _pod("a", 1), _patch("a", 0)))
        try:
            for _ in range(2):  # both pods in flight
                assert api.creating.acquire(timeout=WAIT)
            deadline = time.monotonic() + WAIT
            while not api.patched and time.monotonic() < deadline:
                time.sleep(0.01)
            assert api.patched == ["a-expert-0"], "the status waited for the pods"
            assert not placing.done()
        finally:
            api.release.set()
        applied = placing.result(timeout=WAIT)
    assert applied.errors == []
    assert applied.failed_experts == set()


def test_a_runs_ddmexperts_are_created_side_by_side() -> None:
    api = SlowApi()
    executor = Executor(api, GpuLedger(), RunStores(), parallel=4)  # type: ignore[arg-type]
    experts = [CreateExpert({"metadata": {"namespace": "ns", "name": f"r-expert-{k}"}}, k) for k in range(4)]
    with ThreadPoolExecutor(1) as ticks:
        done = ticks.submit(executor.apply, _run("r"), _decision(*experts))
        started = time.monotonic()
        try:
            for _ in range(4):  # all four are in flight at once, none waits for another to return
                assert api.creating.acquire(timeout=WAIT)
        finally:
            api.release.set()
        assert not done.result(timeout=WAIT * 4).errors
    assert time.monotonic() - started < WAIT
    assert sorted(api.experts) == [f"r-expert-{k}" for k in range(4)]


def test_the_act_steps_parts_are_timed() -> None:
    api = SlowApi()
    api.release.set()
    parts: list[str] = []
    executor = Executor(api, GpuLedger(), RunStores(), timer=lambda part, _: parts.append(part))  # type: ignore[arg-type]
    executor.apply(_run("r"), _decision(_pod("r", 0), _patch("r", 0)))
    assert executor.status_writer.wait_idle(WAIT)
    assert sorted(parts) == ["act-pods", "status-write"]


def test_a_tick_does_not_wait_for_its_status_writes_and_the_next_one_hears_of_a_failed_one() -> None:
    api = SlowApi()
    api.patching = threading.Semaphore(0)
    api.refused = {"r-expert-1"}
    executor = Executor(api, GpuLedger(), RunStores(), parallel=2)  # type: ignore[arg-type]
    try:
        applied = executor.apply(_run("r"), _decision(_patch("r", 0), _patch("r", 1)))
        assert applied.failed_experts == set(), "returned while the writes are on their way"
        assert api.patching.acquire(timeout=WAIT)
        assert api.patched == []
    finally:
        api.release.set()
    assert executor.status_writer.wait_idle(WAIT)
    assert api.patched == ["r-expert-0"]
    assert executor.apply(_run("r"), _decision()).failed_experts == {1}, "decided again, written again"
    assert executor.apply(_run("r"), _decision()).failed_experts == set()
    assert executor.apply(_run("other"), _decision(_patch("other", 1))).failed_experts == set()
