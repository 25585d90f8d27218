"""The operator's garbage collector settings: fewer, cheaper full collections under a burst.

The operator keeps every pod, node and DDMExpert it watches (kopf's bodies, the indexes'
views) and decodes thousands of watch events and lists of a run's pods a minute: each a few
hundred to tens of thousands of new objects. With CPython's default thresholds (700, 10, 10)
the cyclic collector then ran a full collection about every 1.3 s in the start-up burst of
1000 nodes and 16 runs × 64 experts, each 0.1–0.16 CPU s over every object the operator
keeps, finding almost nothing to free (0–700 objects; garbage with no cycle is freed by
reference counting at once), and each holding the GIL, so every watch, tick and status write
stopped meanwhile (measured in docs/benchmarks.md, "Operator scale").

So, once at start: what start-up allocated (modules, the API client's model classes, the
parsers) is frozen, never scanned again (`gc.freeze`), and the youngest generation is
collected every `GEN0_THRESHOLD` allocations instead of 700, which makes every generation's
collections about as much rarer. Cyclic garbage then waits longer to be freed: at most a few
tens of thousands of objects, a few MB.
"""

from __future__ import annotations

import gc

GEN0_THRESHOLD = 50_000
"""Net allocations of tracked objects between collections of the youngest generation (CPython: 700)."""


def tune(gen0: int = GEN0_THRESHOLD) -> tuple[int, int, int]:
    """Freeze what exists now and collect the youngest generation every `gen0` allocations
    (the older generations' thresholds stay CPython's); returns the thresholds before."""
    before = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(gen0, before[1], before[2])
    return before
