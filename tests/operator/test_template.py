"""spec.template merged onto built stage pods (atoll.operator.template.apply_template): what the
user adds lands on the pod, what is Atoll's stays Atoll's, and the builder applies it last."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from atoll.api.spec import DDMRunSpec
from atoll.api.template import PodTemplate
from atoll.operator.pods import build_pod
from atoll.operator.settings import OperatorSettings
from atoll.operator.template import TemplateConflictError, apply_template
from tests.operator.test_pods import attempt

TEMPLATE = PodTemplate.model_validate(
    {
        "labels": {"team": "vision", "app.kubernetes.io/name": "not-atoll"},
        "annotations": {"example.com/cost-center": "42"},
        "imagePullSecrets": [{"name": "registry"}],
        "priorityClassName": "training-high",
        "terminationGracePeriodSeconds": 300,
        "env": [
            {"name": "HF_HOME", "value": "/weights/hf"},
            {"name": "PYTHONUNBUFFERED", "value": "0"},
            {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}},
        ],
        "volumes": [{"name": "weights", "persistentVolumeClaim": {"claimName": "weights", "readOnly": True}}],
        "volumeMounts": [{"name": "weights", "mountPath": "/weights", "readOnly": True}],
    }
)


def pod() -> dict[str, Any]:
    spec = DDMRunSpec.model_validate({"dataset": {"uri": "builtin://digits"}, "partition": {"clusters": 4}})
    return build_pod(attempt(), spec, OperatorSettings())


def test_the_overlay_lands_and_atoll_keeps_its_own() -> None:
    built = pod()
    original = copy.deepcopy(built)
    merged = apply_template(built, TEMPLATE)
    assert built == original, "the input manifest is never modified"
    labels = merged["metadata"]["labels"]
    assert labels["team"] == "vision"
    assert labels["app.kubernetes.io/name"] == "atoll", "a label Atoll set keeps Atoll's value"
    assert labels["atoll.dev/run"] == "r"
    assert merged["metadata"]["annotations"]["example.com/cost-center"] == "42"
    spec = merged["spec"]
    assert spec["imagePullSecrets"] == [{"name": "registry"}]
    assert spec["priorityClassName"] == "training-high"
    assert spec["terminationGracePeriodSeconds"] == 300
    assert [v["name"] for v in spec["volumes"]] == ["scratch", "weights"]
    assert spec["volumes"][1] == {
        "name": "weights",
        "persistentVolumeClaim": {"claimName": "weights", "readOnly": True},
    }
    [container] = spec["containers"]
    env = {item["name"]: item for item in container["env"]}
    assert env["HF_HOME"] == {"name": "HF_HOME", "value": "/weights/hf"}
    assert env["PYTHONUNBUFFERED"]["value"] == "0", "the user's value replaces one Atoll set but does not own"
    assert [item["name"] for item in container["env"]].count("PYTHONUNBUFFERED") == 1
    assert env["HF_TOKEN"]["valueFrom"] == {"secretKeyRef": {"name": "hf", "key": "token"}}
    before = {item["name"]: item for item in original["spec"]["containers"][0]["env"]}
    assert env["MINIO_ACCESS_KEY"] == before["MINIO_ACCESS_KEY"], "credentials stay by reference"
    assert "value" not in env["MINIO_ACCESS_KEY"]
    assert container["volumeMounts"] == [
        {"name": "scratch", "mountPath": "/tmp"},
        {"name": "weights", "mountPath": "/weights", "readOnly": True},
    ]
    assert container["args"] == original["spec"]["containers"][0]["args"], "the command is Atoll's"


def test_build_pod_applies_the_spec_template() -> None:
    spec = DDMRunSpec.model_validate(
        {"dataset": {"uri": "builtin://digits"}, "template": TEMPLATE.model_dump(by_alias=True, exclude_none=True)}
    )
    built = build_pod(attempt(), spec, OperatorSettings())
    assert built["spec"]["priorityClassName"] == "training-high"
    assert built["metadata"]["labels"]["team"] == "vision"
    assert apply_template(pod(), None) == pod()


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda t: t.volumes.__setitem__(0, t.volumes[0].model_copy(update={"name": "scratch"})), "volumes[0].name"),
        (
            lambda t: t.volume_mounts.__setitem__(0, t.volume_mounts[0].model_copy(update={"mount_path": "/tmp"})),
            "mountPath",
        ),
        (lambda t: t.env.__setitem__(0, t.env[0].model_copy(update={"name": "MINIO_SECRET_KEY"})), "env[0].name"),
        (lambda t: t.labels.__setitem__("atoll.dev/run", "other"), "labels"),
    ],
    ids=["Atoll's volume", "Atoll's mount path", "Atoll's env", "Atoll's label"],
)
def test_a_clash_the_validation_missed_is_an_error_not_a_silent_drop(change: Any, field: str) -> None:
    template = TEMPLATE.model_copy(deep=True)
    change(template)  # model_copy skips validation, as a template from an unvalidated source would
    with pytest.raises(TemplateConflictError, match=field.replace("[", r"\[").replace("]", r"\]")):
        apply_template(pod(), template)
