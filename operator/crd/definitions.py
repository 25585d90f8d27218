"""The DDMRun, DDMExpert and ComputeIsland CustomResourceDefinitions, built from the API models.

Field schemas come from the pydantic models (atoll.api.spec, atoll.api.status, atoll.api.island); this
module adds what only Kubernetes knows: CEL rules for cross-field checks, immutability,
printer columns, names and the status subresource. Pure: never talks to a cluster.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from atoll.api.island import ComputeIslandSpec, ComputeIslandStatus
from atoll.api.names import LABEL_VALUE_PATTERN
from atoll.api.placement import HOME_ISLAND
from atoll.api.presets import PRESETS
from atoll.api.spec import API_GROUP, API_VERSION, DDMRunSpec
from atoll.api.status import DDMExpertSpec, DDMExpertStatus, DDMRunStatus
from atoll.operator.crd.cel import IMMUTABLE, Rule, cel_string
from atoll.operator.crd.pod_rules import POD_LIMITS, POD_LIST_MAPS, POD_RULES
from atoll.operator.crd.schema import Schema, structural_schema

CATEGORY = "atoll"


@dataclass(frozen=True)
class Kind:
    """Names of one custom resource kind."""

    kind: str
    plural: str
    short_name: str
    scope: Literal["Namespaced", "Cluster"] = "Namespaced"

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{API_GROUP}"


RUN = Kind(kind="DDMRun", plural="ddmruns", short_name="ddm")
EXPERT = Kind(kind="DDMExpert", plural="ddmexperts", short_name="ddmx")
ISLAND = Kind(kind="ComputeIsland", plural="computeislands", short_name="island", scope="Cluster")


def _preset_batch() -> str:
    """A CEL expression of the preset's default global batch (`self` is an expert/router spec)."""
    table = ", ".join(f"'{name}': {preset.recipe.global_batch_size}" for name, preset in PRESETS.items())
    return f"(has(self.globalBatchSize) ? self.globalBatchSize : {{{table}}}[self.preset])"


def _experts_needed(strategy: str) -> str:
    """A CEL expression of how many experts a strategy string selects at least."""
    return f"({strategy} == 'top-2' ? 2 : {strategy}.startsWith('top-k:') ? int({strategy}.substring(6)) : 1)"


def _micro_batch_rule(stage: str) -> Rule:
    return Rule(
        f"!has(self.microBatchSize) || self.microBatchSize <= {_preset_batch()}",
        f"{stage}.microBatchSize must not exceed {stage}.globalBatchSize (the preset's recipe when unset)",
        ".microBatchSize",
    )


# CEL rules by the dotted path of the node they sit on, relative to the DDMRun's spec.
# Each rule mirrors a check the pydantic models make for local runs, except the
# Kubernetes-only ones (secretRef for s3://, immutability), which say so.
SPEC_RULES: dict[str, list[Rule]] = {
    "": [
        Rule(
            f"{_experts_needed('self.sampling.strategy')} <= self.partition.clusters",
            "sampling.strategy selects more experts than partition.clusters",
            ".sampling.strategy",
        ),
        Rule(
            f"self.evaluation.strategies.all(s, {_experts_needed('s')} <= self.partition.clusters)",
            "evaluation.strategies selects more experts than partition.clusters",
            ".evaluation.strategies",
        ),
        Rule(
            "!has(self.dataset.maxExamples) || self.partition.clusters <= self.dataset.maxExamples",
            "partition.clusters must not exceed dataset.maxExamples (every expert needs examples)",
            ".partition.clusters",
        ),
    ],
    "placement.islands": [
        Rule(
            "!has(self.restrict) || size(self.restrict) == 0 || !has(self.prefer)"
            " || self.prefer.all(name, name in self.restrict)",
            "placement.islands.prefer names an island that placement.islands.restrict leaves out",
            ".prefer",
        )
    ],
    "dataset": [IMMUTABLE],
    "partition": [IMMUTABLE],
    "expert": [IMMUTABLE, _micro_batch_rule("expert")],
    "router": [IMMUTABLE, _micro_batch_rule("router")],
    "storage": [
        IMMUTABLE,
        # Kubernetes only: pods get store credentials from a Secret, never from the spec.
        Rule(
            "!self.uri.startsWith('s3://') || has(self.secretRef)",
            "storage.secretRef (a Secret with accessKey, secretKey and endpoint) is required for an s3:// storage.uri",
            ".secretRef",
            "FieldValueRequired",
        ),
    ],
    "failurePolicy": [
        Rule(
            "self.maxBackoffSeconds >= self.backoffSeconds",
            "failurePolicy.maxBackoffSeconds must be at least failurePolicy.backoffSeconds",
            ".maxBackoffSeconds",
        )
    ],
}

# Bounds the API server needs to estimate the cost of the CEL rules above (strings and
# lists without a maximum are assumed to be as large as a whole request).
SPEC_LIMITS: dict[str, dict[str, int]] = {
    "sampling.strategy": {"maxLength": 32},
    "evaluation.strategies[]": {"maxLength": 32},
    "storage.uri": {"maxLength": 1024},
    "placement.tolerations": {"maxItems": 64},
}

RUN_NAME_RULE = Rule(
    "self.metadata.name.size() <= 63 && self.metadata.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')",
    "metadata.name must be a DNS label (at most 63 lower-case letters, digits and '-'): it names pods and labels",
)


def _node(schema: Schema, path: str) -> Schema:
    """The sub-schema at a dotted path (`a.b[]` goes into b's items)."""
    node = schema
    for part in filter(None, path.split(".")):
        name, items = (part[:-2], True) if part.endswith("[]") else (part, False)
        node = node["properties"][name]
        if items:
            node = node["items"]
    return node


def run_spec_schema() -> Schema:
    """The DDMRun spec schema with CEL rules and cost bounds."""
    schema = structural_schema(DDMRunSpec)
    for path, limits in (*SPEC_LIMITS.items(), *POD_LIMITS.items()):
        _node(schema, path).update(limits)
    for path, keys in POD_LIST_MAPS.items():
        _node(schema, path).update({"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": keys})
    for path, rules in (*SPEC_RULES.items(), *POD_RULES.items()):
        _node(schema, path).setdefault("x-kubernetes-validations", []).extend(r.render() for r in rules)
    return schema


def _crd(kind: Kind, spec: Schema, status: Schema, columns: list[dict[str, Any]], root_rules: list[Rule]) -> Schema:
    root: Schema = {
        "type": "object",
        "description": spec.get("description", kind.kind),
        "properties": {
            "apiVersion": {"type": "string", "description": "atoll.dev/v1alpha1"},
            "kind": {"type": "string", "description": kind.kind},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
        "required": ["spec"],
    }
    if root_rules:
        root["x-kubernetes-validations"] = [rule.render() for rule in root_rules]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": kind.crd_name, "labels": {"app.kubernetes.io/name": "atoll"}},
        "spec": {
            "group": API_GROUP,
            "scope": kind.scope,
            "names": {
                "kind": kind.kind,
                "listKind": f"{kind.kind}List",
                "plural": kind.plural,
                "singular": kind.kind.lower(),
                "shortNames": [kind.short_name],
                "categories": [CATEGORY],
            },
            "versions": [
                {
                    "name": API_VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                    "schema": {"openAPIV3Schema": root},
                }
            ],
        },
    }


def _column(name: str, path: str, kind: str = "string", description: str = "", priority: int = 0) -> dict[str, Any]:
    column: dict[str, Any] = {"name": name, "type": kind, "jsonPath": path, "description": description}
    if priority:
        column["priority"] = priority
    return column


AGE = _column("Age", ".metadata.creationTimestamp", "date", "Time since the object was created.")


def run_crd() -> Schema:
    """The DDMRun CRD."""
    columns = [
        _column("Phase", ".status.phase", description="Where the run is in its pipeline."),
        _column("Experts", ".status.experts", description="Experts trained / experts in the run."),
        _column("Progress", ".status.progress", description="Progress of the whole run."),
        _column("GPU-Hours", ".status.plan.gpuHours", "number", "GPU-hours the last plan holds.", priority=1),
        _column("GPU-Hours-Used", ".status.usage.gpuHours", "number", "GPU-hours the run's pods held so far.", 1),
        _column("Cost", ".status.plan.cost", "number", "What the last plan's GPU-hours cost.", priority=1),
        _column("Model", ".status.modelUri", description="The assembled model.", priority=1),
        _column("Reason", ".status.reason", description="Why the run is in its phase.", priority=1),
        AGE,
    ]
    status = structural_schema(DDMRunStatus, defaults=False)
    return _crd(RUN, run_spec_schema(), status, columns, [RUN_NAME_RULE])


def expert_crd() -> Schema:
    """The DDMExpert CRD (one per cluster of a run, created and owned by the operator)."""
    columns = [
        _column("Run", ".spec.run", description="The DDMRun this expert belongs to."),
        _column("Cluster", ".spec.expert", "integer", "Index of the expert's cluster."),
        _column("Examples", ".spec.examples", "integer", "Examples in the cluster."),
        _column("Phase", ".status.phase", description="State of the expert's training."),
        _column("Island", ".status.island", description="Cluster the expert trains on: home or a ComputeIsland."),
        _column("Node", ".status.node", description="Node the expert trains on (island/node on a ComputeIsland)."),
        _column("GPU", ".status.gpu", description="GPU product the expert trains on."),
        _column("Step", ".status.step", "integer", "Optimizer step reached."),
        _column("Loss", ".status.loss", "number", "Latest training loss."),
        _column("Checkpoint", ".status.lastCheckpoint.step", "integer", "Step of the newest committed checkpoint."),
        _column("Restarts", ".status.restarts", "integer", "Attempts started after a failed or lost one."),
        AGE,
    ]
    spec = structural_schema(DDMExpertSpec)
    spec["x-kubernetes-validations"] = [IMMUTABLE.render()]
    return _crd(EXPERT, spec, structural_schema(DDMExpertStatus, defaults=False), columns, [])


ISLAND_NAME_RULE = Rule(
    "self.metadata.name.size() <= 63 && self.metadata.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')"
    f" && self.metadata.name != '{HOME_ISLAND}'",
    f"metadata.name must be a DNS label (at most 63 lower-case letters, digits and '-') other than"
    f" '{HOME_ISLAND}', the implicit island of the home cluster",
)


COST_PRODUCTS_RULE = Rule(
    "self.all(product, product.size() > 0 && product.size() <= 63"
    f" && product.matches({cel_string(LABEL_VALUE_PATTERN)}))",
    "costPerGpuHour keys must be GPU products (nvidia.com/gpu.product values: label values, at most 63 characters)",
)


def _condition(kind: str, field: str) -> str:
    return f'.status.conditions[?(@.type=="{kind}")].{field}'


def island_crd() -> Schema:
    """The ComputeIsland CRD (cluster-scoped: another cluster experts may run on)."""
    columns = [
        _column("Connected", _condition("Connected", "status"), description="Whether the operator reaches the island."),
        _column("Ready", _condition("Ready", "status"), description="Whether the island accepts new experts."),
        _column("Reason", _condition("Ready", "reason"), description="Why the island is (not) Ready."),
        _column("GPUs", ".status.gpus", "integer", "Allocatable GPUs on usable nodes."),
        _column("Free", ".status.freeGpus", "integer", "GPUs no pod requests now."),
        _column("Cordoned", ".spec.cordoned", "boolean", "A cordoned island accepts no new experts."),
        _column("Failures", ".status.failedAttempts", "integer", "Failed probes in a row."),
        _column("Disconnected", ".status.disconnectedSince", "date", "Since when the island has been unreachable."),
        _column("Products", ".status.products", description="GPU products and counts.", priority=1),
        _column("Namespace", ".spec.namespace", description="Namespace used on the island.", priority=1),
        _column("Next-Retry", ".status.nextRetryTime", "date", "When the next probe is due.", priority=1),
        _column("Version", ".status.serverVersion", description="Kubernetes version of the island.", priority=1),
        AGE,
    ]
    spec = structural_schema(ComputeIslandSpec)
    spec["properties"]["costPerGpuHour"]["x-kubernetes-validations"] = [COST_PRODUCTS_RULE.render()]
    status = structural_schema(ComputeIslandStatus, defaults=False)
    return _crd(ISLAND, spec, status, columns, [ISLAND_NAME_RULE])


def all_crds() -> list[Schema]:
    """Every CRD atoll serves, in the order they are applied."""
    return [run_crd(), expert_crd(), island_crd()]
