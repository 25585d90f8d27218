"""The keys cluster autoscalers read on Atoll's pods: cluster-autoscaler and Karpenter.

A stage pod carries both annotations from its creation, so neither autoscaler removes its
node (scale-down, consolidation, drift) while the stage runs; both ignore a pod once it has
finished, so a node whose stage pods are all done is empty to them and can go. Constants
and one pure builder only: nothing here reads or writes the cluster.
"""

from __future__ import annotations

SAFE_TO_EVICT = "cluster-autoscaler.kubernetes.io/safe-to-evict"
"""cluster-autoscaler: "false" keeps the pod's node out of scale-down."""
DO_NOT_DISRUPT = "karpenter.sh/do-not-disrupt"
"""Karpenter: "true" keeps the pod's node out of voluntary disruption (consolidation, drift, expiry)."""


def protecting_annotations() -> dict[str, str]:
    """The pod annotations that keep a running stage's node from being taken away by an autoscaler."""
    return {SAFE_TO_EVICT: "false", DO_NOT_DISRUPT: "true"}
