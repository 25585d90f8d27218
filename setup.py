"""Maps the source directories onto the one import name `atoll`.

core/ is the package `atoll` itself (API models, store, CLI), trainer/ is `atoll.trainer`
and operator/ is `atoll.operator`. operator/ has no __init__.py (atoll.operator is a
namespace package), so nothing run from the repository root, `python -S` included, can
import it as the standard library's `operator`. Metadata lives in pyproject.toml.
"""

from pathlib import Path

from setuptools import setup

ROOTS = {"atoll": "core", "atoll.trainer": "trainer", "atoll.operator": "operator"}


def _packages() -> tuple[list[str], dict[str, str]]:
    packages: list[str] = []
    package_dir: dict[str, str] = {}
    for name, root in ROOTS.items():
        package_dir[name] = root
        for folder in sorted(p for p in [Path(root), *Path(root).rglob("*")] if p.is_dir()):
            if "__pycache__" in folder.parts or not any(folder.glob("*.py")):
                continue
            rel = folder.relative_to(root).parts
            packages.append(".".join((name, *rel)))
    return packages, package_dir


_PACKAGES, _PACKAGE_DIR = _packages()
# The planner's measured speed table ships with the code (atoll.operator.placement.measured).
_DATA = {"atoll": ["py.typed"], "atoll.operator.placement": ["measured_speeds.json"]}
setup(packages=_PACKAGES, package_dir=_PACKAGE_DIR, package_data=_DATA)
