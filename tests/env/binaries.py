"""Finds the pinned test-environment binaries, building them when allowed.

In CI (CI=true) a missing binary or Go toolchain is an error (`MissingPrerequisiteError`) that
the fixtures turn into a test failure, never a skip; locally a missing binary is built
with tests.env.build when Go is installed, and otherwise reported so the tests can skip.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from tests.env import build


class MissingPrerequisiteError(RuntimeError):
    """A binary of the test environment is missing; the message says how to get it."""

    def __init__(self, message: str, *, fatal: bool) -> None:
        super().__init__(message)
        self.fatal = fatal
        """True when it must fail the tests (CI) rather than skip them."""


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _tool_of(name: str) -> build.Tool:
    for tool in build.TOOLS:
        if name in tool.commands:
            return tool
    raise KeyError(f"no pinned tool provides the binary {name!r}")


def binary(name: str) -> Path:
    """Path of the pinned binary `name` (kube-apiserver, etcd, kwokctl, minio, …)."""
    tool = _tool_of(name)
    path = build.binaries(tool)[name]
    if build.is_built(tool) and path.is_file():
        return path
    if in_ci():
        raise MissingPrerequisiteError(
            f"{name} ({tool.name} {tool.version()}) is not built in {build.cache_root() / 'bin'}; "
            "CI must run `make testenv` before the tests (a missing prerequisite is a failure in CI)",
            fatal=True,
        )
    if shutil.which("go") is None:
        raise MissingPrerequisiteError(
            f"{name} ({tool.name} {tool.version()}) is not built and Go is not installed; "
            "install Go and run `make testenv`",
            fatal=False,
        )
    try:
        build.build(tool)
    except build.BuildError as error:
        raise MissingPrerequisiteError(f"building {tool.name} for {name} failed: {error}", fatal=False) from None
    return build.binaries(tool)[name]


def binaries(*names: str) -> dict[str, Path]:
    """Several binaries at once: name → path."""
    return {name: binary(name) for name in names}
