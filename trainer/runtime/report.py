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
    """One row per sampling strategy: domain Fréchet distance (FVD for clips), FID/FVD, for clips the
    alignment and temporal consistency, experts run per step, time and grid."""
    video = bool(metrics.get("video"))
    standard = "fvd" if video else "fid"
    unit = "clip" if video else "image"
    table = Table(
        title="DDM evaluation",
        title_justify="left",
        caption=f"real vs real: held-out real {unit}s against the reference half (the noise floor)"
        + ("; shuffled frames: the same clips with their frames in random order" if video else ""),
        caption_justify="left",
    )
    table.add_column("strategy", no_wrap=True)
    table.add_column("FVD (domain)" if video else "Fréchet (domain)", justify="right")
    table.add_column("FVD (I3D)" if video else "FID (Inception)", justify="right")
    if video:
        table.add_column("alignment", justify="right")
        table.add_column("consistency", justify="right")
    table.add_column("experts/step", justify="right")
    table.add_column(f"s/{unit}", justify="right")
    table.add_column("grid")
    strategies = metrics.get("strategies", {})
    for name in metrics.get("strategyOrder", list(strategies)):
        row = strategies.get(name, {})
        if row.get("skipped"):
            table.add_row(name, *(["—"] * (len(table.columns) - 2)), f"skipped: {row['skipped']}")
            continue
        cells = [name, _score(row, "frechetDistance"), _number(row.get(standard))]
        if video:
            cells += [_score(row, "alignment"), _number(row.get("temporalConsistency"), 3)]
        cells += [
            _number(row.get("expertsPerStep"), 2),
            _number(row.get(f"secondsPer{unit.title()}"), 3),
            str(row.get("grid", "")),
        ]
        table.add_row(*cells)
    reference = metrics.get("reference", {})
    if "frechetDistance" in reference:
        cells = ["real vs real", _score(reference, "frechetDistance"), _number(reference.get(standard))]
        if video:
            cells += [_score(reference, "alignment"), _number(reference.get("temporalConsistency"), 3)]
        table.add_row(*cells, "", "", "")
        if video and "shuffledFramesFrechetDistance" in reference:
            table.add_row("shuffled frames", _score(reference, "shuffledFramesFrechetDistance"), *([""] * 6))
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
        factors = classifier.get("factors") or []
        accuracy = ", ".join(
            f"{f.get('name')} {_number(f.get('accuracy'), 3)} (chance {_number(f.get('chance'), 3)})" for f in factors
        ) or _number(classifier.get("accuracy"), 3)
        console.print(
            f"domain features: a classifier of {classifier.get('labels')} trained at evaluate time;"
            f" held-out accuracy {accuracy}",
            highlight=False,
            soft_wrap=True,
        )
        if classifier.get("reliable") is False:
            console.print(f"UNRELIABLE: {classifier.get('reason', '')}", highlight=False, soft_wrap=True)
    for key, name in (("fid", "FID"), ("fvd", "FVD (I3D)")):
        standard = metrics.get(key, {})
        if standard and not standard.get("available", False):
            console.print(f"{name}: unavailable — {standard.get('reason', '')}", highlight=False, soft_wrap=True)
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


def _score(row: dict[str, Any], name: str) -> str:
    """A domain score, or 'unreliable (x)' when the evaluator was near chance."""
    unreliable = row.get(f"unreliable{name[0].upper()}{name[1:]}")
    if row.get(name) is None and unreliable is not None:
        return f"unreliable ({_number(unreliable)})"
    return _number(row.get(name))
