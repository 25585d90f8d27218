"""cluster-autoscaler node groups as growable pools: its status ConfigMap (tests/placement/data/
cluster-autoscaler-status.yaml) read with the administrator's declarations, and planned over."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from atoll.api import DDMRunSpec
from atoll.operator.placement import plan_run
from atoll.operator.placement.nodegroups import NodeGroupsError, parse_node_groups, read_node_groups
from tests.placement.fleets import NOW, PRODUCTS, node

STATUS: dict[str, Any] = yaml.safe_load((Path(__file__).parent / "data" / "cluster-autoscaler-status.yaml").read_text())
L4_GROUP = "eks-gpu-l4-5ec6b2a0-1f3d-8a2e-4c11-0b7e9d2f6a31"
H100_GROUP = "eks-gpu-h100-9a1c7e44-02bd-5f6e-7d90-3e8a1c5b4f02"
T4_GROUP = "eks-gpu-t4-0c4d2b19-7e6a-3f58-9b20-6d1e0a8c7b53"
DECLARED = f"""
- name: {L4_GROUP}
  pool: gpu-l4
  product: NVIDIA-L4
  gpusPerNode: 4
  nodeLabels: {{eks.amazonaws.com/nodegroup: gpu-l4}}
  provisioningSeconds: 240
  costPerGpuHour: 0.8
- {{name: {H100_GROUP}, pool: gpu-h100, product: NVIDIA-H100-80GB-HBM3, gpusPerNode: 8,
   nodeLabels: {{eks.amazonaws.com/nodegroup: gpu-h100}}}}
- {{name: {T4_GROUP}, pool: gpu-t4, product: Tesla-T4, gpusPerNode: 4,
   nodeLabels: {{eks.amazonaws.com/nodegroup: gpu-t4}}}}
- {{name: gone-from-the-status, product: NVIDIA-L4, gpusPerNode: 1, nodeLabels: {{example.com/group: gone}}}}
"""


def test_declared_node_groups_become_pools_with_the_status_limits_in_gpus() -> None:
    read = read_node_groups(STATUS, parse_node_groups(DECLARED))
    pools = {pool.pool: pool for pool in read.pools}
    assert set(pools) == {"gpu-l4", "gpu-h100"}
    l4 = pools["gpu-l4"]
    # maxSize 6 nodes × 4 GPUs; 2 nodes asked for (1 registered, 1 on its way) hold 8 of them.
    assert (l4.product, l4.max_gpus, l4.gpus_in_use, l4.headroom_gpus) == ("NVIDIA-L4", 24, 8, 16)
    assert (l4.provisioning_seconds, l4.cost_per_gpu_hour, l4.gpus_per_node) == (240.0, 0.8, 4)
    assert l4.node_labels == {"eks.amazonaws.com/nodegroup": "gpu-l4"}
    assert pools["gpu-h100"].headroom_gpus == 0  # at its maxSize
    skipped = dict(read.skipped)
    assert skipped["gpu-t4"].startswith("nodeGroups[2].scaleUp.status: Backoff (a scale-up failed: Could not launch")
    assert skipped["gone-from-the-status"] == "node group 'gone-from-the-status' is not in cluster-autoscaler's status"


def test_a_status_that_is_not_the_yaml_document_or_a_bad_count_is_reported_not_guessed() -> None:
    declared = parse_node_groups(DECLARED)
    # cluster-autoscaler before 1.30 wrote plain text under the same key.
    old = {"data": {"status": "Cluster-autoscaler status at 2023-05-02 10:00:00:\nCluster-wide:\n  Health: Healthy"}}
    read = read_node_groups(old, declared)
    assert read.pools == ()
    assert {why for _, why in read.skipped} == {
        "data.status is not cluster-autoscaler's YAML status (version 1.30 or later) with nodeGroups"
    }
    assert {why for _, why in read_node_groups({"data": {}}, declared).skipped} == {"no data.status"}
    broken = copy.deepcopy(STATUS)
    document = yaml.safe_load(broken["data"]["status"])
    document["nodeGroups"][0]["health"]["maxSize"] = "six"
    broken["data"]["status"] = yaml.safe_dump(document)
    assert dict(read_node_groups(broken, declared).skipped)["gpu-l4"] == (
        "nodeGroups[0].health.maxSize: 'six' is not a node count"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- {name: g, product: NVIDIA-L4, nodeLabels: {a/b: c}}", r"--node-groups\[0\]\.gpusPerNode: Field required"),
        ("- {name: g, product: NVIDIA-L4, gpusPerNode: 0, nodeLabels: {a/b: c}}", r"\[0\]\.gpusPerNode: Input should"),
        ("- {name: g, product: NVIDIA-L4, gpusPerNode: 4, nodeLabels: {}}", r"\[0\]\.nodeLabels: "),
        ("- {name: g, product: NVIDIA-L4, gpusPerNode: 4, nodeLabels: {a/b: c}, size: 3}", r"\[0\]\.size: Extra"),
        ("- {name: MachineDeployment/ns/gpu, product: NVIDIA-L4, gpusPerNode: 4, nodeLabels: {a/b: c}}", r"\.pool"),
        (
            "[{name: g, product: NVIDIA-L4, gpusPerNode: 4, nodeLabels: {a/b: c}},"
            " {name: g, product: Tesla-T4, gpusPerNode: 4, nodeLabels: {a/b: d}}]",
            r"--node-groups\[1\]: node group 'g' declared twice",
        ),
        ("[unclosed", r"--node-groups: not YAML or JSON"),
    ],
)
def test_bad_declarations_are_refused_naming_the_field(text: str, message: str) -> None:
    with pytest.raises(NodeGroupsError, match=message):
        parse_node_groups(text)


def test_an_expert_is_planned_on_a_node_group_when_the_fleet_is_too_slow() -> None:
    spec = DDMRunSpec.model_validate(
        {
            "dataset": {"uri": "builtin://shapes", "resolution": 256, "vae": "sd-vae-ft-mse"},
            "weights": {"source": "hub"},
            "partition": {"clusters": 2},
            "expert": {"preset": "dit-b/2", "steps": 10_000, "globalBatchSize": 256},
        }
    )
    fleet = [node("t4-0", PRODUCTS[8], 1)]
    pools = read_node_groups(STATUS, parse_node_groups(DECLARED)).pools
    plan = plan_run(spec, fleet, now=NOW, pools=pools)
    on_group = [a for a in plan.assignments if a.pool == "gpu-l4"]
    assert on_group, plan.to_json()
    assert {a.node for a in on_group} == {"gpu-l4:NVIDIA-L4"}
    assert all(a.pool_labels == {"eks.amazonaws.com/nodegroup": "gpu-l4"} for a in on_group)
    assert sum(a.gpus for a in on_group) <= 16  # the group's headroom
    assert not [a for a in plan.assignments if a.pool == "gpu-h100"], "at its maxSize"
