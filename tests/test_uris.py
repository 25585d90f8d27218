"""The URI rules (atoll.api.uris) and Kubernetes' name rules (atoll.api.names): the regex the
CRD carries and the reason pydantic gives always agree, on URIs that must pass and ones that
could move a run's prefix out from under its root."""

from __future__ import annotations

import re

import pytest

from atoll.api.names import (
    LABEL_VALUE_PATTERN,
    QUALIFIED_NAME_PATTERN,
    label_value_problem,
    qualified_name_problem,
)
from atoll.api.uris import (
    DATASET_URI_PATTERN,
    STORE_URI_PATTERN,
    absolute_path_problem,
    local_root_problem,
    prefix_problem,
    uri_problem,
)

GOOD = [
    "s3://atoll/runs",
    "s3://atoll/runs/",
    "s3://atoll",
    "s3://my.bucket-1/a/b_c/d~e/f+g=h,i@j-k/v1.2",
    "/data/runs",
    "runs",
    "runs/v2/",
    "~/runs",
    "file:///data/runs",
    "file://runs",
    "/data/.hidden/runs",
    "/data/run...s",
]
BAD = {
    "s3://atoll/runs?x": "query",
    "s3://atoll/runs#x": "fragment",
    "s3://atoll/runs%2F..": "percent",
    "s3://atoll/runs/../x": "'..'",
    "s3://atoll/runs/..": "'..'",
    "s3://atoll/./runs": "'.'",
    "s3://atoll//runs": "empty",
    "s3://atoll/runs//x": "empty",
    "s3://atoll/a\\b": "backslash",
    "s3://atoll/a b": "whitespace",
    "s3://atoll/a\tb": "control",
    "s3://atoll/a\u00a0b": "whitespace",
    "s3://atoll/runs\n": "control",
    "s3://atoll/a\x00": "control",
    "s3://Atoll/runs": "bucket",
    "s3://a/runs": "bucket",
    "s3:///runs": "bucket",
    "http://atoll/runs": "scheme",
    "/": "no directory",
    "": "empty",
    ".": "'.'",
    "..": "'..'",
    "./runs": "'.'",
    "/data/runs/.../x": "'...'",
    "/data/ünïcode": "path segments use only",
    "/data/a:b": "path segments use only",
    "file://": "no directory",
}


@pytest.mark.parametrize("uri", GOOD)
def test_plain_uris_pass_the_regex_and_the_checker(uri: str) -> None:
    assert uri_problem(uri) is None
    assert re.fullmatch(STORE_URI_PATTERN, uri)
    assert uri_problem(uri, dataset=True) is None


@pytest.mark.parametrize(("uri", "why"), list(BAD.items()))
def test_escaping_uris_are_refused_with_the_reason(uri: str, why: str) -> None:
    problem = uri_problem(uri)
    assert problem is not None
    assert why in problem
    assert not re.fullmatch(STORE_URI_PATTERN, uri)
    assert not re.fullmatch(DATASET_URI_PATTERN, uri)


def test_builtin_datasets_are_dataset_uris_only() -> None:
    assert uri_problem("builtin://digits", dataset=True) is None
    assert "unknown built-in dataset 'cats'" in (uri_problem("builtin://cats", dataset=True) or "")
    assert "unsupported scheme builtin://" in (uri_problem("builtin://digits") or "")


def test_child_prefixes_and_local_roots() -> None:
    assert prefix_problem("ns/run") is None
    for prefix, why in {"": "at least one", "..": "'..'", "a/../b": "'..'", "a//b": "empty", ".": "'.'"}.items():
        assert why in (prefix_problem(prefix) or ""), prefix
    assert "query" in (prefix_problem("run?x") or "")
    assert local_root_problem("/home/Jane Doe/.atoll/runs") is None  # people's workdirs may hold spaces
    assert "control" in (local_root_problem("/data/runs\x00/etc") or "")
    assert "backslash" in (local_root_problem("C:\\runs") or "")
    assert absolute_path_problem("/weights") is None
    assert "absolute" in (absolute_path_problem("weights") or "")
    assert "'..'" in (absolute_path_problem("/weights/../etc") or "")


@pytest.mark.parametrize(
    ("key", "why"),
    [
        ("nvidia.com/gpu", None),
        ("dedicated", None),
        ("a" * 63, None),
        ("a" * 64, "no more than 63"),
        ("/gpu", "prefix part must be non-empty"),
        ("Example.com/gpu", "DNS subdomain"),
        ("x/y/z", "DNS subdomain"),
        ("-gpu", "start and end"),
        ("gpu key", "alphanumeric"),
        ("example.com/", "name part must be non-empty"),
        ("a" * 254 + "/gpu", "253"),
    ],
)
def test_qualified_names_follow_kubernetes(key: str, why: str | None) -> None:
    problem = qualified_name_problem(key)
    if why is None:
        assert problem is None
        assert re.fullmatch(QUALIFIED_NAME_PATTERN, key)
    else:
        assert problem is not None
        assert why in problem
        if len(key.rpartition("/")[0]) <= 253:  # the regex has no length bound on the prefix (CEL checks it)
            assert not re.fullmatch(QUALIFIED_NAME_PATTERN, key)


@pytest.mark.parametrize(
    ("value", "ok"), [("", True), ("train", True), ("a.b_c-d", True), ("-a", False), ("a b", False), ("a" * 64, False)]
)
def test_label_values_follow_kubernetes(value: str, ok: bool) -> None:
    assert (label_value_problem(value) is None) is ok
    assert bool(re.fullmatch(LABEL_VALUE_PATTERN, value)) is ok
