"""Karpenter NodePools read from the cluster: listed by the operator (`NodePoolWatch`, against
the real API server with Karpenter's CRDs, and one without them; cluster-autoscaler's status
ConfigMap read there too), and planned over next to the
pools a run declares (`FleetState.cluster_pools`: a declared pool of the same name wins, a
NodePool whose taints the run does not tolerate is left out).
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from atoll.api.spec import DDMRunSpec
from atoll.operator.nodepools import NodePoolWatch
from atoll.operator.placement.nodegroups import parse_node_groups
from atoll.operator.placement.pools import read_node_pools
from atoll.operator.planning import place_experts
from tests.env import fleet
from tests.env.cluster import ControlPlane
from tests.env.karpenter import apply_crds, node_pool
from tests.operator.islands import Island

from .test_planning import fleet_state, node

L4 = fleet.L4.product
FAST_L4 = {L4: 1000.0, "Tesla-T4": 100.0}


def spec(**placement: Any) -> DDMRunSpec:
    return DDMRunSpec.model_validate(
        {
            "dataset": {"uri": "builtin://digits"},
            "partition": {"clusters": 1},
            "expert": {"preset": "tiny", "steps": 100, "globalBatchSize": 64},
            "placement": {"gpu": {"maxPerExpert": 1}, "speeds": FAST_L4, **placement},
        }
    )


def l4_node_pool(name: str, *, provisioning_s: int = 5, **changes: Any) -> dict[str, Any]:
    manifest = node_pool(name, fleet.L4, limit_gpus=4, **changes)
    manifest["metadata"]["annotations"] = {"atoll.dev/provisioning-seconds": str(provisioning_s)}
    return manifest


def test_an_expert_is_planned_on_a_node_pool_read_from_the_cluster() -> None:
    nodes = [node("t4-0", "Tesla-T4", 15360, 4)]
    read = read_node_pools([l4_node_pool("l4-pool")]).pools
    alone = place_experts(fleet_state(spec(), nodes, cluster_sizes=[10]), [0])
    assert [a.node for a in alone.assignments.values()] == ["t4-0"], "without the NodePool: the fleet"
    grown = place_experts(fleet_state(spec(), nodes, cluster_sizes=[10], cluster_pools=read), [0])
    [assignment] = grown.assignments.values()
    assert (assignment.node, assignment.pool) == (f"l4-pool:{L4}", "l4-pool")
    assert assignment.pool_labels == {"karpenter.sh/nodepool": "l4-pool"}


def test_a_node_pool_whose_taints_the_run_does_not_tolerate_is_left_out() -> None:
    nodes = [node("t4-0", "Tesla-T4", 15360, 4)]
    taint = {"key": "team", "value": "vision", "effect": "NoSchedule"}
    read = read_node_pools([l4_node_pool("l4-pool", taints=(fleet.GPU_TAINT, taint))]).pools
    refused = place_experts(fleet_state(spec(), nodes, cluster_sizes=[10], cluster_pools=read), [0])
    assert [a.node for a in refused.assignments.values()] == ["t4-0"]
    tolerant = spec(tolerations=[{"key": "team", "operator": "Exists", "effect": "NoSchedule"}])
    taken = place_experts(fleet_state(tolerant, nodes, cluster_sizes=[10], cluster_pools=read), [0])
    assert [a.pool for a in taken.assignments.values()] == ["l4-pool"]


def test_a_declared_pool_wins_over_the_node_pool_of_the_same_name() -> None:
    nodes = [node("t4-0", "Tesla-T4", 15360, 4)]
    read = read_node_pools([l4_node_pool("l4-pool", provisioning_s=5)]).pools
    declared = spec(pools=[{"name": "l4-pool", "product": L4, "maxGpus": 4, "provisioningSeconds": 86400}])
    placed = place_experts(fleet_state(declared, nodes, cluster_sizes=[10], cluster_pools=read), [0])
    assert [a.node for a in placed.assignments.values()] == ["t4-0"], "the declared day-long delay counts"


def test_the_operator_lists_node_pools_and_a_cluster_without_karpenter_has_none(
    control_plane: ControlPlane, island: Island
) -> None:
    apply_crds(control_plane.kubectl)
    name = f"listed-{uuid.uuid4().hex[:6]}"
    control_plane.kubectl("apply", "-f", "-", input=json.dumps(l4_node_pool(name)))
    try:
        watch = NodePoolWatch(control_plane.api_client())
        listed = watch.refresh()
        mine = [pool for pool in watch.current() if pool.pool == name]
        assert [(p.product, p.max_gpus, p.provisioning_seconds) for p in mine] == [(L4, 4, 5.0)]
        assert mine == [pool for pool in listed.pools if pool.pool == name]
    finally:
        control_plane.kubectl("delete", "nodepools.karpenter.sh", name, "--wait=false", check=False)
    bare = NodePoolWatch(island.plane.api_client())  # no Karpenter CRDs there: a 404, no error
    assert bare.refresh().pools == ()
    assert bare.current() == ()


def test_the_operator_reads_cluster_autoscaler_node_groups_from_its_status_config_map(
    control_plane: ControlPlane,
) -> None:
    from tests.placement.test_node_groups import DECLARED, STATUS

    groups = parse_node_groups(DECLARED)
    name = f"cluster-autoscaler-status-{uuid.uuid4().hex[:6]}"
    config_map = {**STATUS, "metadata": {**STATUS["metadata"], "name": name}}
    control_plane.kubectl("apply", "-f", "-", input=json.dumps(config_map))
    try:
        watch = NodePoolWatch(control_plane.api_client(), node_groups=groups, autoscaler_status=("kube-system", name))
        read = watch.refresh()
        mine = {p.pool: (p.product, p.max_gpus, p.gpus_in_use, dict(p.node_labels)) for p in watch.current()}
        assert mine["gpu-l4"] == ("NVIDIA-L4", 24, 8, {"eks.amazonaws.com/nodegroup": "gpu-l4"})
        assert mine["gpu-h100"][1:3] == (16, 16)
        assert "gpu-t4" in dict(read.skipped)
    finally:
        control_plane.kubectl("delete", "configmap", "-n", "kube-system", name, "--wait=false", check=False)
    missing = NodePoolWatch(control_plane.api_client(), node_groups=groups, autoscaler_status=("kube-system", name))
    assert [p for p in missing.refresh().pools if p.pool.startswith("gpu-")] == []
    assert dict(missing.refresh().skipped)["gpu-l4"] == f"no ConfigMap kube-system/{name}"
