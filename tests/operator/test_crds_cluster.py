"""The CRDs in the real API server: every field documented for `kubectl explain`, and
malformed DDMRuns refused at `kubectl apply` with the field named (the operator, running
meanwhile, never sees them and never crashes).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from atoll.api.errors import SpecError
from atoll.api.load import parse_manifest
from atoll.cli import main as atoll_main
from tests.env.cluster import ControlPlane
from tests.operator.conftest import OperatorProcess

pytestmark = pytest.mark.cluster

VALID: dict[str, Any] = {
    "apiVersion": "atoll.dev/v1alpha1",
    "kind": "DDMRun",
    "metadata": {"name": "bad"},
    "spec": {
        "dataset": {"uri": "builtin://digits", "resolution": 8},
        "partition": {"clusters": 4, "features": "pixels"},
        "expert": {"preset": "tiny", "steps": 10, "globalBatchSize": 64},
        "router": {"preset": "tiny", "steps": 10},
    },
}


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(document: dict[str, Any]) -> None:
        *parents, leaf = path.split(".")
        node = document
        for part in parents:
            node = node.setdefault(part, {})
        if value is _DELETE:
            del node[leaf]
        else:
            node[leaf] = value

    return change


_DELETE = object()


def _toleration(**fields: Any) -> Callable[[dict[str, Any]], None]:
    return _set("spec.placement.tolerations", [fields])


def _mount(path: str) -> list[Callable[[dict[str, Any]], None]]:
    return [
        _set("spec.template.volumes", [{"name": "w", "emptyDir": {}}]),
        _set("spec.template.volumeMounts", [{"name": "w", "mountPath": path}]),
    ]


# (what is wrong, change, the field the API server must name, also refused by the pydantic models)
MALFORMED: list[tuple[str, list[Callable[[dict[str, Any]], None]], str, bool]] = [
    ("no dataset", [_set("spec.dataset", _DELETE)], "spec.dataset", True),
    ("empty dataset uri", [_set("spec.dataset.uri", "")], "spec.dataset.uri", True),
    ("unsupported dataset scheme", [_set("spec.dataset.uri", "ftp://host/data")], "spec.dataset.uri", True),
    ("resolution not a multiple of 8", [_set("spec.dataset.resolution", 12)], "spec.dataset.resolution", True),
    ("resolution too large", [_set("spec.dataset.resolution", 4096)], "spec.dataset.resolution", True),
    ("unknown VAE", [_set("spec.dataset.vae", "sdxl-vae")], "spec.dataset.vae", True),
    ("zero clusters", [_set("spec.partition.clusters", 0)], "spec.partition.clusters", True),
    ("too many clusters", [_set("spec.partition.clusters", 300)], "spec.partition.clusters", True),
    ("unknown features", [_set("spec.partition.features", "resnet50")], "spec.partition.features", True),
    ("one fine cluster", [_set("spec.partition.fineClusters", 1)], "spec.partition.fineClusters", True),
    ("unknown preset", [_set("spec.expert.preset", "dit-h/2")], "spec.expert.preset", True),
    ("negative steps", [_set("spec.expert.steps", -5)], "spec.expert.steps", True),
    ("zero learning rate", [_set("spec.expert.learningRate", 0)], "spec.expert.learningRate", True),
    ("learning rate above 1", [_set("spec.expert.learningRate", 2)], "spec.expert.learningRate", True),
    (
        "micro-batch above the global batch",
        [_set("spec.expert.microBatchSize", 128)],
        "spec.expert.microBatchSize",
        True,
    ),
    (
        "router micro-batch above the preset's batch",
        [_set("spec.router.microBatchSize", 1000)],
        "spec.router.microBatchSize",
        True,
    ),
    ("unknown steps policy", [_set("spec.expert.stepsPolicy", "random")], "spec.expert.stepsPolicy", True),
    ("unknown field", [_set("spec.expert.learningRateSchedule", "cosine")], "spec.expert.learningRateSchedule", True),
    ("malformed strategy", [_set("spec.sampling.strategy", "top-3")], "spec.sampling.strategy", True),
    ("strategy needs more experts", [_set("spec.sampling.strategy", "top-k:5")], "spec.sampling.strategy", True),
    ("no evaluation strategy", [_set("spec.evaluation.strategies", [])], "spec.evaluation.strategies", True),
    (
        "evaluation strategy needs more experts",
        [_set("spec.evaluation.strategies", ["top-1", "top-k:9"])],
        "spec.evaluation.strategies",
        True,
    ),
    ("s3 store without a Secret", [_set("spec.storage.uri", "s3://atoll/runs")], "spec.storage.secretRef", False),
    ("unknown reclaim policy", [_set("spec.storage.reclaimPolicy", "Keep")], "spec.storage.reclaimPolicy", True),
    ("Secret name not a DNS name", [_set("spec.storage.secretRef", "Bad_Name")], "spec.storage.secretRef", True),
    ("negative GPU memory", [_set("spec.placement.gpu.minMemoryGiB", -1)], "spec.placement.gpu.minMemoryGiB", True),
    (
        "toleration Exists with a value",
        [_toleration(key="spot", operator="Exists", value="yes")],
        "spec.placement.tolerations[0].value",
        True,
    ),
    ("zero speed", [_set("spec.placement.speeds", {"NVIDIA-L4": 0})], "spec.placement.speeds.NVIDIA-L4", True),
    ("negative restarts", [_set("spec.failurePolicy.maxRestarts", -1)], "spec.failurePolicy.maxRestarts", True),
    (
        "backoff cap below the first backoff",
        [_set("spec.failurePolicy.backoffSeconds", 60), _set("spec.failurePolicy.maxBackoffSeconds", 5)],
        "spec.failurePolicy.maxBackoffSeconds",
        True,
    ),
    ("more clusters than examples", [_set("spec.dataset.maxExamples", 3)], "spec.partition.clusters", True),
    ("name is not a DNS label", [_set("metadata.name", "a" * 70)], "metadata.name", True),
    ("spec is not an object", [_set("spec", "train please")], "spec", True),
    # URIs whose run prefix would not be a plain path under the root
    ("storage URI with a query", [_set("spec.storage.uri", "s3://atoll/runs?x")], "spec.storage.uri", True),
    ("storage URI with a fragment", [_set("spec.storage.uri", "s3://atoll/runs#x")], "spec.storage.uri", True),
    ("storage URI with ..", [_set("spec.storage.uri", "s3://atoll/runs/../x")], "spec.storage.uri", True),
    ("storage URI with .", [_set("spec.storage.uri", "/data/./runs")], "spec.storage.uri", True),
    ("storage URI with an empty segment", [_set("spec.storage.uri", "s3://atoll//runs")], "spec.storage.uri", True),
    ("percent-encoded storage URI", [_set("spec.storage.uri", "s3://atoll/runs%3Fx")], "spec.storage.uri", True),
    ("storage URI with a backslash", [_set("spec.storage.uri", "runs\\..\\x")], "spec.storage.uri", True),
    ("storage URI with whitespace", [_set("spec.storage.uri", "s3://atoll/my runs")], "spec.storage.uri", True),
    ("storage URI with a control character", [_set("spec.storage.uri", "/data/runs\n")], "spec.storage.uri", True),
    ("dataset URI with a query", [_set("spec.dataset.uri", "s3://data/shards?v=1")], "spec.dataset.uri", True),
    ("dataset URI with ..", [_set("spec.dataset.uri", "/data/../../etc")], "spec.dataset.uri", True),
    ("dataset URI with a tab", [_set("spec.dataset.uri", "/data/sha\trds")], "spec.dataset.uri", True),
    # tolerations and nodeSelector follow Kubernetes' rules
    ("toleration key", [_toleration(key="bad key!", operator="Exists")], "spec.placement.tolerations[0].key", True),
    (
        "toleration key prefix",
        [_toleration(key="Example.com/gpu", operator="Exists")],
        "spec.placement.tolerations[0].key",
        True,
    ),
    ("toleration Equal without a key", [_toleration(value="x")], "spec.placement.tolerations[0].operator", True),
    ("toleration value", [_toleration(key="spot", value="-x-")], "spec.placement.tolerations[0].value", True),
    (
        "toleration effect",
        [_toleration(key="spot", operator="Exists", effect="Evict")],
        "spec.placement.tolerations[0].effect",
        True,
    ),
    (
        "tolerationSeconds without NoExecute",
        [_toleration(key="spot", operator="Exists", effect="NoSchedule", tolerationSeconds=30)],
        "spec.placement.tolerations[0].tolerationSeconds",
        True,
    ),
    ("nodeSelector key", [_set("spec.placement.nodeSelector", {"a/b/c": "x"})], "spec.placement.nodeSelector", True),
    (
        "nodeSelector value",
        [_set("spec.placement.nodeSelector", {"pool": "gpu pool"})],
        "spec.placement.nodeSelector.pool",
        True,
    ),
    # bounds of the new fields
    ("zero CPU per GPU", [_set("spec.placement.cpuPerGpu", 0)], "spec.placement.cpuPerGpu", True),
    ("5000 GiB per GPU", [_set("spec.placement.memoryPerGpuGiB", 5000)], "spec.placement.memoryPerGpuGiB", True),
    (
        "pending timeout of a second",
        [_set("spec.failurePolicy.pendingTimeoutSeconds", 1)],
        "spec.failurePolicy.pendingTimeoutSeconds",
        True,
    ),
    (
        "negative store outage",
        [_set("spec.failurePolicy.storeOutageSeconds", -1)],
        "spec.failurePolicy.storeOutageSeconds",
        True,
    ),
    ("node lost at once", [_set("spec.failurePolicy.nodeLostSeconds", 0)], "spec.failurePolicy.nodeLostSeconds", True),
    (
        "island lost at once",
        [_set("spec.failurePolicy.islandLostSeconds", 0)],
        "spec.failurePolicy.islandLostSeconds",
        True,
    ),
    # pretrained weights need a source
    ("DINOv2 without weights", [_set("spec.partition.features", "dinov2-vitl14")], "spec.partition.features", True),
    ("SD VAE without weights", [_set("spec.dataset.vae", "sd-vae-ft-mse")], "spec.dataset.vae", True),
    ("CLIP text without weights", [_set("spec.dataset.textEncoder", "clip-vitl14")], "spec.dataset.textEncoder", True),
    ("weights store without a URI", [_set("spec.weights", {"source": "store"})], "spec.weights.uri", True),
    (
        "weights URI with a fragment",
        [_set("spec.weights", {"source": "store", "uri": "s3://w/p#x"})],
        "spec.weights.uri",
        True,
    ),
    ("weights path for source none", [_set("spec.weights", {"path": "/weights"})], "spec.weights.path", True),
    # the pod template may not take what is Atoll's
    (
        "template label under atoll.dev",
        [_set("spec.template.labels", {"atoll.dev/run": "x"})],
        "spec.template.labels",
        True,
    ),
    (
        "template annotation key",
        [_set("spec.template.annotations", {"-bad-": "x"})],
        "spec.template.annotations",
        True,
    ),
    (
        "template MINIO_ variable",
        [_set("spec.template.env", [{"name": "MINIO_SECRET_KEY", "value": "x"}])],
        "spec.template.env[0].name",
        True,
    ),
    (
        "template ATOLL_ variable",
        [_set("spec.template.env", [{"name": "ATOLL_WEIGHTS_DIR", "value": "/w"}])],
        "spec.template.env[0].name",
        True,
    ),
    (
        "template variable with value and valueFrom",
        [_set("spec.template.env", [{"name": "X", "value": "1", "valueFrom": {"fieldRef": {"fieldPath": "a"}}}])],
        "spec.template.env[0].valueFrom",
        True,
    ),
    (
        "template variable listed twice",
        [_set("spec.template.env", [{"name": "X", "value": "1"}, {"name": "X", "value": "2"}])],
        "spec.template.env[1]",
        True,
    ),
    (
        "template volume named scratch",
        [_set("spec.template.volumes", [{"name": "scratch", "emptyDir": {}}])],
        "spec.template.volumes[0].name",
        True,
    ),
    (
        "template volume without a source",
        [_set("spec.template.volumes", [{"name": "w"}])],
        "spec.template.volumes[0]",
        True,
    ),
    ("template mount over /tmp", _mount("/tmp"), "spec.template.volumeMounts[0].mountPath", True),
    ("template mount path with ..", _mount("/w/../etc"), "spec.template.volumeMounts[0].mountPath", True),
    (
        "template mount of no volume",
        [_set("spec.template.volumeMounts", [{"name": "w", "mountPath": "/w"}])],
        "spec.template.volumeMounts",
        True,
    ),
    (
        "template grace period",
        [_set("spec.template.terminationGracePeriodSeconds", -5)],
        "spec.template.terminationGracePeriodSeconds",
        True,
    ),
    (
        "template priority class",
        [_set("spec.template.priorityClassName", "High_Priority")],
        "spec.template.priorityClassName",
        True,
    ),
    (
        "island not a DNS label",
        [_set("spec.placement.islands.restrict", ["Lab"])],
        "spec.placement.islands.restrict[0]",
        True,
    ),
    ("island named twice", [_set("spec.placement.islands.prefer", ["a", "a"])], "spec.placement.islands.prefer", True),
    (
        "preferred island left out",
        [_set("spec.placement.islands", {"restrict": ["home"], "prefer": ["lab"]})],
        "spec.placement.islands.prefer",
        True,
    ),
]


KINDS = {"ddmrun": "DDMRun", "ddmexpert": "DDMExpert", "computeisland": "ComputeIsland"}
DEEP_FIELDS = {"ddmrun": "expert.microBatchSize", "ddmexpert": "steps", "computeisland": "kubeconfigSecretRef.key"}


@pytest.mark.parametrize("kind", list(KINDS))
def test_kubectl_explain_documents_every_field(atoll_crds: ControlPlane, kind: str) -> None:
    """Every property of the served OpenAPI schema has a description, and kubectl explain shows it."""
    served = json.loads(atoll_crds.kubectl("get", "--raw", "/openapi/v3/apis/atoll.dev/v1alpha1").stdout)
    schemas = served["components"]["schemas"]
    name = f"dev.atoll.v1alpha1.{KINDS[kind]}"
    missing: list[str] = []

    def visit(node: dict[str, Any], path: str) -> None:
        if "allOf" in node:  # the served schema wraps nested objects in allOf of one
            node = {**node, **node["allOf"][0]}
        for field, child in (node.get("properties") or {}).items():
            if not child.get("description") and not (child.get("allOf") or [{}])[0].get("description"):
                missing.append(f"{path}.{field}")
            visit(child, f"{path}.{field}")
        if isinstance(node.get("items"), dict):
            visit(node["items"], f"{path}[]")

    visit(schemas[name]["properties"]["spec"], "spec")
    assert not missing, f"fields without a description: {missing}"
    text = atoll_crds.kubectl("explain", f"{kind}.spec").stdout
    fields = schemas[name]["properties"]["spec"]["properties"]
    for field, child in fields.items():
        assert field in text, f"kubectl explain {kind}.spec does not list {field}"
        description = child.get("description") or child["allOf"][0].get("description", "")
        assert description.split()[0] in text
    deep = atoll_crds.kubectl("explain", f"{kind}.spec.{DEEP_FIELDS[kind]}")
    assert "DESCRIPTION" in deep.stdout
    assert len(deep.stdout.split("DESCRIPTION:")[1].strip()) > 10


def test_malformed_runs_are_refused_with_the_field_named(
    atoll_crds: ControlPlane, namespace: str, start_operator: Callable[..., OperatorProcess]
) -> None:
    assert len(MALFORMED) >= 40
    operator = start_operator()
    refused = []
    for what, changes, field, local in MALFORMED:
        document = copy.deepcopy(VALID)
        for change in changes:
            change(document)
        result = atoll_crds.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(document), check=False)
        assert result.returncode != 0, f"{what}: the API server accepted it"
        assert field in result.stderr, f"{what}: {field} not named in: {result.stderr}"
        refused.append(what)
        if local:  # the same models refuse it for `atoll run --local` too, naming the field or its parent
            with pytest.raises(SpecError) as refusal:
                parse_manifest(document, what)
            paths = [problem.split(":")[0] for problem in refusal.value.problems]
            assert any(field.startswith(path) for path in paths), f"{what}: pydantic names {paths}, not {field}"
    # An immutable field cannot change under a run that exists.
    atoll_crds.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(VALID))
    changed = copy.deepcopy(VALID)
    changed["spec"]["partition"]["clusters"] = 2
    result = atoll_crds.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(changed), check=False)
    assert result.returncode != 0
    assert "spec.partition" in result.stderr
    assert "immutable" in result.stderr
    runs = atoll_crds.kubectl_json("get", "ddmruns", "-n", namespace)["items"]
    assert [r["metadata"]["name"] for r in runs] == ["bad"], "only the valid run exists"
    atoll_crds.kubectl("delete", "ddmrun", "bad", "-n", namespace, "--wait=false")
    assert operator.alive, operator.output()[-2000:]
    assert "Traceback" not in operator.output(), operator.output()[-3000:]


def test_atoll_run_refuses_the_same_runs_before_applying_anything(
    atoll_crds: ControlPlane, namespace: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`atoll run FILE` (no --local) refuses every malformed run of the list itself, naming the
    field (or the section that holds it), so nothing reaches the API server."""
    manifest = tmp_path / "run.yaml"
    for what, changes, field, _ in MALFORMED:
        document = copy.deepcopy(VALID)
        for change in changes:
            change(document)
        manifest.write_text(yaml.safe_dump(document))
        code = atoll_main(["run", str(manifest), "-n", namespace, "--kubeconfig", str(atoll_crds.kubeconfig)])
        stderr = capsys.readouterr().err
        assert code == 1, f"{what}: atoll run accepted it"
        paths = [line.strip().split(":")[0] for line in stderr.splitlines() if line.startswith("  ")]
        assert any(field.startswith(path) for path in paths), f"{what}: {field} not named in: {stderr}"
        assert "Traceback" not in stderr
    assert atoll_crds.kubectl_json("get", "ddmruns", "-n", namespace)["items"] == [], "nothing was applied"


def test_a_run_with_every_default_is_accepted(atoll_crds: ControlPlane, namespace: str) -> None:
    """Only the dataset is required; the defaults need no pretrained weights."""
    document = {"apiVersion": "atoll.dev/v1alpha1", "kind": "DDMRun", "metadata": {"name": "defaults"}}
    document["spec"] = {"dataset": {"uri": "builtin://digits"}}
    atoll_crds.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(document))
    stored = atoll_crds.kubectl_json("get", "ddmrun", "defaults", "-n", namespace)["spec"]
    assert stored["partition"]["features"] == "pixels"
    assert stored["weights"] == {"source": "none"}
    assert stored["failurePolicy"]["pendingTimeoutSeconds"] == 600
    assert parse_manifest({**document, "spec": stored}, "defaults").spec.weights.source == "none"
    atoll_crds.kubectl("delete", "ddmrun", "defaults", "-n", namespace, "--wait=false")
