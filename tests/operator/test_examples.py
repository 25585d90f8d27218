"""Every manifest under manifests/examples/ is valid: the models accept each DDMRun, and the
real API server accepts every document (applied for real, in a namespace no operator
watches; the quickstart also runs to the end through the operator in test_e2e_run).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from atoll.api.load import load_manifest
from tests.env.cluster import ControlPlane

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "manifests" / "examples").glob("*.yaml"))


def test_there_are_examples() -> None:
    names = {path.name for path in EXAMPLES}
    assert "heterogeneous-fleet.yaml" in names


@pytest.mark.parametrize("path", [p for p in EXAMPLES if "kind: DDMRun" in p.read_text()], ids=lambda p: p.name)
def test_every_example_run_is_a_valid_ddmrun(path: Path) -> None:
    load_manifest(path)


@pytest.mark.cluster
def test_every_example_applies_to_the_api_server(atoll_crds: ControlPlane, namespace: str) -> None:
    applied = []
    for path in EXAMPLES:
        result = atoll_crds.kubectl("apply", "-n", namespace, "-f", str(path), check=False)
        assert result.returncode == 0, f"{path.name}: {result.stderr}"
        for document in yaml.safe_load_all(path.read_text()):
            if document:
                applied.append((document["kind"], document["metadata"]["name"]))
    for kind, name in applied:
        found = json.loads(atoll_crds.kubectl("get", kind.lower(), name, "-n", namespace, "-o", "json").stdout)
        assert found["metadata"]["name"] == name
        if kind == "DDMRun":  # the API server filled the defaults from the schema
            assert found["spec"]["failurePolicy"]["maxRestarts"] >= 0
            atoll_crds.kubectl("delete", "ddmrun", name, "-n", namespace, "--wait=false")
