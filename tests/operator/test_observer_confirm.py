"""Before the decision calls a pod lost that a status names but the pod index does not show
(created a moment ago, the watch not there yet), the observer reads the run's pods from the
API server: in one list, however many pods the index trails by."""

from __future__ import annotations

from typing import Any

from atoll.api.status import DDMExpertStatus, DDMRunStatus
from atoll.operator.reconcile.observation import RunObject
from atoll.operator.reconcile.observer import Observer, RunStores
from atoll.operator.settings import OperatorSettings

from .situations import NAMESPACE, RUN, UID, pod, pod_body


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
    found = observer._confirm_missing(run, DDMRunStatus(), statuses, seen)
    assert sorted(view.expert for view in found) == list(range(1, 8))
    assert (api.lists, api.gets) == (1, 0)


def test_nothing_is_read_when_the_index_shows_every_pod() -> None:
    api = CountingApi([])
    observer = Observer(api, OperatorSettings(), RunStores())  # type: ignore[arg-type]
    statuses = {0: DDMExpertStatus(phase="Running", attempt=1, pod="r-expert-0-a1", node="a100-0")}
    run = RunObject(name=RUN, namespace=NAMESPACE, uid=UID)
    assert observer._confirm_missing(run, DDMRunStatus(), statuses, (pod("expert", 1, expert_index=0),)) == ()
    assert (api.lists, api.gets) == (0, 0)
