"""A second control plane standing in for a compute island: charts/atoll-island installed in it,
and kubeconfigs that authenticate there with a ServiceAccount's token (least privilege, or less).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import pytest
import yaml

from tests.env import binaries
from tests.env.cluster import ControlPlane

REPO = Path(__file__).resolve().parents[2]
ISLAND_CHART = REPO / "charts" / "atoll-island"
ISLAND_NAMESPACE = "atoll"
RELEASE = "atoll-island"
MEAGRE = "meagre"
"""A ServiceAccount that may only read pods: too little for the operator."""


def _prerequisite(missing: binaries.MissingPrerequisiteError) -> NoReturn:
    if missing.fatal:
        pytest.fail(str(missing), pytrace=False)
    pytest.skip(str(missing))


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    try:
        path = binaries.binary("helm")
    except binaries.MissingPrerequisiteError as missing:
        _prerequisite(missing)
    return subprocess.run([str(path), *args], capture_output=True, text=True, check=True, timeout=120)


def render_island_chart(*args: str) -> list[dict[str, Any]]:
    text = helm("template", RELEASE, str(ISLAND_CHART), "--namespace", ISLAND_NAMESPACE, *args).stdout
    return [d for d in yaml.safe_load_all(text) if d]


@dataclass
class Island:
    """A control plane set up as an island; `kubeconfig(sa)` writes one that uses a token of that ServiceAccount."""

    plane: ControlPlane
    directory: Path

    def kubeconfig(self, service_account: str, name: str) -> Path:
        """A kubeconfig for the ServiceAccount's token, its CA as a file next to it (a relative path)."""
        token = self.plane.kubectl(
            "create", "token", service_account, "-n", ISLAND_NAMESPACE, "--duration", "1h"
        ).stdout.strip()
        folder = self.directory / name
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(self.plane.cluster_dir / "pki" / "ca.crt", folder / "ca.crt")
        document = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {"name": "island", "cluster": {"server": self.plane.server, "certificate-authority": "ca.crt"}}
            ],
            "users": [{"name": service_account, "user": {"token": token}}],
            "contexts": [{"name": name, "context": {"cluster": "island", "user": service_account}}],
            "current-context": name,
        }
        path = folder / "kubeconfig"
        path.write_text(yaml.safe_dump(document))
        return path


def start_island(directory: Path) -> Iterator[Island]:
    """Start a control plane, install the island chart in ISLAND_NAMESPACE and a too-small Role."""
    try:
        plane = ControlPlane(directory / "cluster")
    except binaries.MissingPrerequisiteError as missing:
        _prerequisite(missing)
    plane.start()
    try:
        plane.kubectl("create", "namespace", ISLAND_NAMESPACE)
        rendered = helm("template", RELEASE, str(ISLAND_CHART), "--namespace", ISLAND_NAMESPACE).stdout
        plane.kubectl("apply", "-f", "-", input=rendered)
        plane.kubectl("create", "serviceaccount", MEAGRE, "-n", ISLAND_NAMESPACE)
        plane.kubectl("create", "role", MEAGRE, "-n", ISLAND_NAMESPACE, "--verb=get,list,watch", "--resource=pods")
        plane.kubectl(
            "create", "rolebinding", MEAGRE, "-n", ISLAND_NAMESPACE, f"--role={MEAGRE}",
            f"--serviceaccount={ISLAND_NAMESPACE}:{MEAGRE}",
        )  # fmt: skip
        yield Island(plane, directory)
    finally:
        plane.close()
