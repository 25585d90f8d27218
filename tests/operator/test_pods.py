"""The pure pod builder: the stage command, credentials by reference only, placement, security."""

from __future__ import annotations

import json

from atoll.api.spec import DDMRunSpec
from atoll.operator.placement import Assignment
from atoll.operator.placement.pools import placeholder
from atoll.operator.pods import Owner, StageAttempt, build_pod, pod_name, stage_command
from atoll.operator.settings import OperatorSettings
from atoll.operator.views import PodView, gpus_held_at
from atoll.stages import StageJob

SPEC = DDMRunSpec.model_validate(
    {
        "dataset": {"uri": "builtin://digits"},
        "partition": {"clusters": 4},
        "placement": {
            "nodeSelector": {"pool": "gpu"},
            "tolerations": [{"key": "spot", "operator": "Exists", "effect": "NoSchedule"}],
        },
    }
)
OWNER = Owner(api_version="atoll.dev/v1alpha1", kind="DDMExpert", name="r-expert-2", uid="u-1")
PLAN = Assignment(expert=2, node="a100-1", gpu_product="NVIDIA-A100-SXM4-40GB", gpus=2, micro_batch=16, grad_accum=8)


def attempt(**changes: object) -> StageAttempt:
    values: dict[str, object] = {
        "run": "r",
        "namespace": "ns",
        "job": StageJob("expert", 2),
        "attempt": 3,
        "spec_uri": "s3://atoll/runs/ns/r/spec.json",
        "store_uri": "s3://atoll/runs/ns/r",
        "store_secret": "minio-credentials",
        "owner": OWNER,
        "assignment": PLAN,
    }
    values.update(changes)
    return StageAttempt(**values)  # type: ignore[arg-type]


def test_the_stage_command_follows_the_contract() -> None:
    pod = build_pod(attempt(), SPEC, OperatorSettings(image="registry.local/atoll:test"))
    container = pod["spec"]["containers"][0]
    assert container["image"] == "registry.local/atoll:test"
    assert container["command"] == ["python", "-m", "atoll.trainer"]
    assert container["args"] == [
        "expert", "--run", "s3://atoll/runs/ns/r/spec.json", "--store", "s3://atoll/runs/ns/r",
        "--expert", "2", "--attempt", "3", "--micro-batch", "16", "--grad-accum", "8", "--gpus", "2",
    ]  # fmt: skip
    router = stage_command(attempt(job=StageJob("router"), assignment=None))
    assert router[:1] == ["router"]
    assert "--expert" not in router
    assert "--gpus" not in router


def test_names_are_deterministic_per_stage_and_attempt() -> None:
    assert build_pod(attempt(), SPEC, OperatorSettings())["metadata"]["name"] == "r-expert-2-a3"
    assert pod_name("r", StageJob("partition"), 1) == "r-partition-a1"
    assert build_pod(attempt(), SPEC, OperatorSettings()) == build_pod(attempt(), SPEC, OperatorSettings())


def test_credentials_only_by_secret_reference() -> None:
    pod = build_pod(attempt(), SPEC, OperatorSettings())
    env = {item["name"]: item for item in pod["spec"]["containers"][0]["env"]}
    for variable, key in (
        ("MINIO_ENDPOINT", "endpoint"),
        ("MINIO_ACCESS_KEY", "accessKey"),
        ("MINIO_SECRET_KEY", "secretKey"),
    ):
        assert env[variable] == {
            "name": variable,
            "valueFrom": {"secretKeyRef": {"name": "minio-credentials", "key": key}},
        }
    assert env["MINIO_SECURE"]["valueFrom"]["secretKeyRef"]["optional"] is True
    assert all("value" not in item for name, item in env.items() if name.startswith("MINIO_"))
    assert env["NODE_NAME"] == {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}
    local = build_pod(attempt(store_secret=None, store_uri="/data/runs/ns/r"), SPEC, OperatorSettings())
    assert not [e for e in local["spec"]["containers"][0]["env"] if e["name"].startswith("MINIO_")]


def test_the_store_retry_deadline_reaches_the_stage_only_when_the_spec_sets_it() -> None:
    variable = "ATOLL_STORE_RETRY_SECONDS"  # atoll.store.retry reads it
    default = build_pod(attempt(), SPEC, OperatorSettings())["spec"]["containers"][0]["env"]
    assert variable not in {item["name"] for item in default}, "the stage's own default applies"
    policy = {"storeRetrySeconds": 7}
    spec = DDMRunSpec.model_validate(
        {"dataset": {"uri": "builtin://digits"}, "partition": {"clusters": 4}, "failurePolicy": policy}
    )
    container = build_pod(attempt(), spec, OperatorSettings())["spec"]["containers"][0]
    env = {item["name"]: item for item in container["env"]}
    assert env[variable] == {"name": variable, "value": "7"}


def test_placement_becomes_gpu_requests_affinity_and_tolerations() -> None:
    pod = build_pod(attempt(), SPEC, OperatorSettings())
    spec = pod["spec"]
    assert spec["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "2"
    required = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert required["nodeSelectorTerms"][0]["matchExpressions"] == [
        {"key": "nvidia.com/gpu.product", "operator": "In", "values": ["NVIDIA-A100-SXM4-40GB"]}
    ]
    preferred = spec["affinity"]["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]
    assert preferred["preference"]["matchExpressions"][0]["values"] == ["a100-1"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    assert {"key": "spot", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    assert spec["nodeSelector"] == {"pool": "gpu"}
    no_gpu = build_pod(attempt(job=StageJob("assemble"), assignment=None), SPEC, OperatorSettings())
    assert "nvidia.com/gpu" not in no_gpu["spec"]["containers"][0]["resources"]["limits"]
    assert "affinity" not in no_gpu["spec"]


def test_labels_owner_and_security() -> None:
    pod = build_pod(attempt(), SPEC, OperatorSettings(run_as_user=1234))
    labels = pod["metadata"]["labels"]
    assert (labels["atoll.dev/run"], labels["atoll.dev/stage"], labels["atoll.dev/expert"]) == ("r", "expert", "2")
    assert labels["atoll.dev/attempt"] == "3"
    assert pod["metadata"]["ownerReferences"] == [
        {"apiVersion": "atoll.dev/v1alpha1", "kind": "DDMExpert", "name": "r-expert-2", "uid": "u-1",
         "controller": True, "blockOwnerDeletion": True}
    ]  # fmt: skip
    spec = pod["spec"]
    assert spec["restartPolicy"] == "Never"
    assert spec["automountServiceAccountToken"] is False
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == 1234
    container = spec["containers"][0]["securityContext"]
    assert container["allowPrivilegeEscalation"] is False
    assert container["capabilities"] == {"drop": ["ALL"]}
    assert "minio-credentials" in json.dumps(pod)  # the Secret's name, never a value from it


def test_a_makespan_plan_pins_the_pod_to_its_node() -> None:
    pinned = Assignment(
        expert=2, node="h100-1", gpu_product="NVIDIA-H100-80GB-HBM3", gpus=1, micro_batch=64, grad_accum=1
    )
    pod = build_pod(attempt(assignment=pinned, pinned=True), SPEC, OperatorSettings())
    term = pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ][0]
    assert term["matchFields"] == [{"key": "metadata.name", "operator": "In", "values": ["h100-1"]}]
    assert term["matchExpressions"][0]["values"] == ["NVIDIA-H100-80GB-HBM3"]
    assert pod["metadata"]["annotations"]["atoll.dev/planned-node"] == "h100-1"


def test_a_pod_for_a_node_a_pool_has_yet_to_add_selects_the_pool_and_product_not_a_node() -> None:
    product = "NVIDIA-L4"
    waiting = Assignment(
        expert=2,
        node=placeholder("autoscaled-l4", product),
        gpu_product=product,
        gpus=1,
        micro_batch=32,
        grad_accum=2,
        pool="autoscaled-l4",
        pool_labels={"karpenter.sh/nodepool": "autoscaled-l4"},
    )
    for pinned in (True, False):
        pod = build_pod(attempt(assignment=waiting, pinned=pinned), SPEC, OperatorSettings())
        affinity = pod["spec"]["affinity"]["nodeAffinity"]
        assert affinity == {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {
                        "matchExpressions": [
                            {"key": "nvidia.com/gpu.product", "operator": "In", "values": [product]},
                            {"key": "karpenter.sh/nodepool", "operator": "In", "values": ["autoscaled-l4"]},
                        ]
                    }
                ]
            }
        }  # no matchFields, no preferred node: the node has no name yet
        assert "nodeName" not in pod["spec"]
        annotations = pod["metadata"]["annotations"]
        assert "atoll.dev/planned-node" not in annotations
        assert annotations["atoll.dev/planned-pool"] == "autoscaled-l4"
        assert annotations["karpenter.sh/do-not-disrupt"] == "true"
        assert pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
        # The operator counts its GPUs at the pool's placeholder until a node takes it, then at the node.
        view = PodView.from_body(pod)
        assert view is not None
        assert (view.planned_pool, view.planned_node) == ("autoscaled-l4", None)
        assert view.waits_at == waiting.node == gpus_held_at(pod["spec"], annotations)
        assert gpus_held_at({**pod["spec"], "nodeName": "l4-abc12"}, annotations) == "l4-abc12"


def test_every_stage_pod_keeps_autoscalers_off_its_node_and_the_template_cannot_undo_it() -> None:
    protected = {"cluster-autoscaler.kubernetes.io/safe-to-evict": "false", "karpenter.sh/do-not-disrupt": "true"}
    for job, plan in ((StageJob("expert", 2), PLAN), (StageJob("partition"), None), (StageJob("router"), None)):
        annotations = build_pod(attempt(job=job, assignment=plan), SPEC, OperatorSettings())["metadata"]["annotations"]
        assert annotations.items() >= protected.items(), job
    overlay = DDMRunSpec.model_validate(
        {
            "dataset": {"uri": "builtin://digits"},
            "template": {"annotations": {"karpenter.sh/do-not-disrupt": "false", "example.com/team": "vision"}},
        }
    )
    annotations = build_pod(attempt(), overlay, OperatorSettings())["metadata"]["annotations"]
    assert annotations["karpenter.sh/do-not-disrupt"] == "true"
    assert annotations["example.com/team"] == "vision"
