"""The optional `train` extra: whether it is installed, and the one-line error when it is not.

`pip install atoll` is the operator install (operator, NVML agent, planner, CLI) and never
has torch; `pip install "atoll[train]"` adds what the stages need. A command that needs the
training stack calls `require_train` before it imports any of it. This module only looks
the modules up: it must never import torch or anything else from the extra.
"""

from __future__ import annotations

import importlib.util

from atoll.errors import AtollError

TRAIN_MODULES = ("torch", "diffusers", "transformers", "safetensors", "numpy", "PIL", "sklearn")
"""Import names of the `train` extra's distributions (pillow is PIL, scikit-learn is sklearn)."""

INSTALL_TRAIN = "pip install 'atoll[train]'"


class MissingExtraError(AtollError):
    """A command needs an extra that is not installed; entry points exit 2 with this one line."""


def missing_train_modules() -> list[str]:
    """The modules of the `train` extra that cannot be imported here (none: the extra is installed)."""
    return [name for name in TRAIN_MODULES if importlib.util.find_spec(name) is None]


def require_train(command: str) -> None:
    """Raise MissingExtraError naming `command` and the install line unless the extra is installed."""
    missing = missing_train_modules()
    if missing:
        raise MissingExtraError(
            f"{command} needs the training extra ({', '.join(missing)} not installed): {INSTALL_TRAIN}"
        )
