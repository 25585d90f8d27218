"""The end of a run, for people: where the model, grids and metrics are, and the metrics table.

Reads only eval/metrics.json (the evaluate stage's output) and the store's URIs.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from atoll import layout
from atoll.store import NotFoundError, Store, join_key

METRICS = join_key(layout.EVAL, "metrics.json")


def read_metrics(store: Store) -> dict[str, Any] | None:
    """eval/metrics.json, or None before the evaluate stage has written it."""
    try:
        metrics: dict[str, Any] = store.get_json(METRICS)
    except NotFoundError:
        return None
    return metrics


def metrics_table(metrics: dict[str, Any]) -> Table:
    """One row per sampling strategy: domain Fréchet distance, FID, experts run per step, grid."""
    table = Table(
        title="DDM evaluation",
        title_justify="left",
        caption="real vs real: held-out real images against the reference half (the noise floor)",
        caption_justify="left",
    )
    table.add_column("strategy", no_wrap=True)
    table.add_column("Fréchet (domain)", justify="right")
    table.add_column("FID (Inception)", justify="right")
    table.add_column("experts/step", justify="right")
    table.add_column("s/image", justify="right")
    table.add_column("grid")
    strategies = metrics.get("strategies", {})
    for name in metrics.get("strategyOrder", list(strategies)):
        row = strategies.get(name, {})
        if row.get("skipped"):
            table.add_row(name, "—", "—", "—", "—", f"skipped: {row['skipped']}")
            continue
        table.add_row(
            name,
            _number(row.get("frechetDistance")),
            _number(row.get("fid")),
            _number(row.get("expertsPerStep"), 2),
            _number(row.get("secondsPerImage"), 3),
            str(row.get("grid", "")),
        )
    reference = metrics.get("reference", {})
    if "frechetDistance" in reference:
        table.add_row(
            "real vs real",
            _number(reference["frechetDistance"]),
            _number(reference.get("fid")),
            "",
            "",
            "",
        )
    return table


def print_results(console: Console, store: Store, metrics: dict[str, Any] | None) -> None:
    """Where the results are, then the metrics table and the notes that qualify it."""
    console.print(f"model:    {store.uri_of(layout.MODEL)}", highlight=False, soft_wrap=True)
    console.print(f"metrics:  {store.uri_of(METRICS)}", highlight=False, soft_wrap=True)
    if metrics is None:
        return
    strategies = metrics.get("strategies", {})
    for name in metrics.get("strategyOrder", list(strategies)):
        row = strategies.get(name, {})
        if row.get("grid"):
            console.print(f"grid:     {store.uri_of(row['grid'])}  ({name})", highlight=False, soft_wrap=True)
    console.print(metrics_table(metrics))
    classifier = metrics.get("classifier", {})
    if classifier:
        console.print(
            f"domain features: a {classifier.get('classes')}-class classifier of {classifier.get('labels')}"
            f" (held-out accuracy {_number(classifier.get('accuracy'), 3)}), trained at evaluate time",
            highlight=False,
        )
    fid = metrics.get("fid", {})
    if fid and not fid.get("available", False):
        console.print(
            f"FID: unavailable — {fid.get('reason', 'no Inception weights')}", highlight=False, soft_wrap=True
        )
    router = metrics.get("router", {})
    buckets = router.get("accuracyBySigma")
    if isinstance(buckets, list) and buckets:
        accuracies = ", ".join(_bucket(b) for b in buckets)
        console.print(f"router accuracy by σ: {accuracies}", highlight=False, soft_wrap=True)


def _bucket(bucket: Any) -> str:
    if isinstance(bucket, dict) and "accuracy" in bucket:
        low, high = bucket.get("sigmaLow", bucket.get("low")), bucket.get("sigmaHigh", bucket.get("high"))
        return f"[{_number(low, 1)},{_number(high, 1)}) {_number(bucket['accuracy'], 2)}"
    return str(bucket)


def _number(value: Any, digits: int = 2) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, int | float):
        return f"{value:.{digits}f}"
    return str(value)
