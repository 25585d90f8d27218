"""The keys cluster autoscalers read on Atoll's pods: cluster-autoscaler and Karpenter.

A stage pod carries both annotations from its creation, so neither autoscaler removes its
node (scale-down, consolidation, drift) while the stage runs; both ignore a pod once it has
finished, so a node whose stage pods are all done is empty to them and can go. A node they
are about to remove carries a deletion taint (`deletion_taint` finds it), which Atoll
honours by moving its experts off it at a checkpoint. Constants and pure functions only:
nothing here reads or writes the cluster.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

SAFE_TO_EVICT = "cluster-autoscaler.kubernetes.io/safe-to-evict"
"""cluster-autoscaler: "false" keeps the pod's node out of scale-down."""
DO_NOT_DISRUPT = "karpenter.sh/do-not-disrupt"
"""Karpenter: "true" keeps the pod's node out of voluntary disruption (consolidation, drift, expiry)."""


def protecting_annotations() -> dict[str, str]:
    """The pod annotations that keep a running stage's node from being taken away by an autoscaler."""
    return {SAFE_TO_EVICT: "false", DO_NOT_DISRUPT: "true"}


DELETION_TAINTS = ("ToBeDeletedByClusterAutoscaler", "karpenter.sh/disrupted")
"""Taint keys an autoscaler puts on a node it is about to remove (cluster-autoscaler's scale-down,
Karpenter's disruption: consolidation, drift, expiry, a spot interruption)."""
DELETION_EFFECTS = ("NoSchedule", "NoExecute")


def deletion_taint(taints: Iterable[Mapping[str, Any]]) -> str | None:
    """The first of a node's taints that says an autoscaler is removing it (`key[=value]:effect`), or None."""
    for taint in taints:
        if taint.get("key") in DELETION_TAINTS and taint.get("effect") in DELETION_EFFECTS:
            value = f"={taint['value']}" if taint.get("value") else ""
            return f"{taint['key']}{value}:{taint['effect']}"
    return None
