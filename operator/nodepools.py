"""Karpenter NodePools as growable capacity, listed from the cluster now and then.

`NodePoolWatch` lists `karpenter.sh/v1` NodePools every `interval_seconds` on a thread of its
own and keeps what `atoll.operator.placement.pools.read_node_pools` makes of them; each tick of
a run reads the last list (`current()`) and plans over those pools next to the ones the run
declares. A cluster without Karpenter (no NodePool CRD: 404) has no pools, and that is no
error; an operator not allowed to list them (403) has none either and says so once. It only
reads: it never writes a NodePool or anything else.
"""

from __future__ import annotations

from typing import Any

from atoll.log import get_logger
from atoll.operator.periodic import PeriodicTask
from atoll.operator.placement.pools import GrowablePool, Pools, read_node_pools

log = get_logger(__name__)

KARPENTER_GROUP = "karpenter.sh"
KARPENTER_VERSION = "v1"
NODE_POOLS = "nodepools"
DEFAULT_INTERVAL_SECONDS = 30.0
"""How often NodePools are listed (`atoll operator --node-pool-interval`)."""


class NodePoolWatch:
    """The cluster's NodePools as `GrowablePool`s, listed every `interval_seconds`."""

    def __init__(self, api_client: Any, *, interval_seconds: float = DEFAULT_INTERVAL_SECONDS) -> None:
        from kubernetes import client

        self.custom: Any = client.CustomObjectsApi(api_client)  # dict answers
        self.interval_seconds = interval_seconds
        self._pools: tuple[GrowablePool, ...] = ()
        self._said: set[str] = set()
        self._loop: PeriodicTask | None = None

    def current(self) -> tuple[GrowablePool, ...]:
        """The pools of the last successful list (none before it, or without Karpenter)."""
        return self._pools

    def refresh(self) -> Pools:
        """List the NodePools now (404, 403: no pools); the pools and the NodePools skipped."""
        from kubernetes.client.exceptions import ApiException

        try:
            listed = self.custom.list_cluster_custom_object(KARPENTER_GROUP, KARPENTER_VERSION, NODE_POOLS)
        except ApiException as error:
            if error.status not in (403, 404):
                raise
            why = "no NodePool CRD (no Karpenter)" if error.status == 404 else "not allowed to list NodePools"
            self._say(why, f"no Karpenter NodePools are planned over: {why}")
            self._pools = ()
            return Pools(pools=(), skipped=())
        pools = read_node_pools(listed.get("items") or [])
        for name, reason in pools.skipped:
            self._say(f"{name}: {reason}", f"NodePool {name} is not planned over: {reason}")
        self._pools = pools.pools
        return pools

    def _say(self, key: str, message: str) -> None:
        if key not in self._said:
            self._said.add(key)
            log.info(message)

    def start(self) -> NodePoolWatch:
        """List every `interval_seconds` on a thread of its own (a failed list keeps the last pools)."""
        self._loop = PeriodicTask(
            "nodepools", self.refresh, self.interval_seconds, failed="listing NodePools failed, retried later"
        )
        self._loop.start()
        return self

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.stop()
