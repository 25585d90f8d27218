"""Pure builder of the DDMExpert objects: one per cluster, owned by its run.

The operator creates them once the partition has written the cluster sizes, so that
`kubectl get ddmx` shows each expert's share of the data from the start.
"""

from __future__ import annotations

from typing import Any

from atoll.api.spec import API_GROUP_VERSION, DDMRunSpec
from atoll.api.status import DDMExpertSpec
from atoll.operator.crd import EXPERT
from atoll.operator.pods import Owner
from atoll.operator.views import LABEL_EXPERT, LABEL_RUN


def expert_name(run: str, expert: int) -> str:
    """<run>-expert-<k>."""
    return f"{run}-expert-{expert}"


def build_expert(
    *, run: str, namespace: str, owner: Owner, spec: DDMRunSpec, expert: int, sizes: list[int]
) -> dict[str, Any]:
    """The DDMExpert of cluster `expert` (sizes: examples per cluster, from the partition)."""
    expert_spec = DDMExpertSpec(
        run=run,
        expert=expert,
        examples=sizes[expert],
        steps=spec.expert.steps_for(expert, sizes),
        preset=spec.expert.preset,
    )
    return {
        "apiVersion": API_GROUP_VERSION,
        "kind": EXPERT.kind,
        "metadata": {
            "name": expert_name(run, expert),
            "namespace": namespace,
            "labels": {
                "app.kubernetes.io/name": "atoll",
                "app.kubernetes.io/managed-by": "atoll-operator",
                LABEL_RUN: run,
                LABEL_EXPERT: str(expert),
            },
            "ownerReferences": [owner.reference()],
        },
        "spec": expert_spec.model_dump(by_alias=True, mode="json"),
    }
