"""Leader election on the real API server: one holder of the Lease at a time, a standby that
takes over after a crash only once the crashed leader's fence has closed, an immediate
hand-over on a clean stop, and writes refused by the fence while not leading.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from atoll.operator.leader import FencedKube, LeaderElector, LeaseTimings
from tests.env import kube
from tests.env.cluster import ControlPlane

pytestmark = [pytest.mark.cluster]

FAST = LeaseTimings(lease_seconds=4.0, renew_seconds=2.5, retry_seconds=0.5)


def elector(control_plane: ControlPlane, namespace: str, identity: str) -> LeaderElector:
    return LeaderElector(control_plane.api_client(), namespace=namespace, identity=identity, timings=FAST)


def lease_holder(control_plane: ControlPlane, namespace: str) -> str | None:
    lease = control_plane.kubectl_json("get", "lease", "atoll-operator", "-n", namespace)
    holder: str | None = lease["spec"].get("holderIdentity")
    return holder


def crash(candidate: LeaderElector) -> float:
    """Stop renewing without releasing (a SIGKILLed replica); returns when its fence closes."""
    candidate._stopping.set()
    assert candidate._thread is not None
    candidate._thread.join(timeout=10)
    closes: float = candidate._valid_until
    return closes


def test_one_leader_and_a_fenced_takeover(control_plane: ControlPlane, namespace: str) -> None:
    first = elector(control_plane, namespace, "replica-a").start()
    kube.wait_for(first.acting, timeout=20, what="the first replica leads")
    second = elector(control_plane, namespace, "replica-b").start()
    try:
        deadline = time.monotonic() + 3 * FAST.lease_seconds
        while time.monotonic() < deadline:  # the leader renews: the standby never acts
            assert first.acting()
            assert not second.acting()
            time.sleep(0.2)
        assert lease_holder(control_plane, namespace) == "replica-a"
        assert (first.term, second.term) == (1, 0)

        # The leader stops renewing (crashed, partitioned): the standby waits out the Lease.
        fence_closed = crash(first)
        kube.wait_for(second.acting, timeout=FAST.lease_seconds * 3, what="the standby takes over")
        took_over = time.monotonic()
        assert took_over >= fence_closed, "the standby acted while the old leader could still act"
        assert not first.acting()
        assert lease_holder(control_plane, namespace) == "replica-b"
        lease = control_plane.kubectl_json("get", "lease", "atoll-operator", "-n", namespace)
        assert lease["spec"]["leaseTransitions"] == 1

        # A clean stop hands the Lease over at once (well before it would expire).
        third = elector(control_plane, namespace, "replica-c").start()
        try:
            time.sleep(1)
            assert not third.acting()
            stopped = time.monotonic()
            second.stop(release=True)
            assert not second.acting()
            kube.wait_for(third.acting, timeout=FAST.lease_seconds, what="the hand-over")
            assert time.monotonic() - stopped < FAST.lease_seconds * 0.75
        finally:
            third.stop()
    finally:
        second.stop()
        first.stop(release=False)


def test_the_fence_refuses_writes_while_not_leading(control_plane: ControlPlane, namespace: str, core_v1: Any) -> None:
    holder = elector(control_plane, namespace, "holder").start()
    kube.wait_for(holder.acting, timeout=20, what="a leader")
    standby = elector(control_plane, namespace, "standby").start()  # only once the Lease is held
    try:
        from kubernetes.client.exceptions import ApiException

        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "fenced", "namespace": namespace},
            "spec": {"containers": [{"name": "c", "image": "none", "command": ["true"]}]},
        }
        with pytest.raises(ApiException, match="not the leader"):
            FencedKube(control_plane.api_client(), standby).create_pod(pod)
        with pytest.raises(ApiException, match="not the leader"):
            FencedKube(control_plane.api_client(), standby).patch_run_status(namespace, "any", {"phase": "Failed"})
        assert [p.metadata.name for p in core_v1.list_namespaced_pod(namespace).items] == []
        assert FencedKube(control_plane.api_client(), holder).create_pod(pod) is True
    finally:
        standby.stop()
        holder.stop()


def test_lease_timings_must_leave_a_margin() -> None:
    with pytest.raises(ValueError, match="renew_seconds < lease_seconds"):
        LeaseTimings(lease_seconds=10, renew_seconds=10, retry_seconds=2)
