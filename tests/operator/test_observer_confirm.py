"""Before the decision calls a pod lost that a status names but the pod index does not show
(created a moment ago, the watch not there yet), the observer reads the run's pods from the
API server: in one list, however many pods the index trails by. While the index trails, the
run's new pods it shows not started yet are read too."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from atoll.api.status import DDMExpertStatus, DDMRunStatus, PodUsageStatus, UsageStatus
from atoll.operator.reconcile.observation import RunObject
from atoll.operator.reconcile.observer import Observer
from atoll.operator.reconcile.store_reader import RunStores
from atoll.operator.settings import OperatorSettings

from .situations import NAMESPACE, RUN, T0, UID, pod, pod_body

AT: dict[str, Any] = {"now": T0, "monotonic": 1000.0}
"""When the observer looks (the pods of situations.py were created 10 min before T0)."""


class CountingApi:
    """The run's pods as the API server has them; counts the reads."""

    def __init__(self, bodies: list[dict[str, Any]]) -> None:
        self.bodies = bodies
        self.lists = 0
        self.gets = 0

    def run_pods(self, namespace: str, run: str) -> list[dict[str, Any]]:
        self.lists += 1
        return self.bodies

    def get_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.gets += 1
        return next((b for b in self.bodies if b["metadata"]["name"] == name), None)


def test_pods_the_index_trails_are_read_in_one_list() -> None:
    created = [pod_body("expert", 1, "Pending", expert_index=k, node=None) for k in range(8)]
    api = CountingApi(created)
    observer = Observer(api, OperatorSettings(), RunStores())  # type: ignore[arg-type]
    statuses = {
        k: DDMExpertStatus(phase="Pending", attempt=1, pod=created[k]["metadata"]["name"], node="a100-0")
        for k in range(8)
    }
    seen = (pod("expert", 1, expert_index=0),)  # the index shows one of them so far
    run = RunObject(name=RUN, namespace=NAMESPACE, uid=UID)
    found = observer._confirm_missing(run, DDMRunStatus(), statuses, seen, **AT)
    assert sorted(view.expert for view in found) == list(range(1, 8))
    assert (api.lists, api.gets) == (1, 0)


def test_nothing_is_read_when_the_index_shows_every_pod() -> None:
    api = CountingApi([])
    observer = Observer(api, OperatorSettings(), RunStores())  # type: ignore[arg-type]
    statuses = {0: DDMExpertStatus(phase="Running", attempt=1, pod="r-expert-0-a1", node="a100-0")}
    run = RunObject(name=RUN, namespace=NAMESPACE, uid=UID)
    assert observer._confirm_missing(run, DDMRunStatus(), statuses, (pod("expert", 1, expert_index=0),), **AT) == ()
    assert (api.lists, api.gets) == (0, 0)


def test_a_pod_the_usage_holds_is_read_when_the_index_misses_it() -> None:
    # One tick's view of the run's pods missed a pod that was Running: the usage counted its
    # attempt ended (never counted again) and posted CapacityReleased while it ran on.
    running = pod_body("expert", 1, "Running", expert_index=3, node="a100-0")
    api = CountingApi([running])
    observer = Observer(api, OperatorSettings(), RunStores())  # type: ignore[arg-type]
    name = running["metadata"]["name"]
    held = PodUsageStatus(
        pod=name, stage="expert-3", attempt=1, node="a100-0", gpus=1, started_at=datetime(2026, 3, 1, tzinfo=UTC)
    )
    previous = DDMRunStatus(usage=UsageStatus(holding=[held]))
    run = RunObject(name=RUN, namespace=NAMESPACE, uid=UID)
    found = observer._confirm_missing(run, previous, {}, (), **AT)
    assert [(view.name, view.phase) for view in found] == [(name, "Running")]
    # Gone from the API server too: nothing is found, and the usage may count it ended.
    api.bodies.clear()
    assert observer._confirm_missing(run, previous, {}, (), **AT) == ()
    assert api.lists == 2
    # Shown by the index: nothing is read.
    assert observer._confirm_missing(run, previous, {}, (pod("expert", 1, "Running", expert_index=3),), **AT) == ()
    assert api.lists == 2


def test_a_pod_read_from_the_api_server_is_not_shown_less_far_along_by_a_trailing_index() -> None:
    # Under load the pod watch trails: a tick read a new pod Running from the API server; the
    # next tick's index showed it just created. It was taken back to Pending (the expert's
    # status written Pending, then Running again) and its GPUs taken for given back.
    running = pod("expert", 1, "Running", expert_index=3, node="a100-0")
    created = pod("expert", 1, "Pending", expert_index=3, node=None)
    other = pod("expert", 1, "Pending", expert_index=4, node=None)
    observer = Observer(CountingApi([]), OperatorSettings(), RunStores())  # type: ignore[arg-type]
    run = RunObject(name=RUN, namespace=NAMESPACE, uid=UID)
    assert observer._not_behind(run, (other,), (running,)) == (other, running), "read: the index lacks it"
    assert observer._not_behind(run, (created, other), ()) == (running, other), "the index trails"
    bound = pod("expert", 1, "Pending", expert_index=3, node="a100-0")
    assert observer._not_behind(run, (bound, other), ()) == (running, other), "still behind"
    later = pod("expert", 1, "Succeeded", expert_index=3, node="a100-0")
    assert observer._not_behind(run, (later, other), ()) == (later, other), "caught up: the index's view"
    # Once caught up, the API server's old view is forgotten: the index alone counts again.
    assert observer._not_behind(run, (created, other), ()) == (created, other)


def test_while_the_index_trails_the_runs_new_pods_not_started_are_read_too() -> None:
    # At 16 runs x 64 experts the pod watch trailed by up to 15 s: the index showed a new pod
    # just created while it ran, and its DDMExpert showed Running that much later.
    created = "2026-03-01T11:59:50Z"  # 10 s before T0
    bodies = [pod_body("expert", 1, "Running", expert_index=k, created_at=created) for k in range(3)]
    api = CountingApi(bodies)
    observer = Observer(api, OperatorSettings(), RunStores())  # type: ignore[arg-type]
    run = RunObject(name=RUN, namespace=NAMESPACE, uid=UID)
    shown = tuple(pod("expert", 1, "Pending", expert_index=k, node=None, created_at=created) for k in range(2))
    statuses = {
        k: DDMExpertStatus(phase="Pending", attempt=1, pod=bodies[k]["metadata"]["name"], node="a100-0")
        for k in range(3)
    }
    # Expert 2's pod is not in the index: the index trails; experts 0 and 1 are read as well.
    found = observer._confirm_missing(run, DDMRunStatus(), statuses, shown, **AT)
    assert sorted((view.expert, view.phase) for view in found) == [(0, "Running"), (1, "Running"), (2, "Running")]
    assert api.lists == 1
    # The next tick: the index shows all three, 0 and 1 still not started: read again.
    shown += (pod("expert", 1, "Pending", expert_index=2, node=None, created_at=created),)
    later = {"now": T0 + timedelta(seconds=2), "monotonic": 1002.0}
    assert len(observer._confirm_missing(run, DDMRunStatus(), statuses, shown, **later)) == 3
    assert api.lists == 2
    # Read Running already: the index's trailing view stands aside, nothing more to read.
    observer._not_behind(run, shown, found)
    assert observer._confirm_missing(run, DDMRunStatus(), statuses, shown, **later) == ()
    assert api.lists == 2


def test_pods_not_started_are_left_to_the_index_when_it_keeps_up_or_they_are_old() -> None:
    created = "2026-03-01T11:59:50Z"
    api = CountingApi([pod_body("expert", 1, "Running", expert_index=0, created_at=created)])
    observer = Observer(api, OperatorSettings(), RunStores())  # type: ignore[arg-type]
    run = RunObject(name=RUN, namespace=NAMESPACE, uid=UID)
    shown = (pod("expert", 1, "Pending", expert_index=0, node=None, created_at=created),)
    status = {0: DDMExpertStatus(phase="Pending", attempt=1, pod=shown[0].name, node="a100-0")}
    assert observer._confirm_missing(run, DDMRunStatus(), status, shown, **AT) == (), "the index never trailed"
    assert api.lists == 0
    lacking = {1: DDMExpertStatus(phase="Pending", attempt=1, pod="r-expert-1-a1", node="a100-0")}
    observer._confirm_missing(run, DDMRunStatus(), lacking, shown, **AT)  # the index lacks a pod now
    assert api.lists == 1
    old = {"now": T0 + timedelta(seconds=25), "monotonic": 1025.0}  # the pod is 35 s old
    assert observer._confirm_missing(run, DDMRunStatus(), status, shown, **old) == ()
    young = pod("expert", 1, "Pending", expert_index=0, node=None, created_at="2026-03-01T12:00:30Z")
    quiet = {"now": T0 + timedelta(seconds=40), "monotonic": 1040.0}  # 40 s since the index trailed
    assert observer._confirm_missing(run, DDMRunStatus(), status, (young,), **quiet) == ()
    assert api.lists == 1
