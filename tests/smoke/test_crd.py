"""Smoke test (d): the real API server serves a small CRD and rejects an invalid object,
naming the bad field (structural schema validation, through kubectl apply)."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.env import kube
from tests.env.cluster import ControlPlane

pytestmark = pytest.mark.cluster

CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.smoke.atoll.dev"},
    "spec": {
        "group": "smoke.atoll.dev",
        "scope": "Namespaced",
        "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "shortNames": ["wdg"]},
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {
                                "type": "object",
                                "required": ["size"],
                                "properties": {
                                    "size": {"type": "integer", "minimum": 1},
                                    "color": {"type": "string", "enum": ["red", "blue"]},
                                },
                            }
                        },
                    }
                },
            }
        ],
    },
}


def widget(name: str, spec: dict[str, object]) -> str:
    return json.dumps({"apiVersion": "smoke.atoll.dev/v1", "kind": "Widget", "metadata": {"name": name}, "spec": spec})


@pytest.fixture
def widget_crd(control_plane: ControlPlane) -> object:
    control_plane.kubectl("apply", "-f", "-", input=json.dumps(CRD))
    control_plane.kubectl("wait", "--for=condition=Established", "crd/widgets.smoke.atoll.dev", "--timeout=60s")
    yield CRD
    control_plane.kubectl("delete", "crd", "widgets.smoke.atoll.dev", "--wait=false")


def test_crd_is_served_and_validates(control_plane: ControlPlane, widget_crd: object, namespace: str) -> None:
    control_plane.kubectl("apply", "-n", namespace, "-f", "-", input=widget("ok", {"size": 3, "color": "red"}))

    # The discovery cache of kubectl can lag a fresh CRD by a moment.
    def listed_by_short_name() -> str:
        return control_plane.kubectl("get", "wdg", "-n", namespace, "-o", "name", check=False).stdout.strip()

    listed = kube.wait_for(listed_by_short_name, timeout=30, what="the widget listed by its short name")
    assert listed == "widget.smoke.atoll.dev/ok"

    with pytest.raises(subprocess.CalledProcessError) as rejected:
        control_plane.kubectl("apply", "-n", namespace, "-f", "-", input=widget("bad", {"size": 0, "color": "green"}))
    stderr = rejected.value.stderr
    assert "spec.size" in stderr, stderr
    assert "spec.color" in stderr, stderr
    assert "Invalid" in stderr or "invalid" in stderr, stderr

    with pytest.raises(subprocess.CalledProcessError) as missing:
        control_plane.kubectl("apply", "-n", namespace, "-f", "-", input=widget("empty", {}))
    assert "spec.size" in missing.value.stderr, missing.value.stderr
    assert "Required" in missing.value.stderr, missing.value.stderr
    assert control_plane.kubectl("get", "widget", "bad", "-n", namespace, check=False).returncode != 0
