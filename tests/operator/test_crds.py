"""The CRDs are generated from the API models, structural, documented, and crds/ is current."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from atoll.cli import main as atoll_main
from atoll.operator.crd import all_crds, crd_file_name, expert_crd, island_crd, render_crd, run_crd
from atoll.operator.crd.schema import walk

CRDS_DIR = Path(__file__).resolve().parents[2] / "crds"
FORBIDDEN = ("$ref", "$defs", "anyOf", "allOf", "oneOf", "title", "const", "nullable")


def _schema(crd: dict[str, Any]) -> dict[str, Any]:
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def test_crds_directory_is_current() -> None:
    expected = {crd_file_name(crd): render_crd(crd) for crd in all_crds()}
    found = {path.name: path.read_text() for path in CRDS_DIR.glob("*.yaml")}
    assert found == expected, "crds/ is stale: run `atoll crds --write crds`"


def test_atoll_crds_prints_every_crd(capsys: pytest.CaptureFixture[str]) -> None:
    assert atoll_main(["crds"]) == 0
    documents = [d for d in yaml.safe_load_all(capsys.readouterr().out) if d]
    assert [d["metadata"]["name"] for d in documents] == [
        "ddmruns.atoll.dev",
        "ddmexperts.atoll.dev",
        "computeislands.atoll.dev",
    ]


@pytest.mark.parametrize("crd", [run_crd(), expert_crd(), island_crd()], ids=["DDMRun", "DDMExpert", "ComputeIsland"])
def test_schemas_are_structural_and_documented(crd: dict[str, Any]) -> None:
    for path, node in walk(_schema(crd)):
        assert not set(FORBIDDEN) & set(node), f"{path} keeps {set(FORBIDDEN) & set(node)}"
        assert node.get("additionalProperties") is not False, path
        assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields"), f"{path} has no type"
        if path.startswith((".spec.", ".status.")) and not path.endswith(("[]", "{}")):
            assert node.get("description"), f"{path} has no description"
        assert isinstance(node.get("exclusiveMinimum", False), bool), f"{path}: OpenAPI v3 wants a boolean"


def test_run_crd_names_columns_and_subresources() -> None:
    crd = run_crd()
    names = crd["spec"]["names"]
    assert (names["kind"], names["plural"], names["shortNames"], names["categories"]) == (
        "DDMRun",
        "ddmruns",
        ["ddm"],
        ["atoll"],
    )
    version = crd["spec"]["versions"][0]
    assert version["name"] == "v1alpha1"
    assert version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"] if not c.get("priority")]
    assert columns == ["Phase", "Experts", "Progress", "Age"]


def test_expert_crd_columns() -> None:
    crd = expert_crd()
    assert crd["spec"]["names"]["shortNames"] == ["ddmx"]
    columns = [c["name"] for c in crd["spec"]["versions"][0]["additionalPrinterColumns"]]
    for wanted in ("Run", "Cluster", "Examples", "Node", "GPU", "Step", "Loss", "Checkpoint", "Restarts"):
        assert wanted in columns


def test_island_crd_is_cluster_scoped_with_status_columns() -> None:
    crd = island_crd()
    names = crd["spec"]["names"]
    assert (crd["spec"]["scope"], names["kind"], names["shortNames"]) == ("Cluster", "ComputeIsland", ["island"])
    columns = {c["name"]: c["jsonPath"] for c in crd["spec"]["versions"][0]["additionalPrinterColumns"]}
    assert columns["Connected"] == '.status.conditions[?(@.type=="Connected")].status'
    for wanted in ("Ready", "Reason", "GPUs", "Free", "Cordoned", "Failures", "Disconnected", "Next-Retry", "Products"):
        assert wanted in columns
    conditions = _schema(crd)["properties"]["status"]["properties"]["conditions"]["items"]
    assert conditions["properties"]["type"]["enum"] == ["Connected", "Ready"]


def test_defaults_bounds_enums_and_cel_rules_reach_the_schema() -> None:
    spec = _schema(run_crd())["properties"]["spec"]
    expert = spec["properties"]["expert"]
    assert expert["properties"]["preset"]["enum"] == [
        *("tiny", "tiny-w2", "dit-s/2", "dit-b/2", "dit-l/2", "dit-xl/2"),
        *("video-nano", "video-nano-w2", "video-tiny", "video-tiny-w2", "video-s", "video-b", "wan-1.3b"),
    ]
    assert expert["properties"]["learningRate"] == {
        "type": "number",
        "description": expert["properties"]["learningRate"]["description"],
        "exclusiveMinimum": True,
        "maximum": 1,
        "minimum": 0,
    }
    # Optional fields are plain optional properties, not nullable unions.
    assert "globalBatchSize" not in expert.get("required", [])
    # default_factory defaults are written whole, e.g. the router's uniform σ sampling.
    router_sigma = spec["properties"]["router"]["properties"]["timestepSampling"]
    assert router_sigma["default"]["distribution"] == "uniform"
    assert spec["properties"]["partition"]["default"]["clusters"] == 8
    rules = [r["rule"] for r in expert["x-kubernetes-validations"]]
    assert "self == oldSelf" in rules
    assert any("microBatchSize" in rule and "'tiny': 64" in rule for rule in rules)
    storage_rules = [r["rule"] for r in spec["properties"]["storage"]["x-kubernetes-validations"]]
    assert any("secretRef" in rule for rule in storage_rules)
