"""An expert's pod and store Secret made fit for an island, the island's pods as the reconciler
sees them, the registry the island monitor fills, and which objects are orphans."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

from atoll.api.island import ComputeIslandSpec
from atoll.api.spec import DDMRunSpec
from atoll.operator.islands.dispatch import (
    LABEL_ORIGIN_NAMESPACE,
    LABEL_ORIGIN_OWNER_UID,
    LABEL_ORIGIN_RUN_UID,
    island_pod,
    island_pod_view,
    island_store_secret,
    orphans,
    store_secret_name,
)
from atoll.operator.islands.registry import IslandRegistry, holder_key
from atoll.operator.ledger import GpuHolder
from atoll.operator.placement import Assignment
from atoll.operator.pods import Owner, StageAttempt, build_pod
from atoll.operator.settings import OperatorSettings
from atoll.operator.views import PodView
from atoll.stages import StageJob

SPEC = DDMRunSpec.model_validate({"dataset": {"uri": "builtin://digits"}, "partition": {"clusters": 4}})
OWNER = Owner(api_version="atoll.dev/v1alpha1", kind="DDMExpert", name="r-expert-2", uid="expert-uid")
PLAN = Assignment(expert=2, node="lab/l4-1", gpu_product="NVIDIA-L4", gpus=1, micro_batch=16, grad_accum=4)
ITEM = StageAttempt(
    run="r", namespace="ns", job=StageJob("expert", 2), attempt=3, spec_uri="s3://atoll/runs/ns/r/spec.json",
    store_uri="s3://atoll/runs/ns/r", store_secret="minio-credentials", owner=OWNER, assignment=PLAN, pinned=True,
)  # fmt: skip
SETTINGS = OperatorSettings(image="registry.local/atoll:test", service_account="atoll-stage")


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_the_island_pod_is_the_home_pod_moved_to_the_island() -> None:
    home = build_pod(ITEM, SPEC, SETTINGS)
    pod = island_pod(home, island_namespace="atoll", run_uid="run-uid")
    metadata = pod["metadata"]
    assert (metadata["name"], metadata["namespace"]) == ("r-expert-2-a3", "atoll")
    assert "ownerReferences" not in metadata, "its owner lives in another cluster"
    assert metadata["labels"][LABEL_ORIGIN_NAMESPACE] == "ns"
    assert metadata["labels"][LABEL_ORIGIN_RUN_UID] == "run-uid"
    assert metadata["labels"][LABEL_ORIGIN_OWNER_UID] == "expert-uid"
    assert metadata["labels"]["atoll.dev/expert"] == "2"
    assert metadata["annotations"]["atoll.dev/planned-node"] == "l4-1"
    terms = pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert terms["nodeSelectorTerms"][0]["matchFields"][0]["values"] == ["l4-1"], "the node's own name there"
    assert "serviceAccountName" not in pod["spec"]
    refs = {
        v["name"]: v["valueFrom"]["secretKeyRef"]["name"]
        for v in pod["spec"]["containers"][0]["env"]
        if "secretKeyRef" in v.get("valueFrom", {})
    }
    assert set(refs) >= {"MINIO_ENDPOINT", "MINIO_ACCESS_KEY", "MINIO_SECRET_KEY"}
    assert set(refs.values()) == {store_secret_name("run-uid")}
    # Everything else is the home builder's: command, resources, security.
    assert pod["spec"]["containers"][0]["args"] == home["spec"]["containers"][0]["args"]
    assert pod["spec"]["containers"][0]["resources"] == home["spec"]["containers"][0]["resources"]
    assert home["metadata"]["namespace"] == "ns", "the home manifest is not changed"


def test_the_store_secret_copies_only_the_store_keys_and_takes_the_islands_endpoint() -> None:
    home = {"data": {"endpoint": b64("minio.home:9000"), "accessKey": b64("a"), "secretKey": b64("s"), "x": b64("y")}}
    copy = island_store_secret(
        home, island_namespace="atoll", origin_namespace="ns", run="r", run_uid="run-uid", endpoint="minio.lab:9000"
    )
    assert copy["metadata"]["name"] == "atoll-store-run-uid"
    assert copy["metadata"]["namespace"] == "atoll"
    assert copy["metadata"]["labels"][LABEL_ORIGIN_RUN_UID] == "run-uid"
    assert set(copy["data"]) == {"endpoint", "accessKey", "secretKey"}
    assert base64.b64decode(copy["data"]["endpoint"]).decode() == "minio.lab:9000"
    same = island_store_secret(
        home, island_namespace="atoll", origin_namespace="ns", run="r", run_uid="u", endpoint=None
    )
    assert same["data"]["endpoint"] == home["data"]["endpoint"]


def island_body(name: str, node: str | None, phase: str, *, origin: bool = True, gpus: int = 1) -> dict[str, Any]:
    labels = {"atoll.dev/run": "r", "atoll.dev/stage": "expert", "atoll.dev/expert": "0", "atoll.dev/attempt": "1"}
    if origin:
        labels |= {LABEL_ORIGIN_NAMESPACE: "ns", LABEL_ORIGIN_RUN_UID: "run-uid", LABEL_ORIGIN_OWNER_UID: "x-uid"}
    return {
        "metadata": {"name": name, "namespace": "atoll", "labels": labels},
        "spec": {"nodeName": node, "containers": [{"resources": {"limits": {"nvidia.com/gpu": str(gpus)}}}]},
        "status": {"phase": phase},
    }


def test_an_island_pod_reads_as_a_home_pod_on_a_qualified_node() -> None:
    view = island_pod_view("lab", island_body("r-expert-0-a1", "l4-1", "Running"))
    assert view is not None
    assert (view.node, view.island, view.owner_uid, view.origin_namespace) == ("lab/l4-1", "lab", "x-uid", "ns")
    assert view.phase == "Running"
    assert island_pod_view("lab", island_body("other", "l4-1", "Running", origin=False)) is None


def test_orphans_are_objects_of_runs_that_no_longer_exist() -> None:
    bodies = [island_body("live", "n", "Running"), island_body("stray", "n", "Running", origin=False)]
    assert orphans(bodies, {"run-uid"}) == []
    assert orphans(bodies, set()) == ["live"]
    bodies[0]["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert orphans(bodies, set()) == [], "already going"


def node_body(name: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {"nvidia.com/gpu.product": "NVIDIA-L4"}},
        "status": {"allocatable": {"nvidia.com/gpu": "4"}},
    }


def test_the_registry_keeps_an_unreachable_islands_last_view_but_places_nothing_there() -> None:
    registry = IslandRegistry(connect=lambda text: None)
    spec = ComputeIslandSpec.model_validate({"kubeconfigSecretRef": {"name": "s"}, "namespace": "atoll"})
    pods = [island_body("r-expert-0-a1", "l4-1", "Running"), island_body("theirs", "l4-1", "Running", origin=False)]
    registry.reached("lab", spec, kubeconfig="k", version="1", nodes=[node_body("l4-1")], pods=pods, accepts=True)
    (fleet,) = registry.fleets()
    assert [(n.name, n.island, n.unschedulable) for n in fleet.nodes] == [("lab/l4-1", "lab", False)]
    assert [p.name for p in registry.pods_of("ns", "r")] == ["r-expert-0-a1"]
    assert registry.pods_of("elsewhere", "r") == ()
    assert registry.holders() == {
        holder_key("lab", "atoll", "r-expert-0-a1"): GpuHolder("lab/l4-1", 1),
        holder_key("lab", "atoll", "theirs"): GpuHolder("lab/l4-1", 1),
    }, "every GPU pod of the island's namespace holds its GPUs"
    registry.unreached("lab", spec, since=datetime(2026, 3, 1, tzinfo=UTC))
    (fleet,) = registry.fleets()
    assert [n.unschedulable for n in fleet.nodes] == [True], "no new experts go there"
    assert fleet.disconnected_since == datetime(2026, 3, 1, tzinfo=UTC)
    assert isinstance(registry.pods_of("ns", "r")[0], PodView), "running experts are not taken for lost"
    registry.reached("lab", spec, kubeconfig="k", version="2", nodes=[node_body("l4-1")], pods=[], accepts=False)
    assert [n.unschedulable for n in registry.fleets()[0].nodes] == [True], "cordoned or not Ready"
    registry.keep_only([])
    assert registry.fleets() == ()
