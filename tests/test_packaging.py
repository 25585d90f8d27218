"""The packaging contract: one distribution and one import name `atoll`, the `atoll` console
script, `python -m atoll` / `python -m atoll.trainer`, and the standard library's `operator`
never shadowed from the repository root (not even with `python -S`)."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

import atoll

REPO_ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def run(*args: str, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.parametrize("flags", [["-S"], []], ids=["no-site", "site"])
def test_stdlib_operator_is_not_shadowed_from_the_repo_root(flags: list[str]) -> None:
    assert (REPO_ROOT / "operator").is_dir()
    assert not (REPO_ROOT / "operator" / "__init__.py").exists()
    result = run(sys.executable, *flags, "-c", "import operator; print(operator.__file__); print(operator.add(2, 3))")
    assert result.returncode == 0, result.stderr
    path, value = result.stdout.split()
    assert Path(path).parent == Path(sysconfig.get_paths()["stdlib"]), path
    assert value == "5"


def test_version_from_module_and_console_script(tmp_path: Path) -> None:
    expected = f"atoll {importlib.metadata.version('atoll')}"
    for command in ([sys.executable, "-m", "atoll", "--version"], [str(BIN / "atoll"), "--version"]):
        result = run(*command, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == expected


def test_trainer_help_lists_the_stage_contract(tmp_path: Path) -> None:
    result = run(sys.executable, "-m", "atoll.trainer", "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for option in ("--run", "--store", "--expert", "--attempt"):
        assert option in result.stdout


def test_one_distribution_with_one_top_level_name() -> None:
    distribution = importlib.metadata.distribution("atoll")
    top_level = (distribution.read_text("top_level.txt") or "").split()
    assert top_level == ["atoll"]
    owners = importlib.metadata.packages_distributions()
    assert [name for name, dists in owners.items() if "atoll" in dists] == ["atoll"]
    assert Path(atoll.__file__).parent == REPO_ROOT / "core" or "build" in Path(atoll.__file__).parts
    assert "console_scripts" in {ep.group for ep in distribution.entry_points}
    assert [ep.value for ep in distribution.entry_points if ep.name == "atoll"] == ["atoll.cli:main"]


def test_source_directories_are_not_importable_by_their_own_names(tmp_path: Path) -> None:
    code = "import importlib.util as u; print([n for n in ('core', 'trainer', 'tests') if u.find_spec(n)])"
    result = run(sys.executable, "-c", code, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
