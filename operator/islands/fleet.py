"""The union of the islands' GPU fleets as placement sees it: every node tagged with its island,
and its identity qualified by it; the run's `spec.placement.islands` (restrict, prefer) applied.

A home node keeps its own name; a node `gpu-1` of island `lab` is `lab/gpu-1` to the planner,
the GPU ledger and the statuses (a `/` never occurs in a Kubernetes node name and an island
name is a DNS label, so two islands' nodes of the same name never collide), and `gpu-1` again
in the pod created on that island. Only islands that accept experts (Connected, Ready, not
cordoned) contribute nodes. Pure: no API calls, no clock; the planner core is not changed,
only the nodes it is given.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from atoll.api.island import ComputeIslandSpec, ComputeIslandStatus
from atoll.api.placement import HOME_ISLAND, IslandPlacement
from atoll.operator.placement import labels
from atoll.operator.placement.gpus import canonical_product
from atoll.operator.placement.pools import COST_ANNOTATION
from atoll.operator.views import NodeView

SEPARATOR = "/"
"""Between an island's name and its node's name in a qualified node name."""


def qualified(island: str, node: str) -> str:
    """The planner's name of `node` of `island` (`node` itself at home)."""
    return node if island == HOME_ISLAND else f"{island}{SEPARATOR}{node}"


def split_node(name: str) -> tuple[str, str]:
    """(island, the node's own name on that island) of a qualified node name."""
    island, found, node = name.partition(SEPARATOR)
    return (island, node) if found else (HOME_ISLAND, name)


def island_of(name: str) -> str:
    """The island a qualified node name belongs to."""
    return split_node(name)[0]


@dataclass(frozen=True, kw_only=True, slots=True)
class IslandFleet:
    """One island as last seen: where its pods go and its nodes (names qualified; unschedulable
    unless it accepts experts now)."""

    name: str
    namespace: str
    """The island's namespace for expert pods and their store Secrets."""
    store_endpoint: str | None
    """host[:port] at which the island's pods reach the store (None: the store Secret's endpoint)."""
    nodes: tuple[NodeView, ...]
    disconnected_since: datetime | None = None
    """Since when the island has not answered (its status.disconnectedSince); None: its last probe reached it."""


def island_nodes(island: str, bodies: Iterable[Mapping[str, Any]]) -> tuple[NodeView, ...]:
    """The views of an island's Node objects, each tagged with the island and its name qualified."""
    views = (NodeView.from_body(body) for body in bodies)
    return tuple(replace(view, name=qualified(island, view.name), island=island) for view in views)


def priced(nodes: Iterable[NodeView], cost_per_gpu_hour: Mapping[str, float]) -> tuple[NodeView, ...]:
    """The nodes, each carrying its island's price of its GPU product (ComputeIsland
    `spec.costPerGpuHour`) as the annotation the planner's cost objective reads; a node of a
    product the island does not price keeps its annotations as they are."""
    by_product = {canonical_product(product): price for product, price in cost_per_gpu_hour.items()}
    result = []
    for node in nodes:
        price = by_product.get(canonical_product(node.labels.get(labels.GPU_PRODUCT, "")))
        annotations = node.annotations if price is None else {**node.annotations, COST_ANNOTATION: repr(float(price))}
        result.append(replace(node, annotations=annotations))
    return tuple(result)


def accepts_experts(spec: ComputeIslandSpec, status: ComputeIslandStatus) -> bool:
    """Whether new experts may go to an island: Connected and Ready (as its last probe found), not cordoned."""
    conditions = {c.type: c.status for c in status.conditions}
    return not spec.cordoned and conditions.get("Connected") == "True" and conditions.get("Ready") == "True"


def union_nodes(home: Sequence[NodeView], islands: Iterable[IslandFleet]) -> tuple[NodeView, ...]:
    """The home cluster's nodes, then every island's (an island named `home` is never added)."""
    nodes = list(home)
    for fleet in sorted(islands, key=lambda f: f.name):
        if fleet.name != HOME_ISLAND:
            nodes.extend(fleet.nodes)
    return tuple(nodes)


def _only(nodes: Iterable[NodeView], chosen: set[str], kept: set[str]) -> list[NodeView]:
    """The nodes of the `chosen` islands, and the `kept` nodes elsewhere marked unschedulable:
    the planner lets only the experts running there use them (as on a cordoned node)."""
    return [
        n if island_of(n.name) in chosen else replace(n, unschedulable=True)
        for n in nodes
        if island_of(n.name) in chosen or n.name in kept
    ]


def restricted(nodes: Iterable[NodeView], islands: IslandPlacement, *, keep: Iterable[str] = ()) -> list[NodeView]:
    """The nodes on the islands `restrict` allows (all when it is empty), and those in `keep`
    for the experts running there (they stay where they are whatever the spec says now)."""
    if not islands.restrict:
        return list(nodes)
    return _only(nodes, set(islands.restrict), set(keep))


def preference_tiers(
    nodes: Sequence[NodeView], islands: IslandPlacement, *, keep: Iterable[str] = ()
) -> list[list[NodeView]]:
    """The node sets to plan over before all of `nodes`, in order: the first preferred island's,
    then the first two's, …; each with the nodes in `keep` for the experts running there. Sets
    that offer new experts the same nodes as an earlier one or as `nodes` are left out."""
    kept = set(keep)
    tiers: list[list[NodeView]] = []
    seen = {frozenset(n.name for n in nodes if not n.unschedulable)}
    for count in range(1, len(islands.prefer) + 1):
        tier = _only(nodes, set(islands.prefer[:count]), kept)
        usable = frozenset(n.name for n in tier if not n.unschedulable)
        if usable and usable not in seen:
            seen.add(usable)
            tiers.append(tier)
    return tiers


def no_island_node(islands: IslandPlacement) -> str:
    """Why a restricted run has no node to plan over."""
    return (
        f"no node on the islands placement.islands.restrict allows ({', '.join(islands.restrict)}):"
        " an island counts once it is Connected, Ready and not cordoned"
    )
