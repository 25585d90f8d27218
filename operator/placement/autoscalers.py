"""The keys cluster autoscalers read on Atoll's pods: cluster-autoscaler and Karpenter.

A stage pod carries both annotations from its creation, so neither autoscaler removes its
node (scale-down, consolidation, drift) while the stage runs; both ignore a pod once it has
finished, so a node whose stage pods are all done is empty to them and can go. A node they
are about to remove carries a deletion taint (`deletion_taint` finds it), and a node whose
cloud announced its end (a spot preemption, a scheduled event) a node condition
(`termination_condition`): Atoll honours both by moving its experts off it at a checkpoint
(`removal_notice`). Constants and pure functions only:
nothing here reads or writes the cluster.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
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


TERMINATION_CONDITIONS = ("PreemptionScheduled", "VMEventScheduled")
"""Node condition types that announce a node's end when True (the operator's default for
`--termination-conditions`). Both are set by AKS's node-problem-detector from Azure's scheduled
events: `PreemptionScheduled` (reason `SpotEvictionIncoming`) when a spot VM is about to be
evicted, `VMEventScheduled` for any scheduled event (Preempt, Terminate, Redeploy; also Reboot
and Freeze, which keep the VM: leave it out where those are common)."""


def termination_condition(notices: Iterable[tuple[str, str]], types: Collection[str]) -> str | None:
    """The first of a node's True conditions (type, reason) whose type announces its end, as
    `condition Type=True (Reason)`, or None."""
    for kind, reason in notices:
        if kind in types:
            return f"condition {kind}=True" + (f" ({reason})" if reason else "")
    return None


def removal_notice(
    taints: Iterable[Mapping[str, Any]], notices: Iterable[tuple[str, str]], conditions: Collection[str]
) -> str | None:
    """Why a node is going away — `taint <key[=value]:effect>` or `condition <Type>=True (<Reason>)`
    — or None: its experts checkpoint and move off it."""
    taint = deletion_taint(taints)
    if taint is not None:
        return f"taint {taint}"
    return termination_condition(notices, conditions)
