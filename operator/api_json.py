"""JSON decoding of what the API server answers the operator (lists, gets, watch streams), by orjson.

Under a burst (16 runs × 64 experts at 1000 nodes) the operator spent about a fifth of its CPU
in the standard library's `json.loads`: kopf decoding every watch event of pods, nodes and
DDMExperts (13 % of the samples, in the event loop that keeps the indexes) and the observe
step decoding its lists of a run's pods (9 %). orjson decodes them faster
(bench/api_json.py: 1.6–2.2× on a pod's watch event, 1.2–2.3× on a run's pod list;
docs/benchmarks.md). Both hold the GIL while
they decode, so every other thread of the operator waits for them: a cheaper decode is time
the reconcile threads and the watches get back.

kopf decodes its watch streams with `json.loads` of the module it imports `json` into
(kopf._cogs.clients.api, no setting for it): `decode_watches_with_orjson` hands that module a
`json` whose `loads` is orjson's. It checks what it replaces, so a kopf that moved its decoding
leaves the standard decoder in place and the function says so in the log (a test pins it).
"""

from __future__ import annotations

import json
import types
from typing import Any

import orjson

from atoll.log import get_logger

log = get_logger(__name__)

loads = orjson.loads
"""Decode one JSON document (bytes or str) to Python objects, as `json.loads` does."""

_WATCH_JSON = types.SimpleNamespace(loads=orjson.loads, dumps=json.dumps)
"""What kopf's API module sees as `json`: orjson's loads, the standard dumps."""


def decode_watches_with_orjson() -> bool:
    """Make kopf decode its watch streams with orjson; whether it does now (idempotent)."""
    from kopf._cogs.clients import api

    current: Any = getattr(api, "json", None)
    if current is json:
        api.json = _WATCH_JSON  # type: ignore[assignment,attr-defined]  # same loads and dumps
        return True
    if current is _WATCH_JSON:
        return True
    log.warning("kopf no longer decodes its watch streams where it did: they stay on the standard json decoder")
    return False
