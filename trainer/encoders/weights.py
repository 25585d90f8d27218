"""Loading pretrained weights from the source spec.weights names (atoll.api.weights).

* `none`: no pretrained model may load (the spec was refused already; this says so again).
* `volume`: `<path or $ATOLL_WEIGHTS_DIR>/<name>/`, a save_pretrained copy per model name.
* `store`: the same layout under an s3:// (or local) prefix, fetched once into a local
  cache ($ATOLL_WEIGHTS_CACHE, else <tmp>/atoll-weights) with the run's store credentials.
* `hub`: the Hugging Face hub by repo id, cached in `path` (downloads only where the hub
  is reachable and HF_HUB_OFFLINE is unset).

Without a spec (library use, tests) the lookup is $ATOLL_WEIGHTS_DIR/<name>, then the
Hugging Face cache, never downloading. Errors name the model, the spec field that chose
it, where it looked and how to provide the weights; there is never a silent fallback to
another model.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from atoll.api.weights import WeightsSpec
from atoll.errors import BadInputError
from atoll.store import StoreError, open_store

WEIGHTS_ENV = "ATOLL_WEIGHTS_DIR"
"""Directory of save_pretrained copies, one sub-directory per Atoll model name."""
CACHE_ENV = "ATOLL_WEIGHTS_CACHE"
"""Where weights fetched from a store are kept (default: <tmp>/atoll-weights)."""
_COMPLETE = ".atoll-complete.json"

_T = TypeVar("_T")
Loader = Callable[..., _T]
"""`load(source, local_files_only=…, cache_dir=…)`: from_pretrained of the model's class."""


class WeightsNotFoundError(BadInputError):
    """A pretrained model's weights are not where spec.weights says (or not on this machine)."""


def load_local(
    name: str,
    repo_id: str,
    load: Loader[_T],
    *,
    field: str,
    weights: WeightsSpec | None = None,
    download: bool = True,
) -> _T:
    """Load model `name` (Hugging Face `repo_id`) with `load` from the source `weights` names.

    `field` is the spec field that chose the model (named in every error). `download=False`
    keeps source hub to its cache (metrics that are reported unavailable rather than fetched).
    """
    if weights is None:
        return _load_unconfigured(name, repo_id, load, field=field)
    if weights.source == "none":
        raise WeightsNotFoundError(
            f"model {name} (chosen by {field}) needs pretrained weights, but spec.weights.source is none:"
            " set spec.weights (hub, store or volume) or choose an offline encoder"
        )
    if weights.source == "volume":
        root = weights.path or os.environ.get(WEIGHTS_ENV)
        if not root:
            raise WeightsNotFoundError(
                f"model {name} (chosen by {field}): spec.weights.source is volume but neither spec.weights.path"
                f" nor ${WEIGHTS_ENV} says where the weights volume is mounted"
            )
        return _load_directory(Path(root).expanduser() / name, name, repo_id, load, "spec.weights.path")
    if weights.source == "store":
        assert weights.uri is not None  # the spec requires it for source store
        return _load_directory(fetch_from_store(weights.uri, name), name, repo_id, load, "spec.weights.uri")
    try:
        return load(repo_id, local_files_only=not download, cache_dir=weights.path)
    except (OSError, ValueError) as error:
        raise WeightsNotFoundError(
            f"model {name} (chosen by {field}): {repo_id} could not be loaded from the Hugging Face hub"
            f" (cache {weights.path or 'the default'}): {error}"
        ) from None


def fetch_from_store(uri: str, name: str) -> Path:
    """`<uri>/<name>/` copied into the local weights cache (once; refreshed when the listing changes)."""
    try:
        store = open_store(uri)
        objects = store.list_objects(f"{name}/")
    except StoreError as error:
        raise WeightsNotFoundError(f"model {name}: cannot read spec.weights.uri {uri}: {error}") from None
    if not objects:
        raise WeightsNotFoundError(
            f"model {name}: spec.weights.uri {uri} holds no {name}/ (save_pretrained the model into"
            f" {store.uri_of(name)}/)"
        )
    cache = Path(os.environ.get(CACHE_ENV) or Path(tempfile.gettempdir()) / "atoll-weights")
    directory = cache / hashlib.sha256(uri.encode()).hexdigest()[:16] / name
    listing = [[info.key, info.size] for info in objects]
    marker = directory / _COMPLETE
    try:
        if json.loads(marker.read_text()) == listing:
            return directory
    except (OSError, ValueError):
        pass
    try:
        for info in objects:
            store.get_file(info.key, directory / info.key[len(name) + 1 :])
    except StoreError as error:
        raise WeightsNotFoundError(f"model {name}: fetching {store.uri_of(name)}/ failed: {error}") from None
    marker.write_text(json.dumps(listing))
    return directory


def _load_directory(path: Path, name: str, repo_id: str, load: Loader[_T], field: str) -> _T:
    if not path.is_dir():
        raise WeightsNotFoundError(
            f"model {name}: {path} does not exist (set by {field}); save_pretrained {repo_id} there"
        )
    try:
        return load(str(path), local_files_only=True)
    except (OSError, ValueError) as error:
        raise WeightsNotFoundError(f"model {name}: {path} is not a loadable copy of {repo_id}: {error}") from None


def _load_unconfigured(name: str, repo_id: str, load: Loader[_T], *, field: str) -> _T:
    """$ATOLL_WEIGHTS_DIR/<name>, then the Hugging Face cache of `repo_id`; never downloads."""
    root = os.environ.get(WEIGHTS_ENV)
    looked = []
    if root:
        path = Path(root).expanduser() / name
        if path.is_dir():
            return _load_directory(path, name, repo_id, load, f"${WEIGHTS_ENV}")
        looked.append(f"{path} (absent)")
    else:
        looked.append(f"${WEIGHTS_ENV} (unset)")
    try:
        return load(repo_id, local_files_only=True)
    except (OSError, ValueError):
        hub = os.environ.get("HF_HUB_CACHE") or os.environ.get("HF_HOME") or "~/.cache/huggingface"
        looked.append(f"the Hugging Face cache in {hub} (no {repo_id})")
    raise WeightsNotFoundError(
        f"weights of model {name} ({repo_id}, chosen by {field}) are not on this machine; looked in "
        + " and ".join(looked)
        + f". Provide them: run `hf download {repo_id}` where there is network and copy the Hugging Face"
        f" cache here, or save_pretrained() the model into ${WEIGHTS_ENV}/{name}"
    )
