"""Capacity that can grow: the autoscaler pools a plan may provision GPUs from.

Reads Karpenter NodePools, and the pools a run declares in `spec.placement.pools`, into
`GrowablePool`s: the GPU product, how many GPUs it may still add (its `nvidia.com/gpu` limit
minus what its nodes already hold), how long a new node takes to join, an optional price,
and the node labels a pod waiting for one of its nodes requires. A NodePool the planner
cannot use is skipped with the reason, naming the field. Pure: takes NodePool and Node
dicts, never calls the API server, and decides nothing (the planner does).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from atoll.api.placement import KARPENTER_NODEPOOL_LABEL, GrowablePoolSpec
from atoll.operator.placement import labels
from atoll.operator.placement.fleet import as_dict
from atoll.operator.placement.gpus import canonical_product
from atoll.operator.placement.manifests import field_at as _get

DEFAULT_PROVISIONING_SECONDS = 300.0
"""From asking to a Ready GPU node when the NodePool does not say: cloud GPU instances
typically take 3-6 minutes to boot, join and start the device plugin."""
PROVISIONING_ANNOTATION = "atoll.dev/provisioning-seconds"
"""On a NodePool: seconds a new node of it takes to become usable."""
COST_ANNOTATION = "atoll.dev/cost-per-gpu-hour"
"""On a NodePool: price of one of its GPUs for an hour (any currency, the same for every pool)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class GrowablePool:
    """GPUs of one product an autoscaler can add."""

    pool: str
    """The NodePool's name (nodes it makes carry `karpenter.sh/nodepool: <pool>`)."""
    product: str
    """GFD product (nvidia.com/gpu.product) of the nodes it makes."""
    gpus_in_use: int
    """GPUs its nodes hold now."""
    max_gpus: int | None
    """Its `nvidia.com/gpu` limit; None: no GPU limit. Shared by every product of one NodePool."""
    provisioning_seconds: float
    cost_per_gpu_hour: float | None
    gpus_per_node: int | None = None
    """GPUs of the largest node it makes (None: not known, any size)."""
    node_labels: Mapping[str, str] = field(default_factory=dict)
    """Labels every node it makes carries (a pod waiting for one of them requires these)."""
    taints: tuple[Mapping[str, Any], ...] = ()
    """Taints every node it makes carries (a NodePool's template; a run must tolerate them)."""

    @property
    def headroom_gpus(self) -> int | None:
        """GPUs it may still add (None: no limit)."""
        return None if self.max_gpus is None else max(0, self.max_gpus - self.gpus_in_use)

    @property
    def placeholder(self) -> str:
        """The name plans give the node(s) this pool has yet to make (see `placeholder`)."""
        return placeholder(self.pool, self.product)


def placeholder(pool: str, product: str) -> str:
    """`<pool>:<product>`: where a plan puts an expert on GPUs a pool has yet to add. Never a
    real node's name (node names have no ':'), nor an island's node (`<island>/<node>`)."""
    return f"{pool}:{product}"


def declared_pools(specs: Sequence[GrowablePoolSpec], nodes: Iterable[Any]) -> tuple[GrowablePool, ...]:
    """The pools a run declares (`spec.placement.pools`), with the GPUs their existing nodes hold.

    A node belongs to a pool when it carries every label of the pool's selector; its
    allocatable GPUs count against the pool's `maxGpus`.
    """
    node_list = [as_dict(node) for node in nodes]
    pools = []
    for spec in specs:
        selector = spec.selector()
        in_use = 0
        for node in node_list:
            node_labels: Mapping[str, str] = _get(node, "metadata", "labels") or {}
            if all(node_labels.get(key) == value for key, value in selector.items()):
                allocatable = _get(node, "status", "allocatable", labels.GPU_RESOURCE)
                in_use += int(str(allocatable)) if str(allocatable or "").isdigit() else 0
        pools.append(
            GrowablePool(
                pool=spec.name,
                product=canonical_product(spec.product),
                gpus_in_use=in_use,
                max_gpus=spec.max_gpus,
                provisioning_seconds=spec.provisioning_seconds,
                cost_per_gpu_hour=spec.cost_per_gpu_hour,
                gpus_per_node=spec.gpus_per_node,
                node_labels=selector,
            )
        )
    return tuple(sorted(pools, key=lambda p: (p.pool, p.product)))


def merged(declared: Sequence[GrowablePool], discovered: Sequence[GrowablePool]) -> tuple[GrowablePool, ...]:
    """Declared pools, plus discovered ones (NodePools) the run does not declare: a declaration wins."""
    names = {(p.pool, p.product) for p in declared}
    pools = [*declared, *(p for p in discovered if (p.pool, p.product) not in names)]
    return tuple(sorted(pools, key=lambda p: (p.pool, p.product)))


@dataclass(frozen=True, kw_only=True, slots=True)
class Pools:
    """Usable growable pools (sorted by pool, then product) and the skipped NodePools with reasons."""

    pools: tuple[GrowablePool, ...]
    skipped: tuple[tuple[str, str], ...]


class _UnusableError(Exception):
    """A NodePool the planner cannot use; the message names the field."""


def read_node_pools(node_pools: Iterable[Mapping[str, Any]]) -> Pools:
    """The growable GPU pools of Karpenter NodePools (as `kubectl get nodepools -o json` items)."""
    pools: list[GrowablePool] = []
    skipped: list[tuple[str, str]] = []
    for node_pool in node_pools:
        name = str(_get(node_pool, "metadata", "name") or "")
        try:
            pools.extend(_read(node_pool, name))
        except _UnusableError as reason:
            skipped.append((name, str(reason)))
    pools.sort(key=lambda p: (p.pool, p.product))
    return Pools(pools=tuple(pools), skipped=tuple(sorted(skipped)))


def _read(node_pool: Mapping[str, Any], name: str) -> list[GrowablePool]:
    if _get(node_pool, "metadata", "deletionTimestamp"):
        raise _UnusableError("being deleted")
    products = _products(node_pool)
    annotations: Mapping[str, str] = _get(node_pool, "metadata", "annotations") or {}
    limit = _get(node_pool, "spec", "limits", labels.GPU_RESOURCE)
    in_use = _get(node_pool, "status", "resources", labels.GPU_RESOURCE)
    provisioning = _number(annotations, PROVISIONING_ANNOTATION, DEFAULT_PROVISIONING_SECONDS)
    cost = _number(annotations, COST_ANNOTATION, None)
    per_node = _largest_node(node_pool)
    return [
        GrowablePool(
            pool=name,
            product=product,
            gpus_in_use=_gpus(in_use, "status.resources") if in_use is not None else 0,
            max_gpus=_gpus(limit, "spec.limits") if limit is not None else None,
            provisioning_seconds=provisioning if provisioning is not None else DEFAULT_PROVISIONING_SECONDS,
            cost_per_gpu_hour=cost,
            gpus_per_node=per_node,
            node_labels={KARPENTER_NODEPOOL_LABEL: name},
            taints=tuple(dict(t) for t in _get(node_pool, "spec", "template", "spec", "taints") or ()),
        )
        for product in products
    ]


def _largest_node(node_pool: Mapping[str, Any]) -> int | None:
    """GPUs of the largest node a NodePool may make: its `In` requirement on nvidia.com/gpu.count."""
    for requirement in _get(node_pool, "spec", "template", "spec", "requirements") or []:
        if requirement.get("key") == labels.GPU_COUNT and requirement.get("operator") == "In":
            counts = [_gpus(value, "spec.template.spec.requirements") for value in requirement.get("values") or []]
            return max(counts) if counts else None
    return None


def _products(node_pool: Mapping[str, Any]) -> list[str]:
    """The products a NodePool makes: a template label, else an `In` requirement on the GFD product."""
    template = _get(node_pool, "spec", "template") or {}
    label = _get(template, "metadata", "labels", labels.GPU_PRODUCT)
    if label:
        return [canonical_product(str(label))]
    for requirement in _get(template, "spec", "requirements") or []:
        if requirement.get("key") == labels.GPU_PRODUCT:
            values = requirement.get("values") or []
            if requirement.get("operator") != "In" or not values:
                field = "spec.template.spec.requirements"
                raise _UnusableError(f"{field}: {labels.GPU_PRODUCT} must be `In` a list of products")
            return sorted({canonical_product(str(value)) for value in values})
    raise _UnusableError(f"no GPU product: neither a template label nor a requirement on {labels.GPU_PRODUCT}")


def _gpus(value: Any, field: str) -> int:
    """A GPU count from a resource quantity (GPUs are whole: "8", not "8k" or "500m")."""
    text = str(value).strip()
    if not text.isdigit():
        raise _UnusableError(f"{field}.{labels.GPU_RESOURCE}: {text!r} is not a whole number of GPUs")
    return int(text)


def _number(annotations: Mapping[str, str], key: str, default: float | None) -> float | None:
    text = annotations.get(key)
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        raise _UnusableError(f"metadata.annotations[{key}]: {text!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise _UnusableError(f"metadata.annotations[{key}]: {text!r} must be a finite number >= 0")
    return value
