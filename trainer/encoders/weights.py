"""Finding pretrained weights on this machine: $ATOLL_WEIGHTS_DIR/<name>, then the Hugging Face cache.

Nothing here downloads: every load passes `local_files_only=True`. When the weights are
absent the error names the model, where it looked and how to provide the weights, and
the run stops; there is never a silent fallback to another model.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from atoll.errors import BadInputError

WEIGHTS_ENV = "ATOLL_WEIGHTS_DIR"
"""Directory of save_pretrained copies, one sub-directory per Atoll model name."""

_T = TypeVar("_T")


class WeightsNotFoundError(BadInputError):
    """A pretrained model's weights are not on this machine."""


def load_local(name: str, repo_id: str, load: Callable[[str], _T], *, field: str) -> _T:
    """Load model `name` with `load(source)` from $ATOLL_WEIGHTS_DIR/<name> or the HF cache of `repo_id`.

    `load` must pass `local_files_only=True` to from_pretrained. `field` is the spec field
    that chose the model (named in the error, with the offline alternative).
    """
    root = os.environ.get(WEIGHTS_ENV)
    looked = []
    if root:
        path = Path(root).expanduser() / name
        if path.is_dir():
            try:
                return load(str(path))
            except (OSError, ValueError) as error:
                raise WeightsNotFoundError(
                    f"model {name}: {path} is not a loadable copy of {repo_id}: {error}"
                ) from None
        looked.append(f"{path} (absent)")
    else:
        looked.append(f"${WEIGHTS_ENV} (unset)")
    try:
        return load(repo_id)
    except (OSError, ValueError):
        hub = os.environ.get("HF_HUB_CACHE") or os.environ.get("HF_HOME") or "~/.cache/huggingface"
        looked.append(f"the Hugging Face cache in {hub} (no {repo_id})")
    raise WeightsNotFoundError(
        f"weights of model {name} ({repo_id}, chosen by {field}) are not on this machine; looked in "
        + " and ".join(looked)
        + f". Provide them: run `hf download {repo_id}` where there is network and copy the Hugging Face"
        f" cache here, or save_pretrained() the model into ${WEIGHTS_ENV}/{name}"
    )
