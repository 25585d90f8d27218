"""Builds the test environment's binaries from the Go module proxy at pinned versions.

Each tool is a small wrapper Go module under tests/env/go/<tool>/ whose go.mod/go.sum pin
the release; the binaries land in ~/.cache/atoll/bin/<tool>-<version>-<hash>/, where the
hash covers go.mod, go.sum and the build flags, so a build happens again only when a pin
changes. Binaries are never committed. Run `python -m tests.env.build` (make testenv).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

GO_DIR = Path(__file__).resolve().parent / "go"
STAMP = "build.json"


def cache_root() -> Path:
    """Where built binaries live (ATOLL_CACHE, default ~/.cache/atoll)."""
    return Path(os.environ.get("ATOLL_CACHE", Path.home() / ".cache" / "atoll")).expanduser()


@dataclass(frozen=True)
class Tool:
    """One wrapper module and the commands built from it."""

    name: str
    module: str
    """The pinned upstream module whose version names the build."""
    commands: dict[str, str]
    """binary name → package path."""
    ldflags: tuple[str, ...] = field(default=())
    """-X flags stamping the version; `{version}` and friends are filled in."""

    @property
    def directory(self) -> Path:
        return GO_DIR / self.name

    def version(self) -> str:
        """The version pinned for `module` in this wrapper's go.mod."""
        for line in (self.directory / "go.mod").read_text().splitlines():
            words = line.split()
            if len(words) >= 2 and words[-2] == self.module and words[0] in ("require", self.module):
                return words[-1]
        raise SystemExit(f"{self.directory / 'go.mod'} does not require {self.module}")

    def key(self) -> str:
        digest = hashlib.sha256()
        for name in ("go.mod", "go.sum"):
            digest.update((self.directory / name).read_bytes())
        digest.update(json.dumps([self.commands, self.ldflags]).encode())
        return f"{self.name}-{self.version()}-{digest.hexdigest()[:10]}"

    def output_dir(self) -> Path:
        return cache_root() / "bin" / self.key()

    def stamped_ldflags(self) -> str:
        version = self.version()
        core = version.lstrip("v")
        major, minor = ([*core.split("."), "0", "0"])[:2]
        values = {
            "version": version,
            "core": core,
            "major": major,
            "minor": minor,
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "minio_version": _minio_time(version, "T%H:%M:%SZ"),
            "minio_tag": "RELEASE." + _minio_time(version, "T%H-%M-%SZ"),
            "commit": version.rsplit("-", 1)[-1] if version.startswith("v0.0.0-") else version,
        }
        return " ".join(["-s", "-w", *(flag.format(**values) for flag in self.ldflags)])


def _minio_time(pseudo_version: str, time_format: str) -> str:
    """MinIO's release name from a pseudo-version's commit time (v0.0.0-YYYYmmddHHMMSS-hash)."""
    try:
        stamp = time.strptime(pseudo_version.split("-")[1], "%Y%m%d%H%M%S")
    except (IndexError, ValueError):
        return pseudo_version
    return time.strftime("%Y-%m-%d" + time_format, stamp)


_K8S_VERSION_FLAGS = tuple(
    f"-X {package}.{name}={{{value}}}"
    for package in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version")
    for name, value in (
        ("gitVersion", "version"),
        ("gitMajor", "major"),
        ("gitMinor", "minor"),
        ("gitTreeState", "tree"),
        ("buildDate", "date"),
    )
)

TOOLS: tuple[Tool, ...] = (
    Tool(
        name="kubernetes",
        module="k8s.io/kubernetes",
        commands={
            "kube-apiserver": "k8s.io/kubernetes/cmd/kube-apiserver",
            "kube-controller-manager": "k8s.io/kubernetes/cmd/kube-controller-manager",
            "kube-scheduler": "k8s.io/kubernetes/cmd/kube-scheduler",
            "kubectl": "k8s.io/kubernetes/cmd/kubectl",
        },
        ldflags=tuple(flag.replace("{tree}", "clean") for flag in _K8S_VERSION_FLAGS),
    ),
    Tool(
        name="etcd",
        module="go.etcd.io/etcd/server/v3",
        commands={"etcd": "go.etcd.io/etcd/server/v3"},
        ldflags=("-X go.etcd.io/etcd/api/v3/version.GitSHA=release-{version}",),
    ),
    Tool(
        name="kwok",
        module="sigs.k8s.io/kwok",
        commands={"kwok": "sigs.k8s.io/kwok/cmd/kwok", "kwokctl": "sigs.k8s.io/kwok/cmd/kwokctl"},
        ldflags=("-X sigs.k8s.io/kwok/pkg/consts.Version={core}",),
    ),
    Tool(
        name="minio",
        module="github.com/minio/minio",
        commands={"minio": "github.com/minio/minio"},
        ldflags=(
            "-X github.com/minio/minio/cmd.Version={minio_version}",
            "-X github.com/minio/minio/cmd.ReleaseTag={minio_tag}",
            "-X github.com/minio/minio/cmd.CommitID={commit}",
            "-X github.com/minio/minio/cmd.ShortCommitID={commit}",
        ),
    ),
    Tool(
        name="helm",
        module="helm.sh/helm/v3",
        commands={"helm": "helm.sh/helm/v3/cmd/helm"},
        ldflags=("-X helm.sh/helm/v3/internal/version.version={version}",),
    ),
    Tool(
        name="karpenter",
        module="sigs.k8s.io/karpenter",
        # Karpenter with its kwok cloud provider, which creates kwok-managed Nodes for NodeClaims.
        commands={"karpenter-kwok": "sigs.k8s.io/karpenter/kwok"},
        ldflags=("-X sigs.k8s.io/karpenter/pkg/operator.Version={version}",),
    ),
)


class BuildError(SystemExit):
    """A build that cannot complete; the message says why and what to do."""


def _check_proxy() -> None:
    """Fail fast, with a clear message, when the Go module proxy cannot be reached."""
    proxy = subprocess.run(["go", "env", "GOPROXY"], capture_output=True, text=True, check=True).stdout.strip()
    first = proxy.split(",")[0].split("|")[0]
    if first in ("off", "direct", ""):
        return
    url = first.rstrip("/") + "/k8s.io/kubernetes/@v/list"
    try:
        with urllib.request.urlopen(url, timeout=20) as response:
            response.read(1)
    except (urllib.error.URLError, TimeoutError, OSError) as error:
        raise BuildError(
            f"cannot reach the Go module proxy {first} ({error}).\n"
            "The test environment is built from the proxy at pinned versions; check the network"
            " or set GOPROXY to a reachable proxy, then run `make testenv` again."
        ) from None


def binaries(tool: Tool) -> dict[str, Path]:
    """Paths of a tool's binaries in the cache (they may not exist yet)."""
    return {name: tool.output_dir() / name for name in tool.commands}


def is_built(tool: Tool) -> bool:
    return (tool.output_dir() / STAMP).is_file()


def build(tool: Tool, *, log: bool = True) -> dict[str, Path]:
    """Build one tool unless its pinned version is already in the cache."""
    out = tool.output_dir()
    _remove_abandoned_staging(out)
    if is_built(tool):
        return binaries(tool)
    if shutil.which("go") is None:
        raise BuildError("the Go toolchain is not installed (`go` not on PATH); it is needed to build the test env")
    _check_proxy()
    names = ", ".join(tool.commands)
    if log:
        print(f"building {tool.name} {tool.version()} ({names}) into {out}", flush=True)
    started = time.monotonic()
    staging = out.with_name(out.name + f".tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        _build_into(tool, staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    seconds = time.monotonic() - started
    (staging / STAMP).write_text(
        json.dumps({"tool": tool.name, "version": tool.version(), "seconds": round(seconds, 1)}, indent=2)
    )
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    if log:
        print(f"built {tool.name} {tool.version()} in {seconds:.0f}s", flush=True)
    return binaries(tool)


def _remove_abandoned_staging(out: Path) -> None:
    """Delete the staging folders of builds whose process is gone (killed mid-build)."""
    for staging in out.parent.glob(out.name + ".tmp-*"):
        pid = staging.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _process_alive(int(pid)):
            shutil.rmtree(staging, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _build_into(tool: Tool, staging: Path) -> None:
    """Download the pinned modules and build the tool's binaries into `staging`."""
    env = {**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-mod=readonly"}
    download = subprocess.run(
        ["go", "mod", "download"], cwd=tool.directory, env=env, capture_output=True, text=True, check=False
    )
    if download.returncode != 0:
        raise BuildError(
            f"downloading the modules of {tool.name} {tool.version()} from the Go module proxy failed:\n"
            f"{download.stderr.strip()[-2000:]}"
        )
    command = [
        "go", "build", "-trimpath", "-ldflags", tool.stamped_ldflags(),
        "-o", str(staging) + "/", *tool.commands.values(),
    ]  # fmt: skip
    result = subprocess.run(command, cwd=tool.directory, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise BuildError(f"building {tool.name} failed:\n{result.stderr.strip()[-4000:]}")
    for binary, package in tool.commands.items():
        built = staging / _default_binary_name(package)
        if built.name != binary:
            built.rename(staging / binary)


def _default_binary_name(package: str) -> str:
    """The file name `go build -o DIR/` gives a package's binary (major-version suffix dropped)."""
    parts = package.rstrip("/").split("/")
    if len(parts) > 1 and parts[-1].startswith("v") and parts[-1][1:].isdigit():
        return parts[-2]
    return parts[-1]


def ensure_all(*, log: bool = True) -> dict[str, Path]:
    """Build (or reuse) every tool; binary name → path."""
    paths: dict[str, Path] = {}
    for tool in TOOLS:
        paths.update(build(tool, log=log))
    return paths


def versions() -> dict[str, str]:
    """tool → pinned version, for docs and reports."""
    return {tool.name: tool.version() for tool in TOOLS}


def missing() -> list[str]:
    """Names of tools not yet built at their pinned version."""
    return [tool.name for tool in TOOLS if not is_built(tool)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.env.build", description=__doc__)
    parser.add_argument("--print", action="store_true", help="print binary paths as JSON and exit")
    args = parser.parse_args(argv)
    if args.print:
        print(json.dumps({name: str(path) for tool in TOOLS for name, path in binaries(tool).items()}, indent=2))
        return 0
    started = time.monotonic()
    todo = missing()
    try:
        ensure_all()
    except BuildError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if todo:
        print(f"test environment built in {time.monotonic() - started:.0f}s ({', '.join(todo)})")
    else:
        print(f"test environment up to date in {cache_root() / 'bin'} ({', '.join(versions().values())})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
