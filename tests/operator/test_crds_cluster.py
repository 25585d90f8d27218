"""The CRDs in the real API server: every field documented for `kubectl explain`, and
malformed DDMRuns refused at `kubectl apply` with the field named (the operator, running
meanwhile, never sees them and never crashes).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import pytest

from atoll.api.errors import SpecError
from atoll.api.load import parse_manifest
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
        [_set("spec.placement.tolerations", [{"key": "spot", "operator": "Exists", "value": "yes"}])],
        "spec.placement.tolerations[0]",
        False,
    ),
    ("zero speed", [_set("spec.placement.speeds", {"NVIDIA-L4": 0})], "spec.placement.speeds.NVIDIA-L4", True),
    ("negative restarts", [_set("spec.failurePolicy.maxRestarts", -1)], "spec.failurePolicy.maxRestarts", True),
    (
        "backoff cap below the first backoff",
        [_set("spec.failurePolicy.backoffSeconds", 60), _set("spec.failurePolicy.maxBackoffSeconds", 5)],
        "spec.failurePolicy.maxBackoffSeconds",
        False,
    ),
    ("more clusters than examples", [_set("spec.dataset.maxExamples", 3)], "spec.partition.clusters", False),
    ("name is not a DNS label", [_set("metadata.name", "a" * 70)], "metadata.name", False),
    ("spec is not an object", [_set("spec", "train please")], "spec", True),
]


@pytest.mark.parametrize("kind", ["ddmrun", "ddmexpert"])
def test_kubectl_explain_documents_every_field(atoll_crds: ControlPlane, kind: str) -> None:
    """Every property of the served OpenAPI schema has a description, and kubectl explain shows it."""
    served = json.loads(atoll_crds.kubectl("get", "--raw", "/openapi/v3/apis/atoll.dev/v1alpha1").stdout)
    schemas = served["components"]["schemas"]
    name = f"dev.atoll.v1alpha1.{'DDMRun' if kind == 'ddmrun' else 'DDMExpert'}"
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
    deep = atoll_crds.kubectl("explain", f"{kind}.spec.{'expert.microBatchSize' if kind == 'ddmrun' else 'steps'}")
    assert "DESCRIPTION" in deep.stdout
    assert len(deep.stdout.split("DESCRIPTION:")[1].strip()) > 10


def test_malformed_runs_are_refused_with_the_field_named(
    atoll_crds: ControlPlane, namespace: str, start_operator: Callable[..., OperatorProcess]
) -> None:
    assert len(MALFORMED) >= 25
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
