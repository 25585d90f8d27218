"""A run on a fleet without the GPUs its plan wants, against the real control plane, MinIO,
scheduler, operator and autoscaler (Karpenter's kwok provider): the plan provisions a GPU of
a pool the run declares, the expert's pod asks for the pool and product (no node name),
Karpenter creates a node of that product, the pod binds to it, the expert trains there (the
pod process runtime executes the NodePool's nodes: `node_pool(..., execute=True)`) and the
run Succeeds; its finished pods stay (for their logs) and still Karpenter removes the node; the
run's status shows the GPU-hours it used and the plan's idle GPU-hours, and its Events say when
it asked the pool for GPUs and gave the nodes back.
And a node tainted for deletion mid-run (cluster-autoscaler's `ToBeDeletedByClusterAutoscaler`;
Karpenter's own `karpenter.sh/disrupted` would be taken off again by Karpenter, which puts it
only on nodes it is disrupting itself, and is covered by the decision's unit tests in
test_decide_autoscale.py): the operator stops the
expert's pod, the trainer commits a checkpoint on SIGTERM, and the expert resumes from it on
other capacity, losing no step; the run Succeeds.

How the fleet lacks the GPUs: the spec's speed table makes an L4 far faster than anything
else, and pods that sleep hold every L4 GPU of the static fleet, so the fastest plan waits
for the L4 pool's new node (5 s to provision) rather than train on the slow GPUs left.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import pytest

from tests.env import fleet as fleet_builders
from tests.env.cluster import ControlPlane
from tests.env.karpenter import Karpenter, node_class, node_pool
from tests.env.kube import wait_for
from tests.env.runtime_process import PodRuntimeProcess
from tests.operator.conftest import SECRET, OperatorProcess, apply, holder_pod, phase, pods, wait_run

pytestmark = [pytest.mark.cluster, pytest.mark.minio, pytest.mark.e2e]

L4 = fleet_builders.L4.product
OPT_IN_TAINT = {"key": "atoll.dev/autoscaling-test", "value": "true", "effect": "NoSchedule"}
"""Only pods tolerating it make the test's NodePool grow (other tests share the control plane)."""


def grows(
    name: str, pool: str, products: Iterable[str], *, steps: int = 10, checkpoint_every: int = 10
) -> dict[str, Any]:
    """A small run of two experts (the router needs two clusters) whose plan wants a GPU of
    `pool` for each (an L4 is fastest by far)."""
    slow = {product: 1.0 for product in products if product != L4}
    return {
        "apiVersion": "atoll.dev/v1alpha1",
        "kind": "DDMRun",
        "metadata": {"name": name},
        "spec": {
            "dataset": {"uri": "builtin://digits", "resolution": 8, "maxExamples": 64},
            "partition": {"clusters": 2, "features": "pixels", "fineClusters": 8, "sampleSize": 64},
            "expert": {"preset": "tiny", "steps": steps, "globalBatchSize": 8, "checkpointEvery": checkpoint_every},
            "router": {"preset": "tiny", "steps": 10, "globalBatchSize": 8},
            "sampling": {"steps": 4, "strategy": "top-1"},
            "evaluation": {"samples": 8, "strategies": ["top-1"]},
            "placement": {
                "gpu": {"maxPerExpert": 1},
                "speeds": {L4: 1000.0, **slow},
                "tolerations": [{"key": OPT_IN_TAINT["key"], "operator": "Exists", "effect": "NoSchedule"}],
                "pools": [{"name": pool, "product": L4, "maxGpus": 3, "provisioningSeconds": 5}],
            },
        },
    }


def grow_setup(
    control_plane: ControlPlane, fleet: fleet_builders.Fleet, namespace: str, *, consolidate_after_s: int = 2
) -> tuple[str, list[str]]:
    """An executed L4 NodePool of three GPUs (one-GPU nodes: the 4-GPU type exceeds the limit)
    for this test alone, and pods holding every L4 GPU of the static fleet; returns the
    NodePool's name and the holders' names."""
    suffix = uuid.uuid4().hex[:6]
    pool = f"e2e-l4-{suffix}"
    control_plane.kubectl(
        "apply", "-f", "-",
        input="\n---\n".join(
            json.dumps(m)
            for m in (
                node_class(f"e2e-{suffix}"),
                node_pool(pool, fleet_builders.L4, limit_gpus=3, consolidate_after_s=consolidate_after_s, execute=True,
                          taints=(fleet_builders.GPU_TAINT, OPT_IN_TAINT), node_class_name=f"e2e-{suffix}"),
            )
        ),
    )  # fmt: skip
    holders = []
    for name in fleet.with_product(L4):
        gpus = next(n for n in fleet.nodes if n["metadata"]["name"] == name)["status"]["allocatable"]["nvidia.com/gpu"]
        apply(control_plane, namespace, holder_pod(f"l4-holder-{name}", name, {"nvidia.com/gpu": gpus}))
        holders.append(f"l4-holder-{name}")
    return pool, holders


def tear_down(control_plane: ControlPlane, namespace: str, run: str, pool: str, holders: list[str]) -> None:
    control_plane.kubectl("delete", "ddmrun", run, "-n", namespace, "--wait=false", check=False)
    control_plane.kubectl(
        "delete", "pod", *holders, "-n", namespace, "--ignore-not-found", "--timeout=60s", check=False
    )
    control_plane.kubectl("delete", "nodepools.karpenter.sh", pool, "--wait=false", check=False)


def expert_statuses(control_plane: ControlPlane, namespace: str) -> dict[int, dict[str, Any]]:
    items = control_plane.kubectl_json("get", "ddmexperts", "-n", namespace)["items"]
    return {item["spec"]["expert"]: dict(item.get("status") or {}) for item in items}


def test_a_run_short_of_gpus_trains_on_a_new_node_of_the_planned_product_which_goes_away_after(  # noqa: PLR0917 - fixtures
    control_plane: ControlPlane,
    atoll_crds: ControlPlane,
    fleet: fleet_builders.Fleet,
    pod_runtime: PodRuntimeProcess,
    karpenter: Karpenter,
    namespace: str,
    store_secret: str,
    start_operator: Callable[..., OperatorProcess],
) -> None:
    pool, holders = grow_setup(control_plane, fleet, namespace)
    start_operator("--default-store", store_secret, "--default-store-secret", SECRET)
    try:
        apply(control_plane, namespace, grows("grows", pool, fleet.products))
        started = time.monotonic()

        def running_on_nodes() -> list[dict[str, Any]] | None:
            statuses = expert_statuses(control_plane, namespace)
            names = {status.get("pod") for status in statuses.values()}
            bound = [
                p
                for p in pods(control_plane, namespace, "grows")
                if p["metadata"]["name"] in names and p.get("spec", {}).get("nodeName")
            ]
            return bound if len(statuses) == len(bound) == 2 else None

        # The partition runs first, on the static fleet; then the experts' pods wait for nodes.
        attempts = wait_for(running_on_nodes, timeout=420, what="both experts' pods bound to nodes", interval=1)
        nodes = set()
        for attempt in attempts:
            terms = attempt["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
            assert terms["nodeSelectorTerms"] == [
                {
                    "matchExpressions": [
                        {"key": "nvidia.com/gpu.product", "operator": "In", "values": [L4]},
                        {"key": "karpenter.sh/nodepool", "operator": "In", "values": [pool]},
                    ]
                }
            ]
            assert attempt["metadata"]["annotations"]["atoll.dev/planned-pool"] == pool
            node = attempt["spec"]["nodeName"]
            assert node not in fleet.names, "a node Karpenter made, not the static fleet's"
            labels = control_plane.kubectl_json("get", "node", node)["metadata"]["labels"]
            assert (labels["karpenter.sh/nodepool"], labels["nvidia.com/gpu.product"]) == (pool, L4)
            nodes.add(node)
        run = wait_run(
            control_plane, namespace, "grows", lambda r: phase(r) == "Succeeded", timeout=600, what="Succeeded"
        )
        succeeded_s = time.monotonic() - started
        assert run["status"]["modelUri"], run["status"]
        for expert in expert_statuses(control_plane, namespace).values():
            assert expert["node"] in nodes, expert
            assert (expert["attempt"], expert["restarts"]) == (1, 0), expert
            assert expert["step"] == expert["totalSteps"] == 10, expert
            # Executed there, not simulated: the pod runtime ran the stage on that node, and the
            # stage trained every step (the status reads its heartbeat and done marker).
            state = pod_runtime.state(namespace, expert["pod"])
            assert state is not None
            assert (state["node"], "expert" in state["command"]) == (expert["node"], True), state
        # The run's finished pods (kept for their logs until the run is deleted) do not keep
        # the nodes: Karpenter removes them (possibly already while the later stages ran).
        deadline = time.monotonic() + 120
        while control_plane.kubectl("get", "node", *nodes, "--ignore-not-found", "-o", "name").stdout.strip():
            assert time.monotonic() < deadline, f"Karpenter kept {nodes}; its log ends:\n{karpenter.log_tail()}"
            time.sleep(1)
        removed_s = time.monotonic() - started
        # The run Succeeds once the last stage's done marker is written; its pod may still be
        # exiting: the usage follows it until it has ended.
        final = wait_run(
            control_plane, namespace, "grows", lambda r: r["status"].get("usage", {}).get("holding") == [], timeout=60,
            what="no pod of the run holding GPUs",
        )  # fmt: skip
        assert phase(final) == "Succeeded"
        # What the run used and asked for: GPU-hours from its pods' container times (every
        # ended attempt counted), the plan's idle GPU-hours (the pool's delay × the GPUs asked),
        # and one Event each when it asked the pool for GPUs and gave the new nodes back.
        usage, plan = final["status"]["usage"], final["status"]["plan"]
        assert usage["finishedGpuHours"] > 0, usage
        assert usage["gpuHours"] == pytest.approx(usage["finishedGpuHours"], rel=1e-3), "nothing runs any more"
        assert {"expert-0", "expert-1"} <= set(usage["countedAttempts"]), usage
        assert (usage["holding"], usage["requested"]) == ([], []), usage
        assert plan["provisionedGpus"] >= 1, plan
        assert plan["idleGpuHours"] > 0, plan
        events = control_plane.kubectl_json("get", "events", "-n", namespace)["items"]
        on_run = [e for e in events if e["involvedObject"]["kind"] == "DDMRun"]
        requested = [e["message"] for e in on_run if e["reason"] == "CapacityRequested"]
        released = [e["message"] for e in on_run if e["reason"] == "CapacityReleased"]
        assert requested, [e["reason"] for e in on_run]
        assert all(f"pool {pool} " in m and L4 in m for m in requested), requested
        assert {n for n in nodes if any(f"node {n} (pool {pool})" in m for m in released)} == nodes, released
    finally:
        tear_down(control_plane, namespace, "grows", pool, holders)
    print(
        f"run Succeeded {succeeded_s:.1f}s after apply; Karpenter's node gone {removed_s:.1f}s after apply;"
        f" {usage['gpuHours']} GPU-hours used, plan idle {plan['idleGpuHours']} GPU-hours;"
        f" events {requested} {released}"
    )


def test_an_expert_on_a_node_tainted_for_deletion_checkpoints_and_resumes_elsewhere(  # noqa: PLR0917 - fixtures
    control_plane: ControlPlane,
    atoll_crds: ControlPlane,
    fleet: fleet_builders.Fleet,
    pod_runtime: PodRuntimeProcess,
    karpenter: Karpenter,
    namespace: str,
    store_secret: str,
    start_operator: Callable[..., OperatorProcess],
) -> None:
    # Nodes stay 30 s after they empty: the expert moving off the tainted node may be queued
    # for the other expert's L4 node, which must not go away in between.
    pool, holders = grow_setup(control_plane, fleet, namespace, consolidate_after_s=30)
    start_operator("--default-store", store_secret, "--default-store-secret", SECRET)
    try:
        apply(control_plane, namespace, grows("evacuates", pool, fleet.products, steps=1000, checkpoint_every=50))
        started = time.monotonic()

        def training_on_a_new_node() -> tuple[int, dict[str, Any]] | None:
            for k, status in sorted(expert_statuses(control_plane, namespace).items()):
                if status.get("node") and status["node"] not in fleet.names and (status.get("step") or 0) >= 20:
                    return k, status
            return None

        k, first = wait_for(
            training_on_a_new_node, timeout=420, what="an expert training on Karpenter's node past step 20", interval=1
        )
        node = first["node"]
        # An autoscaler is about to remove the node: its deletion taint (the value is a Unix time).
        control_plane.kubectl("taint", "node", node, f"ToBeDeletedByClusterAutoscaler={int(time.time())}:NoSchedule")
        tainted_step = expert_statuses(control_plane, namespace)[k].get("step") or 0
        tainted_s = time.monotonic() - started
        # The next attempt's status names the old node until its pod is placed: wait for the new one.
        moved = wait_for(
            lambda: (
                (e := expert_statuses(control_plane, namespace)[k]).get("attempt") == 2
                and e.get("node") not in (None, node)
                and e
            ),
            timeout=420,
            what="the expert's next attempt placed elsewhere",
            interval=1,
        )
        assert moved["node"] != node
        assert (moved["moves"], moved["restarts"], moved.get("lastFailure")) == (1, 1, None), moved
        log = wait_for(
            lambda: '"resumed"' in (text := pod_runtime.logs(namespace, f"evacuates-expert-{k}-a2")) and text,
            timeout=180,
            what="the next attempt resuming",
            interval=1,
        )
        resumed = next(json.loads(line) for line in log.splitlines() if '"resumed"' in line and line.startswith("{"))
        assert resumed["step"] >= tainted_step, f"resumed at {resumed['step']}, it had reached {tainted_step}"
        run = wait_run(
            control_plane, namespace, "evacuates", lambda r: phase(r) == "Succeeded", timeout=600, what="Succeeded"
        )
        assert run["status"]["modelUri"]
        events = control_plane.kubectl_json("get", "events", "-n", namespace)["items"]
        assert "Evacuating" in [e["reason"] for e in events if e["involvedObject"]["kind"] == "DDMExpert"]
    finally:
        tear_down(control_plane, namespace, "evacuates", pool, holders)
    print(
        f"tainted {node} at step {tainted_step}, {tainted_s:.1f}s after apply; resumed at step {resumed['step']}"
        f" on {moved['node']}; run Succeeded {time.monotonic() - started:.1f}s after apply"
    )
