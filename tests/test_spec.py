"""Malformed DDMRun manifests are rejected with the bad field's path named; good ones load.

Each case mutates a valid manifest in one place and checks that SpecError names exactly
that field (camelCase path) — the contract `atoll run` and the CRD rely on.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from atoll.api import DDMRunSpec, SpecError, load_manifest, load_spec_json
from atoll.api.load import dump_spec_json, parse_manifest

Mutation = Callable[[dict[str, Any]], None]

VALID: dict[str, Any] = {
    "apiVersion": "atoll.dev/v1alpha1",
    "kind": "DDMRun",
    "metadata": {"name": "digits-quickstart"},
    "spec": {
        "dataset": {"uri": "builtin://digits", "resolution": 16},
        "partition": {"clusters": 4, "features": "pixels", "seed": 0},
        "expert": {"preset": "tiny", "steps": 800, "globalBatchSize": 64, "learningRate": 3.0e-4},
        "router": {"preset": "tiny", "steps": 400},
        "sampling": {"strategy": "top-2", "steps": 30, "guidance": 2.0},
    },
}


def _set(path: str, value: Any) -> Mutation:
    """A mutation that sets a dotted path (creating mappings on the way)."""

    def mutate(document: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = document
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value

    return mutate


def _drop(path: str) -> Mutation:
    def mutate(document: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = document
        for part in parents:
            node = node[part]
        del node[last]

    return mutate


# (case id, mutation, the field path the error must name)
MALFORMED: list[tuple[str, Mutation, str]] = [
    ("negative learning rate", _set("spec.expert.learningRate", -1e-4), "spec.expert.learningRate"),
    ("unknown field", _set("spec.expert.lr", 1e-4), "spec.expert.lr"),
    ("unknown top-level spec field", _set("spec.experts", {}), "spec.experts"),
    ("bad strategy", _set("spec.sampling.strategy", "top-3-ish"), "spec.sampling.strategy"),
    ("top-k:0", _set("spec.sampling.strategy", "top-k:0"), "spec.sampling.strategy"),
    ("threshold above 1", _set("spec.sampling.strategy", "threshold:1.5"), "spec.sampling.strategy"),
    ("zero clusters", _set("spec.partition.clusters", 0), "spec.partition.clusters"),
    ("more clusters than maxExamples", _set("spec.dataset.maxExamples", 3), "spec.partition"),
    ("resolution not a multiple of 8", _set("spec.dataset.resolution", 20), "spec.dataset.resolution"),
    ("http dataset", _set("spec.dataset.uri", "http://example.com/data"), "spec.dataset.uri"),
    ("unknown builtin dataset", _set("spec.dataset.uri", "builtin://cats"), "spec.dataset.uri"),
    (
        "micro batch above global batch",
        _set("spec.expert.microBatchSize", 128),
        "spec.expert.microBatchSize",
    ),
    (
        "router micro batch above the preset's batch",
        _set("spec.router.microBatchSize", 65),
        "spec.router.microBatchSize",
    ),
    ("bad evaluation strategy", _set("spec.evaluation.strategies", ["top-1", "best"]), "spec.evaluation.strategies[1]"),
    ("no evaluation strategies", _set("spec.evaluation.strategies", []), "spec.evaluation.strategies"),
    ("top-k above K", _set("spec.sampling.strategy", "top-k:5"), "spec.sampling"),
    ("evaluation top-k above K", _set("spec.evaluation.strategies", ["top-k:8"]), "spec.evaluation"),
    ("run name with capitals", _set("metadata.name", "Digits_Run"), "metadata.name"),
    ("wrong kind", _set("kind", "DDMJob"), "kind"),
    ("wrong apiVersion", _set("apiVersion", "atoll.dev/v1"), "apiVersion"),
    ("unknown feature extractor", _set("spec.partition.features", "resnet50"), "spec.partition.features"),
    ("unknown preset", _set("spec.expert.preset", "dit-huge"), "spec.expert.preset"),
    ("steps not a number", _set("spec.expert.steps", "many"), "spec.expert.steps"),
    ("zero sampling steps", _set("spec.sampling.steps", 0), "spec.sampling.steps"),
    ("negative guidance", _set("spec.sampling.guidance", -1), "spec.sampling.guidance"),
    ("caption dropout above 1", _set("spec.expert.captionDropout", 1.5), "spec.expert.captionDropout"),
    ("zero logit-normal std", _set("spec.router.timestepSampling.std", 0), "spec.router.timestepSampling.std"),
    ("ema decay of 1", _set("spec.expert.emaDecay", 1.0), "spec.expert.emaDecay"),
    ("http storage", _set("spec.storage.uri", "http://minio:9000/atoll"), "spec.storage.uri"),
    ("bad secret name", _set("spec.storage.secretRef", "Minio_Creds"), "spec.storage.secretRef"),
    ("negative restarts", _set("spec.failurePolicy.maxRestarts", -1), "spec.failurePolicy.maxRestarts"),
    ("negative GPU speed", _set("spec.placement.speeds", {"NVIDIA-A100": -3.0}), "spec.placement.speeds.NVIDIA-A100"),
    (
        "bad toleration operator",
        _set("spec.placement.tolerations", [{"key": "gpu", "operator": "Maybe"}]),
        "spec.placement.tolerations[0].operator",
    ),
    ("missing dataset", _drop("spec.dataset"), "spec.dataset"),
    ("steps policy", _set("spec.expert.stepsPolicy", "random"), "spec.expert.stepsPolicy"),
    ("frames of an image dataset", _set("spec.dataset.frames", 8), "spec.dataset.frames"),
    ("video preset on images", _set("spec.expert.preset", "video-tiny"), "spec.expert"),
    ("first frame condition on images", _set("spec.expert.firstFrameConditioning", 0.5), "spec.expert"),
    ("video vae on images", _set("spec.dataset.vae", "wan2.1-vae"), "spec.dataset.frames"),
    ("zero fps", _set("spec.dataset.fps", 0), "spec.dataset.fps"),
    # URIs that could make a run's prefix anything but a plain path under the root
    ("storage query", _set("spec.storage.uri", "s3://atoll/runs?x"), "spec.storage.uri"),
    ("storage fragment", _set("spec.storage.uri", "s3://atoll/runs#x"), "spec.storage.uri"),
    ("storage dot-dot", _set("spec.storage.uri", "s3://atoll/runs/../other"), "spec.storage.uri"),
    ("storage dot", _set("spec.storage.uri", "s3://atoll/./runs"), "spec.storage.uri"),
    ("storage empty segment", _set("spec.storage.uri", "s3://atoll//runs"), "spec.storage.uri"),
    ("storage percent-encoded", _set("spec.storage.uri", "s3://atoll/runs%2F.."), "spec.storage.uri"),
    ("storage backslash", _set("spec.storage.uri", "/data\\runs"), "spec.storage.uri"),
    ("storage whitespace", _set("spec.storage.uri", "s3://atoll/my runs"), "spec.storage.uri"),
    ("storage control character", _set("spec.storage.uri", "/data/runs\x00"), "spec.storage.uri"),
    ("local storage dot-dot", _set("spec.storage.uri", "/data/../etc"), "spec.storage.uri"),
    ("dataset query", _set("spec.dataset.uri", "s3://data/shards?versionId=1"), "spec.dataset.uri"),
    ("dataset dot-dot", _set("spec.dataset.uri", "/data/../../etc"), "spec.dataset.uri"),
    ("dataset newline", _set("spec.dataset.uri", "s3://data/shards\n"), "spec.dataset.uri"),
    # tolerations and nodeSelector follow Kubernetes' rules
    (
        "toleration key not a qualified name",
        _set("spec.placement.tolerations", [{"key": "bad key!", "operator": "Exists"}]),
        "spec.placement.tolerations[0].key",
    ),
    (
        "toleration Exists with a value",
        _set("spec.placement.tolerations", [{"key": "spot", "operator": "Exists", "value": "yes"}]),
        "spec.placement.tolerations[0].value",
    ),
    (
        "toleration Equal without a key",
        _set("spec.placement.tolerations", [{"operator": "Equal", "value": "yes"}]),
        "spec.placement.tolerations[0].operator",
    ),
    (
        "toleration value not a label value",
        _set("spec.placement.tolerations", [{"key": "spot", "value": "-yes-"}]),
        "spec.placement.tolerations[0].value",
    ),
    (
        "toleration effect",
        _set("spec.placement.tolerations", [{"key": "spot", "operator": "Exists", "effect": "Evict"}]),
        "spec.placement.tolerations[0].effect",
    ),
    (
        "tolerationSeconds without NoExecute",
        _set("spec.placement.tolerations", [{"key": "spot", "operator": "Exists", "tolerationSeconds": 5}]),
        "spec.placement.tolerations[0].tolerationSeconds",
    ),
    ("nodeSelector key", _set("spec.placement.nodeSelector", {"pool/name/x": "a"}), "spec.placement.nodeSelector"),
    (
        "nodeSelector value",
        _set("spec.placement.nodeSelector", {"pool": "a b"}),
        "spec.placement.nodeSelector.pool",
    ),
    # new bounds
    ("zero cpu per GPU", _set("spec.placement.cpuPerGpu", 0), "spec.placement.cpuPerGpu"),
    ("memory per GPU too large", _set("spec.placement.memoryPerGpuGiB", 5000), "spec.placement.memoryPerGpuGiB"),
    (
        "pending timeout too short",
        _set("spec.failurePolicy.pendingTimeoutSeconds", 1),
        "spec.failurePolicy.pendingTimeoutSeconds",
    ),
    (
        "negative store outage",
        _set("spec.failurePolicy.storeOutageSeconds", -1),
        "spec.failurePolicy.storeOutageSeconds",
    ),
    ("node lost too soon", _set("spec.failurePolicy.nodeLostSeconds", 0), "spec.failurePolicy.nodeLostSeconds"),
    ("island lost too soon", _set("spec.failurePolicy.islandLostSeconds", 5), "spec.failurePolicy.islandLostSeconds"),
    ("no store retry", _set("spec.failurePolicy.storeRetrySeconds", 0), "spec.failurePolicy.storeRetrySeconds"),
    # pretrained weights need a source
    ("DINOv2 without weights", _set("spec.partition.features", "dinov2-vitl14"), "spec.partition.features"),
    ("SD VAE without weights", _set("spec.dataset.vae", "sd-vae-ft-mse"), "spec.dataset.vae"),
    ("CLIP text without weights", _set("spec.dataset.textEncoder", "clip-vitl14"), "spec.dataset.textEncoder"),
    ("weights store without uri", _set("spec.weights", {"source": "store"}), "spec.weights.uri"),
    ("weights uri with a query", _set("spec.weights", {"source": "store", "uri": "s3://w/x?y"}), "spec.weights.uri"),
    ("weights path relative", _set("spec.weights", {"source": "volume", "path": "weights"}), "spec.weights.path"),
    # the pod template may not touch what is Atoll's
    ("template atoll label", _set("spec.template.labels", {"atoll.dev/run": "x"}), "spec.template.labels"),
    (
        "template annotation under a subdomain of atoll.dev",
        _set("spec.template.annotations", {"x.atoll.dev/y": "1"}),
        "spec.template.annotations",
    ),
    (
        "template MINIO env",
        _set("spec.template.env", [{"name": "MINIO_ENDPOINT", "value": "x"}]),
        "spec.template.env[0].name",
    ),
    ("template bad env name", _set("spec.template.env", [{"name": "1X", "value": "x"}]), "spec.template.env[0].name"),
    (
        "template env value and valueFrom",
        _set(
            "spec.template.env",
            [{"name": "X", "value": "1", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}],
        ),
        "spec.template.env[0].valueFrom",
    ),
    (
        "template volume named scratch",
        _set("spec.template.volumes", [{"name": "scratch", "emptyDir": {}}]),
        "spec.template.volumes[0].name",
    ),
    (
        "template volume with two sources",
        _set("spec.template.volumes", [{"name": "w", "emptyDir": {}, "nfs": {"server": "s", "path": "/"}}]),
        "spec.template.volumes[0]",
    ),
    (
        "template mount of an unknown volume",
        _set("spec.template.volumeMounts", [{"name": "weights", "mountPath": "/weights"}]),
        "spec.template.volumeMounts",
    ),
    (
        "template mount over /tmp",
        _set(
            "spec.template",
            {"volumes": [{"name": "w", "emptyDir": {}}], "volumeMounts": [{"name": "w", "mountPath": "/tmp"}]},
        ),
        "spec.template.volumeMounts[0].mountPath",
    ),
    (
        "template negative grace period",
        _set("spec.template.terminationGracePeriodSeconds", -1),
        "spec.template.terminationGracePeriodSeconds",
    ),
    (
        "template priority class",
        _set("spec.template.priorityClassName", "High_Priority"),
        "spec.template.priorityClassName",
    ),
    (
        "backoff cap below first backoff",
        _set("spec.failurePolicy", {"backoffSeconds": 60, "maxBackoffSeconds": 5}),
        "spec.failurePolicy.maxBackoffSeconds",
    ),
]


VIDEO: dict[str, Any] = {
    **VALID,
    "spec": {
        **VALID["spec"],
        "dataset": {"uri": "builtin://moving-digits", "resolution": 16, "frames": 9, "fps": 8},
        "expert": {"preset": "video-tiny", "steps": 100, "firstFrameConditioning": 0.3},
    },
}
VIDEO_MALFORMED: list[tuple[str, Mutation, str]] = [
    ("image preset on clips", _set("spec.expert.preset", "tiny"), "spec.expert"),
    ("a moving dataset without frames", _drop("spec.dataset.frames"), "spec.dataset.frames"),
    (
        "wan vae with 8 frames",
        _set("spec.dataset", {"uri": "builtin://moving-digits", "frames": 8, "vae": "wan2.1-vae"}),
        "spec.dataset.frames",
    ),
    ("sd vae on clips", _set("spec.dataset.vae", "sd-vae-ft-mse"), "spec.dataset.frames"),
    ("a query on a built-in", _set("spec.dataset.uri", "builtin://moving-digits?bounce=1"), "spec.dataset.uri"),
]


def test_a_video_run_loads() -> None:
    spec = parse_manifest(copy.deepcopy(VIDEO), "run.yaml").spec
    assert spec.dataset.video
    assert spec.dataset.frames == 9
    assert spec.expert.first_frame_conditioning == 0.3
    assert spec.expert.recipe().global_batch_size == 16  # video-tiny's recipe


@pytest.mark.parametrize(
    ("mutation", "field"), [(m, f) for _, m, f in VIDEO_MALFORMED], ids=[c for c, _, _ in VIDEO_MALFORMED]
)
def test_malformed_video_spec_names_the_field(mutation: Mutation, field: str) -> None:
    document = copy.deepcopy(VIDEO)
    mutation(document)
    with pytest.raises(SpecError) as caught:
        parse_manifest(document, "run.yaml")
    paths = [problem.split(": ", 1)[0] for problem in caught.value.problems]
    assert paths == [field], caught.value.problems


@pytest.mark.parametrize(("mutation", "field"), [(m, f) for _, m, f in MALFORMED], ids=[c for c, _, _ in MALFORMED])
def test_malformed_spec_names_the_field(mutation: Mutation, field: str) -> None:
    document = copy.deepcopy(VALID)
    mutation(document)
    with pytest.raises(SpecError) as caught:
        parse_manifest(document, "run.yaml")
    paths = [problem.split(": ", 1)[0] for problem in caught.value.problems]
    assert paths == [field], caught.value.problems
    assert field in str(caught.value)


def test_every_problem_is_listed_at_once() -> None:
    document = copy.deepcopy(VALID)
    _set("spec.expert.learningRate", -1)(document)
    _set("spec.partition.clusters", 0)(document)
    _set("spec.dataset.resolution", 12)(document)
    with pytest.raises(SpecError) as caught:
        parse_manifest(document, "run.yaml")
    paths = sorted(problem.split(": ", 1)[0] for problem in caught.value.problems)
    assert paths == ["spec.dataset.resolution", "spec.expert.learningRate", "spec.partition.clusters"]


def test_valid_manifest_round_trips_through_spec_json() -> None:
    manifest = parse_manifest(copy.deepcopy(VALID), "run.yaml")
    spec = manifest.spec
    assert spec.partition.clusters == 4
    assert spec.expert.recipe().global_batch_size == 64
    again = load_spec_json(dump_spec_json(spec))
    assert again == spec
    assert '"globalBatchSize": 64' in dump_spec_json(spec)


def test_default_strategies_are_not_checked_against_one_cluster() -> None:
    """A K=1 run (the monolith baseline) keeps the defaults; only explicit choices are checked."""
    document = copy.deepcopy(VALID)
    _set("spec.partition.clusters", 1)(document)
    _drop("spec.sampling")(document)
    assert parse_manifest(document, "run.yaml").spec.partition.clusters == 1


def test_spec_json_errors_are_prefixed_with_spec() -> None:
    with pytest.raises(SpecError) as caught:
        load_spec_json('{"dataset": {"uri": "builtin://digits"}, "router": {"steps": -5}}')
    assert caught.value.problems[0].startswith("spec.router.steps:")


def test_yaml_files(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    with pytest.raises(SpecError, match="cannot read"):
        load_manifest(missing)
    two = tmp_path / "two.yaml"
    two.write_text("kind: ConfigMap\n---\nkind: Secret\n")
    with pytest.raises(SpecError, match="expected exactly one DDMRun"):
        load_manifest(two)


def test_every_default_needs_nothing_but_a_dataset() -> None:
    """A spec with every default is valid and needs no pretrained weights (features: pixels)."""
    spec = DDMRunSpec.model_validate({"dataset": {"uri": "builtin://digits"}})
    assert spec.partition.features == "pixels"
    assert (spec.dataset.vae, spec.dataset.text_encoder, spec.weights.source) == ("identity", "hashed-bow", "none")
    assert spec.failure_policy.pending_timeout_seconds == 600
    assert spec.storage.adopt_retained is False


def test_pretrained_encoders_load_once_weights_have_a_source() -> None:
    document = copy.deepcopy(VALID)
    document["spec"]["partition"]["features"] = "dinov2-vitl14"
    document["spec"]["dataset"]["vae"] = "sd-vae-ft-mse"
    document["spec"]["weights"] = {"source": "store", "uri": "s3://weights/pretrained"}
    assert parse_manifest(document, "run.yaml").spec.weights.uri == "s3://weights/pretrained"


@pytest.mark.parametrize(
    "uri",
    ["s3://atoll/runs", "s3://atoll/runs/", "s3://atoll", "/data/runs", "runs", "file:///data/runs", "~/runs/v1.2"],
)
def test_plain_store_uris_are_accepted(uri: str) -> None:
    document = copy.deepcopy(VALID)
    document["spec"]["storage"] = {"uri": uri}
    assert parse_manifest(document, "run.yaml").spec.storage.uri == uri


def test_examples_are_valid() -> None:
    """Every DDMRun under manifests/examples/ loads (other kinds, e.g. Secrets, are skipped)."""
    examples = sorted((Path(__file__).parents[1] / "manifests" / "examples").glob("*.yaml"))
    runs = [path for path in examples if "kind: DDMRun" in path.read_text()]
    assert any(path.name == "quickstart.yaml" for path in runs)
    for path in runs:
        assert isinstance(load_manifest(path).spec, DDMRunSpec), path
