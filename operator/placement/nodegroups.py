"""cluster-autoscaler node groups as growable pools: its status ConfigMap, read with what an
administrator declares about each group.

cluster-autoscaler (1.30 and later) publishes its state in the ConfigMap
`kube-system/cluster-autoscaler-status`, key `status`: a YAML document
(`clusterstate/api.ClusterAutoscalerStatus`) whose `nodeGroups` list gives, per group, its
`name` and `health` (`minSize`, `maxSize`, `cloudProviderTarget`, `nodeCounts.registered`)
and `scaleUp` (`status`: `Backoff` after a failed scale-up, with `backoffInfo`). It counts
nodes and says nothing of GPUs: which GPU product a group makes, how many per node and the
labels its nodes carry are declared once per cluster (`NodeGroupSpec`, the operator's
`--node-groups`). Pure: takes the ConfigMap as a mapping, never calls the API server, and
decides nothing (the planner does); a group it cannot use is skipped with the reason.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import yaml
from pydantic import Field, TypeAdapter, ValidationError, field_validator

from atoll.api.base import SpecModel
from atoll.api.placement import LabelValue, check_label_keys
from atoll.operator.placement.gpus import canonical_product
from atoll.operator.placement.manifests import field_at as _get
from atoll.operator.placement.pools import DEFAULT_PROVISIONING_SECONDS, GrowablePool, Pools

STATUS_NAMESPACE = "kube-system"
STATUS_NAME = "cluster-autoscaler-status"
"""Where cluster-autoscaler writes its status (its own namespace; `--status-config-map-name`)."""
STATUS_KEY = "status"


class NodeGroupSpec(SpecModel):
    """What Atoll must know of one cluster-autoscaler node group that its status does not say."""

    name: str = Field(min_length=1, max_length=253, description="The node group's name in cluster-autoscaler's status.")
    pool: LabelValue | None = Field(
        default=None,
        description="The name plans, Events and pods give the group (default: `name`, which must then have no '/').",
    )
    product: LabelValue = Field(min_length=1, description="GPU product of its nodes (nvidia.com/gpu.product).")
    gpus_per_node: int = Field(ge=1, le=64, description="GPUs of each of its nodes (the status counts nodes).")
    node_labels: dict[str, LabelValue] = Field(
        min_length=1,
        max_length=16,
        description=(
            "Labels every node of the group carries (its template's labels, e.g."
            " {eks.amazonaws.com/nodegroup: gpu-l4}): pods waiting for a new node require them."
        ),
    )
    provisioning_seconds: float = Field(
        default=DEFAULT_PROVISIONING_SECONDS, ge=0, le=86_400, description="Seconds from asking to a usable node."
    )
    cost_per_gpu_hour: float | None = Field(default=None, ge=0, description="Price of one of its GPUs for an hour.")

    @field_validator("node_labels")
    @classmethod
    def _label_keys_are_qualified(cls, value: dict[str, str]) -> dict[str, str]:
        return check_label_keys(value, "nodeLabels")

    def pool_name(self) -> str:
        return self.pool or self.name


_DECLARATIONS = TypeAdapter(list[NodeGroupSpec])


class NodeGroupsError(ValueError):
    """Node-group declarations that cannot be used; the message names the field."""


def parse_node_groups(text: str, *, source: str = "--node-groups") -> tuple[NodeGroupSpec, ...]:
    """Node-group declarations from YAML or JSON text (a list of `NodeGroupSpec` mappings)."""
    try:
        loaded = yaml.safe_load(text) if text.strip() else []
        groups = tuple(_DECLARATIONS.validate_python(loaded or []))
    except yaml.YAMLError as error:
        raise NodeGroupsError(f"{source}: not YAML or JSON ({error})") from None
    except ValidationError as error:
        first = error.errors()[0]
        where = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in first["loc"])
        raise NodeGroupsError(f"{source}{where}: {first['msg']}") from None
    pools = [group.pool_name() for group in groups]
    for index, group in enumerate(groups):
        if "/" in group.pool_name():
            raise NodeGroupsError(f"{source}[{index}].pool: set a pool name without '/' for {group.name!r}")
        if group.pool_name() in pools[:index]:
            raise NodeGroupsError(f"{source}[{index}]: node group {group.pool_name()!r} declared twice")
    return groups


class _UnusableError(Exception):
    """A node group the planner cannot use; the message names the field."""


def read_node_groups(config_map: Mapping[str, Any], declared: Sequence[NodeGroupSpec]) -> Pools:
    """The growable pools of the declared node groups, from cluster-autoscaler's status ConfigMap.

    Per group: `max_gpus` = `health.maxSize` × gpusPerNode; `gpus_in_use` = the larger of
    `health.cloudProviderTarget` and the registered nodes, × gpusPerNode (nodes asked for
    count against the limit before they join). A group in backoff after a failed scale-up,
    one missing from the status, or a status that is not the YAML document is skipped.
    """
    text = _get(config_map, "data", STATUS_KEY)
    try:
        status = yaml.safe_load(text) if isinstance(text, str) else None
    except yaml.YAMLError:
        status = None
    groups = _get(status, "nodeGroups") if isinstance(status, Mapping) else None
    if not isinstance(groups, list):
        why = (
            f"data.{STATUS_KEY} is not cluster-autoscaler's YAML status (version 1.30 or later) with nodeGroups"
            if text is not None
            else f"no data.{STATUS_KEY}"
        )
        return Pools(pools=(), skipped=tuple(sorted((group.pool_name(), why) for group in declared)))
    by_name = {str(group.get("name")): (index, group) for index, group in enumerate(groups) if isinstance(group, dict)}
    pools: list[GrowablePool] = []
    skipped: list[tuple[str, str]] = []
    for spec in declared:
        try:
            if spec.name not in by_name:
                raise _UnusableError(f"node group {spec.name!r} is not in cluster-autoscaler's status")
            pools.append(_pool(spec, *by_name[spec.name]))
        except _UnusableError as reason:
            skipped.append((spec.pool_name(), str(reason)))
    pools.sort(key=lambda p: (p.pool, p.product))
    return Pools(pools=tuple(pools), skipped=tuple(sorted(skipped)))


def _pool(spec: NodeGroupSpec, index: int, group: Mapping[str, Any]) -> GrowablePool:
    at = f"nodeGroups[{index}]"
    if _get(group, "scaleUp", "status") == "Backoff":
        message = _get(group, "scaleUp", "backoffInfo", "errorMessage") or _get(
            group, "scaleUp", "backoffInfo", "errorCode"
        )
        raise _UnusableError(f"{at}.scaleUp.status: Backoff (a scale-up failed: {message or 'no reason given'})")
    max_size = _count(group, at, "health", "maxSize")
    target = _count(group, at, "health", "cloudProviderTarget")
    registered = _get(group, "health", "nodeCounts", "registered", "total")
    nodes = max(target, registered if isinstance(registered, int) and registered >= 0 else 0)
    return GrowablePool(
        pool=spec.pool_name(),
        product=canonical_product(spec.product),
        gpus_in_use=nodes * spec.gpus_per_node,
        max_gpus=max_size * spec.gpus_per_node,
        provisioning_seconds=spec.provisioning_seconds,
        cost_per_gpu_hour=spec.cost_per_gpu_hour,
        gpus_per_node=spec.gpus_per_node,
        node_labels=dict(spec.node_labels),
    )


def _count(group: Mapping[str, Any], at: str, *path: str) -> int:
    value = _get(group, *path)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise _UnusableError(f"{at}.{'.'.join(path)}: {value!r} is not a node count")
    return value
