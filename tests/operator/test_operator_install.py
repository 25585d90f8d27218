"""The operator install: `pip install atoll` (no extra) in a clean virtualenv has no torch, yet
runs the operator, the agent, the planner, `atoll crds`, `atoll run FILE` and `atoll status`;
the commands that train or sample exit 2 with one line saying to install `atoll[train]`.

The virtualenv is made by uv from uv.lock, offline from uv's cache (which `make install`
filled), from a copy of the sources, so nothing outside 127.0.0.1 is contacted.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.env import binaries
from tests.env.build import cache_root
from tests.env.cluster import ControlPlane

REPO = Path(__file__).resolve().parents[2]
SOURCES = ("core", "trainer", "operator", "pyproject.toml", "setup.py", "uv.lock", "README.md")
TRAIN_DISTRIBUTIONS = ("torch", "diffusers", "transformers", "safetensors", "numpy", "pillow", "scikit-learn", "scipy")
INSTALL_LINE = "pip install 'atoll[train]'"
QUICKSTART = REPO / "manifests" / "examples" / "quickstart.yaml"
STAGE = ("python", "-m", "atoll.trainer", "partition", "--run", "spec.json", "--store", "runs/x")


def find_uv() -> Path:
    """uv as `make install` bootstrapped it (under ~/.cache/atoll/tools), else the one on PATH."""
    candidates = [*sorted(cache_root().glob("tools/uv-*/bin/uv")), shutil.which("uv")]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    message = "uv is not installed; run `make install` (it bootstraps uv into ~/.cache/atoll/tools)"
    if binaries.in_ci():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="module")
def operator_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clean virtualenv with `atoll` and its base dependencies from uv.lock, no extra."""
    root = tmp_path_factory.mktemp("operator-install")
    source = root / "src"
    source.mkdir()
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, source / name)
    venv = root / "venv"
    env = {
        **os.environ,
        "UV_PROJECT_ENVIRONMENT": str(venv),
        "UV_PYTHON_DOWNLOADS": "never",
        "VIRTUAL_ENV": "",
    }
    base_python = getattr(sys, "_base_executable", sys.executable)
    result = subprocess.run(
        [str(find_uv()), "sync", "--locked", "--no-editable", "--offline", "--python", base_python],
        cwd=source, env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert result.returncode == 0, f"uv sync of the operator install failed:\n{result.stderr[-3000:]}"
    return venv


def run(venv: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """A command of the clean venv, started outside the repository (nothing from it on sys.path)."""
    command = [str(venv / "bin" / args[0]), *args[1:]]
    clean = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root"), **(env or {})}
    return subprocess.run(command, cwd=venv, env=clean, capture_output=True, text=True, timeout=180, check=False)


def test_the_operator_install_has_no_training_stack(operator_venv: Path) -> None:
    torch = run(operator_venv, "python", "-c", "import torch")
    assert torch.returncode != 0
    assert "No module named 'torch'" in torch.stderr
    code = "import importlib.metadata as m; print(*(d.metadata['Name'].lower() for d in m.distributions()))"
    names = set(run(operator_venv, "python", "-c", code).stdout.split())
    assert "atoll" in names
    assert {"kopf", "kubernetes", "pydantic", "minio", "structlog", "nvidia-ml-py", "rich", "pyyaml"} <= names
    assert not names & set(TRAIN_DISTRIBUTIONS), sorted(names & set(TRAIN_DISTRIBUTIONS))
    assert not [name for name in names if name.startswith("nvidia-") and name != "nvidia-ml-py"]
    # an installed copy, not a link back into the repository
    where = run(operator_venv, "python", "-c", "import atoll; print(atoll.__file__)").stdout.strip()
    assert Path(where).is_relative_to(operator_venv), where


def test_operator_agent_planner_and_crds_run_without_the_extra(operator_venv: Path) -> None:
    for command in (("atoll", "operator", "--help"), ("atoll", "agent", "--help"), ("atoll", "--help")):
        result = run(operator_venv, *command)
        assert result.returncode == 0, f"{command}: {result.stderr}"
        assert "usage:" in result.stdout
    data = REPO / "tests" / "placement" / "data"
    plan = run(operator_venv, "atoll", "plan", "--nodes", str(data / "nodes.yaml"), "--run", str(data / "run.yaml"))
    assert plan.returncode == 0, plan.stderr
    assignments = yaml.safe_load(plan.stdout)["assignments"]
    assert len(assignments) == 12
    crds = run(operator_venv, "atoll", "crds")
    assert crds.returncode == 0, crds.stderr
    kinds = {doc["spec"]["names"]["kind"] for doc in yaml.safe_load_all(crds.stdout) if doc}
    assert kinds == {"DDMRun", "DDMExpert", "ComputeIsland"}
    assert run(operator_venv, "atoll", "island", "add", "--help").returncode == 0


@pytest.mark.parametrize(
    ("command", "needs"),
    [
        (("atoll", "run", str(QUICKSTART), "--local"), "atoll run --local"),
        (("atoll", "sample", "model", "--prompt", "a 7", "--out", "seven.png"), "atoll sample"),
        (STAGE, "python -m atoll.trainer"),
    ],
    ids=["run-local", "sample", "stage"],
)
def test_training_commands_say_how_to_install_the_extra(
    operator_venv: Path, command: tuple[str, ...], needs: str
) -> None:
    result = run(operator_venv, *command)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert needs in lines[0]
    assert INSTALL_LINE in lines[0]
    assert result.stdout == ""


def test_apply_and_status_run_without_the_extra(operator_venv: Path, atoll_crds: ControlPlane, namespace: str) -> None:
    env = {"KUBECONFIG": str(atoll_crds.kubeconfig)}
    applied = run(operator_venv, "atoll", "run", str(QUICKSTART), "-n", namespace, env=env)
    assert applied.returncode == 0, applied.stderr
    assert f"ddmrun.atoll.dev/digits-quickstart created in namespace {namespace}" in applied.stdout
    status = run(operator_venv, "atoll", "status", "digits-quickstart", "-n", namespace, env=env)
    assert status.returncode == 0, status.stderr
    assert f"{namespace}/digits-quickstart" in status.stdout
