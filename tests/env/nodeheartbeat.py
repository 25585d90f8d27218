"""Keeps the nodes that the pod process runtime executes Ready, as a kubelet would: a Lease
in kube-node-lease renewed every few seconds and the node's conditions reported now and
then, so the node lifecycle controller neither taints nor evicts them.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from tests.env.pods import micro_now, now

LEASE_NAMESPACE = "kube-node-lease"
LEASE_DURATION_S = 40
LEASE_RENEW_S = 10.0
STATUS_REPORT_S = 60.0
MERGE_PATCH = "application/merge-patch+json"
RETRY_S = 2.0
"""After a failed heartbeat (API server away), try again this much later."""


def node_conditions() -> list[dict[str, str]]:
    """A healthy kubelet's node conditions."""
    stamp = now()
    healthy = [
        ("MemoryPressure", "False", "KubeletHasSufficientMemory"),
        ("DiskPressure", "False", "KubeletHasNoDiskPressure"),
        ("PIDPressure", "False", "KubeletHasSufficientPID"),
        ("Ready", "True", "KubeletReady"),
    ]
    return [
        {
            "type": kind,
            "status": status,
            "reason": reason,
            "message": "reported by the atoll pod process runtime",
            "lastHeartbeatTime": stamp,
            "lastTransitionTime": stamp,
        }
        for kind, status, reason in healthy
    ]


def _ready(node: dict[str, Any]) -> bool:
    conditions = (node.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


class NodeHeartbeat:
    """Lease and status heartbeats for a changing set of nodes (called from the runtime's loop)."""

    def __init__(self, core_v1: Any, coordination_v1: Any) -> None:
        self.core = core_v1
        self.coordination = coordination_v1
        self.lease_at: dict[str, float] = {}
        self.status_at: dict[str, float] = {}

    def tick(self, nodes: dict[str, dict[str, Any]]) -> None:
        moment = time.monotonic()
        for name in set(self.lease_at) - set(nodes):
            self.lease_at.pop(name, None)
            self.status_at.pop(name, None)
        for name, node in nodes.items():
            # A node seen NotReady is reported at once, but at most every 2 s while the watch catches up.
            status_due = self.status_at.get(name, -1e9) + (RETRY_S if not _ready(node) else STATUS_REPORT_S)
            if moment >= status_due:
                self.status_at[name] = moment
                self._report_status(name)
            if moment >= self.lease_at.get(name, -1e9) + LEASE_RENEW_S:
                self.lease_at[name] = moment
                self._renew_lease(name, str(node["metadata"]["uid"]))

    def _report_status(self, name: str) -> None:
        try:
            self.core.patch_node_status(
                name, {"status": {"conditions": node_conditions()}}, _content_type=MERGE_PATCH, _request_timeout=10
            )
        except Exception as error:
            self.status_at[name] = time.monotonic() - STATUS_REPORT_S + RETRY_S
            print(f"node {name} status: {error}"[:300], file=sys.stderr, flush=True)

    def _renew_lease(self, name: str, uid: str) -> None:
        from kubernetes.client.exceptions import ApiException

        spec = {"holderIdentity": name, "leaseDurationSeconds": LEASE_DURATION_S, "renewTime": micro_now()}
        try:
            try:
                self.coordination.patch_namespaced_lease(
                    name, LEASE_NAMESPACE, {"spec": spec}, _content_type=MERGE_PATCH, _request_timeout=10
                )
            except ApiException as error:
                if error.status != 404:
                    raise
                owner = {"apiVersion": "v1", "kind": "Node", "name": name, "uid": uid}
                lease = {"metadata": {"name": name, "ownerReferences": [owner]}, "spec": spec}
                self.coordination.create_namespaced_lease(LEASE_NAMESPACE, lease, _request_timeout=10)
        except Exception as error:
            self.lease_at[name] = time.monotonic() - LEASE_RENEW_S + RETRY_S
            print(f"node {name} lease: {error}"[:300], file=sys.stderr, flush=True)
