"""A run on a fleet without the GPUs its plan wants, against the real control plane, MinIO,
scheduler, operator and autoscaler (Karpenter's kwok provider): the plan provisions a GPU of
a pool the run declares, the expert's pod asks for the pool and product (no node name),
Karpenter creates a node of that product, the pod binds to it and the DDMExpert records the
node; once the run is deleted the node is empty and Karpenter removes it.

Measured (2 runs, a 2-core machine shared with other test runs): 174-199 s for the test body,
of which ~125 s are the partition stage on the static fleet; the expert ran on the new node
~9 s after the partition, and Karpenter removed the node ~32 s after the run was deleted.

What it does not show: training on the new node. kwok simulates the pods of Karpenter's nodes
(Running, never executed; see docs/autoscaling.md), so the expert never progresses there and
the run never Succeeds; the test deletes the run instead of waiting for it to finish.

How the fleet lacks the GPUs: the spec's speed table makes an L4 far faster than anything
else, and pods that sleep hold every L4 GPU of the static fleet, so the fastest plan waits
for the L4 pool's new node (5 s to provision) rather than train on the slow GPUs left.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from tests.env import fleet as fleet_builders
from tests.env.cluster import ControlPlane
from tests.env.karpenter import Karpenter, node_class, node_pool
from tests.env.runtime_process import PodRuntimeProcess
from tests.operator.conftest import SECRET, OperatorProcess, apply, holder_pod, run_object

pytestmark = [pytest.mark.cluster, pytest.mark.minio, pytest.mark.e2e]

L4 = fleet_builders.L4.product
OPT_IN_TAINT = {"key": "atoll.dev/autoscaling-test", "value": "true", "effect": "NoSchedule"}
"""Only pods tolerating it make the test's NodePool grow (other tests share the control plane)."""


def test_a_run_short_of_gpus_gets_a_node_of_the_planned_product_which_goes_away_after(  # noqa: PLR0917 - fixtures
    control_plane: ControlPlane,
    atoll_crds: ControlPlane,
    fleet: fleet_builders.Fleet,
    pod_runtime: PodRuntimeProcess,
    karpenter: Karpenter,
    namespace: str,
    store_secret: str,
    start_operator: Callable[..., OperatorProcess],
) -> None:
    suffix = uuid.uuid4().hex[:6]
    pool = f"e2e-l4-{suffix}"
    control_plane.kubectl(
        "apply", "-f", "-",
        input="\n---\n".join(
            json.dumps(m)
            for m in (
                node_class(f"e2e-{suffix}"),
                node_pool(pool, fleet_builders.L4, limit_gpus=1, consolidate_after_s=2,
                          taints=(fleet_builders.GPU_TAINT, OPT_IN_TAINT), node_class_name=f"e2e-{suffix}"),
            )
        ),
    )  # fmt: skip
    holders = {}
    for name in fleet.with_product(L4):
        gpus = next(n for n in fleet.nodes if n["metadata"]["name"] == name)["status"]["allocatable"]["nvidia.com/gpu"]
        holders[f"l4-holder-{name}"] = holder_pod(f"l4-holder-{name}", name, {"nvidia.com/gpu": gpus})
    for manifest in holders.values():
        apply(control_plane, namespace, manifest)
    slow = {product: 1.0 for product in fleet.products if product != L4}
    run = {
        "apiVersion": "atoll.dev/v1alpha1",
        "kind": "DDMRun",
        "metadata": {"name": "grows"},
        "spec": {
            "dataset": {"uri": "builtin://digits", "resolution": 8, "maxExamples": 64},
            "partition": {"clusters": 1, "features": "pixels", "fineClusters": 8, "sampleSize": 64},
            "expert": {"preset": "tiny", "steps": 10, "globalBatchSize": 8},
            "router": {"preset": "tiny", "steps": 10, "globalBatchSize": 8},
            "sampling": {"steps": 4, "strategy": "top-1"},
            "evaluation": {"samples": 8, "strategies": ["top-1"]},
            "placement": {
                "gpu": {"maxPerExpert": 1},
                "speeds": {L4: 1000.0, **slow},
                "tolerations": [{"key": OPT_IN_TAINT["key"], "operator": "Exists", "effect": "NoSchedule"}],
                "pools": [{"name": pool, "product": L4, "maxGpus": 1, "provisioningSeconds": 5}],
            },
        },
    }
    start_operator("--default-store", store_secret, "--default-store-secret", SECRET)
    node = None
    try:
        apply(control_plane, namespace, run)
        started = time.monotonic()

        def expert() -> dict[str, Any]:
            items = control_plane.kubectl_json("get", "ddmexperts", "-n", namespace)["items"]
            return (items[0].get("status") or {}) if items else {}

        def pod() -> dict[str, Any] | None:
            name = f"grows-expert-0-a{expert().get('attempt', 1)}"
            found = control_plane.kubectl("get", "pod", name, "-n", namespace, "-o", "json", check=False)
            return json.loads(found.stdout) if found.returncode == 0 else None

        deadline = time.monotonic() + 420  # the partition runs first, on the static fleet
        partitioned_s = None  # when the DDMExpert has a status: the partition is done
        while not (expert().get("node") and (pod() or {}).get("status", {}).get("phase") == "Running"):
            if partitioned_s is None and expert():
                partitioned_s = time.monotonic() - started
            assert time.monotonic() < deadline, (
                f"expert not on a new node: {json.dumps(expert())[:2000]}"
                f" {json.dumps(run_object(control_plane, namespace, 'grows').get('status'))[:3000]}"
            )
            time.sleep(1)
        on_new_node_s = time.monotonic() - started
        created = pod()
        assert created is not None
        terms = created["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        assert terms["nodeSelectorTerms"] == [
            {
                "matchExpressions": [
                    {"key": "nvidia.com/gpu.product", "operator": "In", "values": [L4]},
                    {"key": "karpenter.sh/nodepool", "operator": "In", "values": [pool]},
                ]
            }
        ]
        assert created["metadata"]["annotations"]["atoll.dev/planned-pool"] == pool
        node = created["spec"]["nodeName"]
        assert expert()["node"] == node
        labels = control_plane.kubectl_json("get", "node", node)["metadata"]["labels"]
        assert (labels["karpenter.sh/nodepool"], labels["nvidia.com/gpu.product"]) == (pool, L4)
        assert node not in fleet.with_product(L4)
    finally:
        control_plane.kubectl("delete", "ddmrun", "grows", "-n", namespace, "--wait=false", check=False)
        control_plane.kubectl(
            "delete", "pod", *holders, "-n", namespace, "--ignore-not-found", "--timeout=60s", check=False
        )
    # The run's pods are gone with it: the node is empty, and Karpenter removes it.
    deleted = time.monotonic()
    deadline = deleted + 90
    while control_plane.kubectl("get", "node", node, check=False).returncode == 0:
        assert time.monotonic() < deadline, f"Karpenter kept {node}; its log ends:\n{karpenter.log_tail()}"
        time.sleep(1)
    control_plane.kubectl("delete", "nodepools.karpenter.sh", pool, "--wait=false", check=False)
    removed_s = time.monotonic() - deleted
    print(
        f"partitioned {partitioned_s or 0:.1f}s after apply; expert running on Karpenter's new node"
        f" {on_new_node_s:.1f}s after apply; node removed {removed_s:.1f}s after the run was deleted"
    )
