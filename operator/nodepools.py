"""The autoscalers' pools as growable capacity, read from the cluster now and then.

`NodePoolWatch` lists `karpenter.sh/v1` NodePools every `interval_seconds` on a thread of its
own and keeps what `atoll.operator.placement.pools.read_node_pools` makes of them; with
node-group declarations (`atoll operator --node-groups`) it also reads cluster-autoscaler's
status ConfigMap (`atoll.operator.placement.nodegroups.read_node_groups`). Each tick of a run
reads the last pools (`current()`) and plans over them next to the ones the run declares. A
cluster without Karpenter (no NodePool CRD: 404) or without cluster-autoscaler's ConfigMap has
no such pools, and that is no error; an operator not allowed to read them (403) has none either
and says so once. It only reads: it never writes a NodePool, a ConfigMap or anything else.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from atoll.log import get_logger
from atoll.operator.periodic import PeriodicTask
from atoll.operator.placement.nodegroups import STATUS_NAME, STATUS_NAMESPACE, NodeGroupSpec, read_node_groups
from atoll.operator.placement.pools import GrowablePool, Pools, read_node_pools

log = get_logger(__name__)

KARPENTER_GROUP = "karpenter.sh"
KARPENTER_VERSION = "v1"
NODE_POOLS = "nodepools"
DEFAULT_INTERVAL_SECONDS = 30.0
"""How often NodePools are listed (`atoll operator --node-pool-interval`)."""


class NodePoolWatch:
    """The cluster's NodePools, and the declared node groups of cluster-autoscaler, as
    `GrowablePool`s, read every `interval_seconds`."""

    def __init__(
        self,
        api_client: Any,
        *,
        interval_seconds: float = DEFAULT_INTERVAL_SECONDS,
        node_groups: Sequence[NodeGroupSpec] = (),
        autoscaler_status: tuple[str, str] = (STATUS_NAMESPACE, STATUS_NAME),
    ) -> None:
        from kubernetes import client

        self.custom: Any = client.CustomObjectsApi(api_client)  # dict answers
        self.core: Any = client.CoreV1Api(api_client)
        self.node_groups = tuple(node_groups)
        self.autoscaler_status = autoscaler_status
        """cluster-autoscaler's status ConfigMap (namespace, name): read only when node groups are declared."""
        self.interval_seconds = interval_seconds
        self._pools: tuple[GrowablePool, ...] = ()
        self._said: set[str] = set()
        self._loop: PeriodicTask | None = None

    def current(self) -> tuple[GrowablePool, ...]:
        """The pools of the last successful list (none before it, or without Karpenter)."""
        return self._pools

    def refresh(self) -> Pools:
        """Read the NodePools and node groups now (404, 403: none); the pools and those skipped."""
        node_pools, node_groups = self._node_pools(), self._node_groups()
        pools = tuple(sorted((*node_pools.pools, *node_groups.pools), key=lambda p: (p.pool, p.product)))
        self._pools = pools
        return Pools(pools=pools, skipped=tuple(sorted((*node_pools.skipped, *node_groups.skipped))))

    def _node_pools(self) -> Pools:
        from kubernetes.client.exceptions import ApiException

        try:
            listed = self.custom.list_cluster_custom_object(KARPENTER_GROUP, KARPENTER_VERSION, NODE_POOLS)
        except ApiException as error:
            if error.status not in (403, 404):
                raise
            why = "no NodePool CRD (no Karpenter)" if error.status == 404 else "not allowed to list NodePools"
            self._say(why, f"no Karpenter NodePools are planned over: {why}")
            return Pools(pools=(), skipped=())
        pools = read_node_pools(listed.get("items") or [])
        for name, reason in pools.skipped:
            self._say(f"{name}: {reason}", f"NodePool {name} is not planned over: {reason}")
        return pools

    def _node_groups(self) -> Pools:
        from kubernetes.client.exceptions import ApiException

        if not self.node_groups:
            return Pools(pools=(), skipped=())
        namespace, name = self.autoscaler_status
        try:
            config_map = self.core.api_client.sanitize_for_serialization(
                self.core.read_namespaced_config_map(name, namespace)
            )
        except ApiException as error:
            if error.status not in (403, 404):
                raise
            where = f"{namespace}/{name}"
            why = f"no ConfigMap {where}" if error.status == 404 else f"not allowed to get ConfigMap {where}"
            self._say(why, f"no cluster-autoscaler node groups are planned over: {why}")
            skipped = tuple(sorted((group.pool_name(), why) for group in self.node_groups))
            return Pools(pools=(), skipped=skipped)
        pools = read_node_groups(config_map, self.node_groups)
        for group, reason in pools.skipped:
            self._say(f"{group}: {reason}", f"node group {group} is not planned over: {reason}")
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
