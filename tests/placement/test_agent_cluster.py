"""The agent patches a real Node in the real API server, and the planner reads what it wrote."""

from __future__ import annotations

import argparse
import json
import threading
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest

from atoll.api.spec import PlacementSpec
from atoll.operator.agent import cli as agent_cli
from atoll.operator.agent.agent import Agent, AgentError, NodePublisher
from atoll.operator.agent.nvml import Nvml
from atoll.operator.placement import labels, read_fleet
from tests.env import kube
from tests.env.cluster import KWOK_NODE_ANNOTATION
from tests.placement.nvml_double import FakeGpu, FakeNvml

pytestmark = pytest.mark.cluster


@pytest.fixture
def gpu_node(core_v1: Any) -> Iterator[str]:
    """A kwok-managed (so Ready) node with GFD labels and 2 GPUs, deleted afterwards."""
    name = f"agent-{uuid.uuid4().hex[:8]}"
    core_v1.create_node(
        {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "labels": {
                    "kubernetes.io/hostname": name,
                    labels.GPU_PRODUCT: "NVIDIA-L4",
                    labels.GPU_MEMORY_MIB: "23034",
                    labels.GPU_COMPUTE_MAJOR: "8",
                    "type": "kwok",
                },
                "annotations": {KWOK_NODE_ANNOTATION: "fake"},
            },
            "status": {"allocatable": {"nvidia.com/gpu": "2"}, "capacity": {"nvidia.com/gpu": "2"}},
        }
    )
    kube.wait_nodes_ready(core_v1, [name], timeout=90)  # Ready and the not-ready taint lifted
    yield name
    core_v1.delete_node(name)


def run_agent_once(fake: FakeNvml, node: str, api: Any) -> None:
    args = argparse.Namespace(node=node, interval=30.0, once=True, print=False, ignore_xids="")
    assert agent_cli.run(args, nvml_module=fake, api=api, stop=threading.Event()) == 0


def test_agent_publishes_on_its_node_and_the_planner_reads_it(core_v1: Any, gpu_node: str) -> None:
    fake = FakeNvml(gpus=[FakeGpu(name="NVIDIA L4", uuid=f"GPU-{i}", memory_total_mib=23034) for i in range(2)])
    run_agent_once(fake, gpu_node, core_v1)
    node = core_v1.read_node(gpu_node)
    annotations = node.metadata.annotations
    assert annotations[KWOK_NODE_ANNOTATION] == "fake", "a merge patch keeps everyone else's annotations"
    assert annotations[labels.HEALTH] == "ok"
    assert annotations[labels.FREE_MIB] == "81000,81000"
    assert annotations[labels.AGENT_PRODUCT] == "NVIDIA-L4"
    assert len(json.loads(annotations[labels.GPUS])) == 2
    beat = datetime.fromisoformat(annotations[labels.HEARTBEAT].replace("Z", "+00:00"))

    fleet = read_fleet([node], placement=PlacementSpec(), now=beat)  # a kubernetes V1Node, as the client returns
    assert [(n.name, n.product, n.free_gpus) for n in fleet.nodes] == [(gpu_node, "NVIDIA-L4", 2)]

    # A critical XID arrives: the next report marks the node unhealthy and the planner leaves it out.
    session = Nvml(fake)
    session.open()
    agent = Agent(session, NodePublisher(gpu_node, core_v1))
    agent.report()
    fake.xid(1, 79)
    assert agent.step(wait_ms=0) is not None, "published at once, not at the next interval"
    session.close()
    node = core_v1.read_node(gpu_node)
    assert node.metadata.annotations[labels.HEALTH] == "gpu 1: xid 79"
    later = datetime.fromisoformat(node.metadata.annotations[labels.HEARTBEAT].replace("Z", "+00:00"))
    fleet = read_fleet([node], now=later)
    assert fleet.nodes == ()
    assert fleet.excluded[0].kind == "unhealthy"
    assert fleet.excluded[0].reason == "GPU unhealthy: gpu 1: xid 79"


def test_agent_on_a_node_that_does_not_exist_says_so(core_v1: Any) -> None:
    with pytest.raises(AgentError, match="node no-such-node-x does not exist"):
        run_agent_once(FakeNvml(), "no-such-node-x", core_v1)
