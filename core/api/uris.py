"""The rules a storage, dataset or weights URI must follow, in one place.

The operator roots every run at `<storage.uri>/<namespace>/<run>` and may delete that
prefix. A URI whose appended suffix can land anywhere but under the root (a query or
fragment that `urlsplit` swallows it into, `..`/`.`/empty segments, percent-encoding,
backslashes, whitespace or control characters) could make one run's prefix the shared
root. So such URIs are refused: by the CRD (the regexes below, in the schema the API
server checks), by the pydantic models (the same regexes, plus a reason that says what is
wrong) and again by the stores (atoll.store) when they open one. Pure: no I/O here.
"""

from __future__ import annotations

import re

SEGMENT_CHARS = "A-Za-z0-9._~+=,@-"
"""Characters a path segment may use: letters, digits and . _ ~ + = , @ -"""
_SEGMENT = rf"[{SEGMENT_CHARS}]*[A-Za-z0-9_~+=,@-][{SEGMENT_CHARS}]*"
"""One path segment: never empty and never only dots (so never `.` or `..`)."""
_PATH = rf"{_SEGMENT}(/{_SEGMENT})*"
_BUCKET = r"[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]"
_S3 = rf"s3://{_BUCKET}(/{_PATH})?/?"
_LOCAL = rf"/?{_PATH}/?"
_FILE = rf"file://{_LOCAL}"

BUILTIN_IMAGE_DATASETS = ("digits", "shapes")
"""The built-in image datasets (`builtin://<name>`)."""
BUILTIN_VIDEO_DATASETS = ("moving-digits", "moving-shapes", "bouncing-digits", "bouncing-shapes")
"""The built-in video datasets (dataset.frames > 1)."""
BUILTIN_DATASETS = BUILTIN_IMAGE_DATASETS + BUILTIN_VIDEO_DATASETS
"""The built-in datasets (`builtin://<name>`)."""

STORE_URI_PATTERN = rf"^({_S3}|{_FILE}|{_LOCAL})$"
"""s3://bucket[/prefix], file://path or a path: what a store root may be."""
ABSOLUTE_PATH_PATTERN = rf"^/{_PATH}/?$"
"""An absolute local path under the same segment rules (a directory in a pod)."""
DATASET_URI_PATTERN = rf"^(builtin://({'|'.join(BUILTIN_DATASETS)})|{_S3}|{_FILE}|{_LOCAL})$"
"""A store URI, or one of the built-in datasets."""

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
RULES = (
    "no query (?), fragment (#), percent-encoding (%), backslash, whitespace or control"
    " character, no empty, '.' or '..' path segment; segments use letters, digits and . _ ~ + = , @ -"
)
"""The rules in words, for descriptions and docs."""


def uri_problem(uri: str, *, dataset: bool = False) -> str | None:
    """Why `uri` breaks the rules (None when it follows them); `dataset` also admits builtin://."""
    pattern = DATASET_URI_PATTERN if dataset else STORE_URI_PATTERN
    if re.fullmatch(pattern, uri):
        return None
    return _reason(uri, dataset=dataset) or f"must match {pattern}"


def _reason(uri: str, *, dataset: bool) -> str | None:  # noqa: PLR0911 - one return per kind of URI
    """The first rule `uri` breaks, in words (the regex stays the authority)."""
    if not uri:
        return "must not be empty"
    if problem := _character_problem(uri):
        return problem
    scheme, separator, rest = uri.partition("://")
    if not separator:
        return _segments_problem(uri.removeprefix("/").removesuffix("/"), allow_empty=False)
    if dataset and scheme == "builtin":
        return f"unknown built-in dataset {rest!r} (one of {', '.join(BUILTIN_DATASETS)})"
    if scheme == "file":
        return _segments_problem(rest.removeprefix("/").removesuffix("/"), allow_empty=False)
    if scheme == "s3":
        bucket, _, path = rest.partition("/")
        if not re.fullmatch(_BUCKET, bucket):
            return f"invalid bucket name {bucket!r} (3-63 lower-case letters, digits, '.' and '-')"
        return _segments_problem(path.removesuffix("/"), allow_empty=True)
    kinds = "builtin://, s3://, file:// or a path" if dataset else "s3://, file:// or a path"
    return f"unsupported scheme {scheme}:// (use {kinds})"


def _character_problem(text: str) -> str | None:
    """A character no URI may hold: control, whitespace, backslash, '?', '#', '%'."""
    if _CONTROL.search(text):
        return "contains a control character"
    if any(char.isspace() for char in text):
        return "contains whitespace"
    if "\\" in text:
        return "contains a backslash"
    for char, what in (("?", "a query ('?')"), ("#", "a fragment ('#')"), ("%", "percent-encoding ('%')")):
        if char in text:
            return f"has {what}: the run's prefix would not be a plain path under the root"
    return None


def _segments_problem(path: str, *, allow_empty: bool) -> str | None:
    """A path segment that is empty, '.', '..' or uses a character outside SEGMENT_CHARS."""
    if not path:
        return None if allow_empty else "names no directory"
    for segment in path.split("/"):
        if segment == "":
            return "has an empty path segment ('//')"
        if set(segment) == {"."}:
            return f"has a {segment!r} path segment"
        if bad := re.search(rf"[^{SEGMENT_CHARS}]", segment):
            return f"contains {bad.group()!r}: path segments use only letters, digits and . _ ~ + = , @ -"
    return None


def absolute_path_problem(path: str) -> str | None:
    """Why `path` is not an absolute path under the URI rules, or None."""
    if not path.startswith("/"):
        return "must be an absolute path"
    if re.fullmatch(ABSOLUTE_PATH_PATTERN, path):
        return None
    return _reason(path, dataset=False) or f"must match {ABSOLUTE_PATH_PATTERN}"


def prefix_problem(prefix: str) -> str | None:
    """Why `prefix` cannot extend a store's root (Store.child), or None.

    Every segment must be non-empty, not `.` or `..`, and free of the characters the URI
    rules refuse; a prefix always names at least one segment.
    """
    stripped = prefix.strip("/")
    if not stripped:
        return "must name at least one path segment"
    if "//" in stripped:
        return "has an empty path segment ('//')"
    if re.fullmatch(_PATH, stripped):
        return None
    return _reason(stripped, dataset=False) or f"must be a path of segments matching {_SEGMENT}"


def local_root_problem(root: str) -> str | None:
    """Why a local store root cannot be used, or None.

    Local roots are typed by people (workdirs, model directories) and may contain spaces;
    only what can make a path mean something else is refused: control characters
    (a NUL cuts the path short) and backslashes.
    """
    if _CONTROL.search(root):
        return "contains a control character"
    if "\\" in root:
        return "contains a backslash"
    return None


def checked_uri(value: str, *, dataset: bool) -> str:
    """`value` if it follows the URI rules, else ValueError saying which (for pydantic validators)."""
    if problem := uri_problem(value, dataset=dataset):
        raise ValueError(problem)
    return value
