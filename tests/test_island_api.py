"""The ComputeIsland API and DDMRun spec.placement.islands: bad input is refused naming the field."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from pydantic import ValidationError

from atoll.api import SpecError
from atoll.api.errors import format_validation_error
from atoll.api.island import ComputeIslandManifest, ComputeIslandStatus
from atoll.api.load import parse_manifest
from atoll.api.placement import HOME_ISLAND

RUN: dict[str, Any] = {
    "apiVersion": "atoll.dev/v1alpha1",
    "kind": "DDMRun",
    "metadata": {"name": "digits"},
    "spec": {"dataset": {"uri": "builtin://digits"}},
}
ISLAND: dict[str, Any] = {
    "apiVersion": "atoll.dev/v1alpha1",
    "kind": "ComputeIsland",
    "metadata": {"name": "lab"},
    "spec": {"kubeconfigSecretRef": {"name": "atoll-island-lab"}, "namespace": "atoll"},
}


def _run(islands: dict[str, Any]) -> dict[str, Any]:
    document = copy.deepcopy(RUN)
    document["spec"]["placement"] = {"islands": islands}
    return document


def test_islands_default_to_every_island() -> None:
    islands = parse_manifest(RUN, "run.yaml").spec.placement.islands
    assert (islands.restrict, islands.prefer) == ([], [])
    chosen = parse_manifest(_run({"restrict": [HOME_ISLAND, "lab"], "prefer": ["lab"]}), "run.yaml")
    assert chosen.spec.placement.islands.restrict == ["home", "lab"]


@pytest.mark.parametrize(
    ("islands", "field"),
    [
        ({"restrict": ["Lab"]}, "spec.placement.islands.restrict[0]"),
        ({"restrict": ["lab", "lab"]}, "spec.placement.islands.restrict"),
        ({"prefer": ["a", "-b"]}, "spec.placement.islands.prefer[1]"),
        ({"restrict": ["home"], "prefer": ["lab"]}, "spec.placement.islands.prefer"),
        ({"only": ["lab"]}, "spec.placement.islands.only"),
    ],
    ids=["upper-case", "repeated", "not-a-dns-label", "prefer-outside-restrict", "unknown-field"],
)
def test_bad_island_placement_names_the_field(islands: dict[str, Any], field: str) -> None:
    with pytest.raises(SpecError) as caught:
        parse_manifest(_run(islands), "run.yaml")
    assert [problem.split(": ", 1)[0] for problem in caught.value.problems] == [field], caught.value.problems


def test_a_minimal_island_gets_its_defaults() -> None:
    island = ComputeIslandManifest.model_validate(ISLAND)
    assert island.spec.kubeconfig_secret_ref.key == "kubeconfig"
    assert (island.spec.cordoned, island.spec.store_endpoint, island.spec.cost_per_gpu_hour) == (False, None, {})
    full = copy.deepcopy(ISLAND)
    full["spec"] |= {"storeEndpoint": "minio.lab.example:9000", "costPerGpuHour": {"NVIDIA-L4": 0.8}, "cordoned": True}
    assert ComputeIslandManifest.model_validate(full).spec.cost_per_gpu_hour == {"NVIDIA-L4": 0.8}


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        ("metadata.name", "home", "metadata.name"),
        ("metadata.name", "Lab_1", "metadata.name"),
        ("spec.namespace", "kube_system", "spec.namespace"),
        ("spec.kubeconfigSecretRef.name", "Bad Name", "spec.kubeconfigSecretRef.name"),
        ("spec.kubeconfigSecretRef.key", "a/b", "spec.kubeconfigSecretRef.key"),
        ("spec.storeEndpoint", "http://minio:9000", "spec.storeEndpoint"),
        ("spec.costPerGpuHour", {"NVIDIA L4": 1.0}, "spec.costPerGpuHour"),
        ("spec.costPerGpuHour", {"NVIDIA-L4": -1.0}, "spec.costPerGpuHour.NVIDIA-L4"),
        ("spec.cordoned", "maybe", "spec.cordoned"),
        ("spec.kubeconfig", "inline", "spec.kubeconfig"),
    ],
    ids=[
        "reserved-name",
        "name-not-dns-label",
        "namespace",
        "secret-name",
        "secret-key",
        "endpoint-with-scheme",
        "cost-product",
        "negative-cost",
        "cordoned-not-bool",
        "unknown-field",
    ],
)
def test_bad_island_names_the_field(path: str, value: Any, field: str) -> None:
    document = copy.deepcopy(ISLAND)
    *parents, leaf = path.split(".")
    node = document
    for part in parents:
        node = node[part]
    node[leaf] = value
    with pytest.raises(ValidationError) as caught:
        ComputeIslandManifest.model_validate(document)
    problems = format_validation_error(caught.value)
    assert [problem.split(": ", 1)[0] for problem in problems] == [field], problems


def test_island_status_is_optional_on_the_wire() -> None:
    status = ComputeIslandStatus.model_validate({})
    assert (status.failed_attempts, status.conditions, status.inventory) == (0, [], [])
    with pytest.raises(ValidationError):
        ComputeIslandStatus.model_validate(
            {"conditions": [{"type": "Complete", "status": "True", "reason": "X", "lastTransitionTime": "2026-01-01"}]}
        )
