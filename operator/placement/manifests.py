"""Reading Kubernetes objects given as plain mappings (`kubectl get -o yaml`, kopf bodies).

One helper the fleet and the autoscaler pools share. Pure: never calls the API server.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def field_at(obj: Mapping[str, Any], *path: str) -> Any:
    """The value at `path` in nested mappings (`field_at(node, "metadata", "name")`), or None
    where a key is missing or a step is not a mapping."""
    value: Any = obj
    for key in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value
