"""`atoll plan`: print the placement plan of a DDMRun on a fleet described by a NodeList file.

No cluster needed: NODES.yaml is what `kubectl get nodes -o yaml` prints. The plan goes
to stdout as JSON (with its GPU-hours and cost, and what it provisions from the pools the
run declares); notes on how it was chosen (a deadline no plan meets), nodes left out and
where each speed figure came from go to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HELP = "print the placement plan of a DDMRun on a fleet (kubectl get nodes -o yaml) as JSON"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nodes", required=True, metavar="NODES.yaml", help="a NodeList (kubectl get nodes -o yaml)")
    parser.add_argument("--run", required=True, metavar="RUN.yaml", help="a DDMRun manifest")
    parser.add_argument(
        "--cluster-sizes",
        metavar="N1,N2,…",
        help="examples per cluster (partition/stats.json); equal clusters when omitted",
    )
    parser.add_argument(
        "--now",
        metavar="TIME",
        help="RFC 3339 time agent heartbeats are judged against (default: the newest heartbeat in NODES.yaml)",
    )


def main(args: argparse.Namespace) -> int:
    from atoll.api import load_manifest
    from atoll.errors import AtollError
    from atoll.operator.placement.planner import plan_run
    from atoll.operator.placement.pools import declared_pools

    manifest = load_manifest(args.run)
    nodes = read_nodes(Path(args.nodes))
    sizes = parse_sizes(args.cluster_sizes, manifest.spec.partition.clusters) if args.cluster_sizes else None
    try:
        now = _parse_now(args.now) if args.now else newest_heartbeat(nodes)
    except ValueError as error:
        raise AtollError(f"--now: {error}") from None
    pools = declared_pools(manifest.spec.placement.pools, nodes)
    result = plan_run(manifest.spec, nodes, cluster_sizes=sizes, now=now, pools=pools)
    json.dump(result.to_json(), sys.stdout, indent=2)
    sys.stdout.write("\n")
    sys.stdout.flush()  # the JSON first, then the notes, when both go to a terminal
    for reason in result.reasons:
        print(f"note: {reason}", file=sys.stderr)
    for exclusion in result.excluded:
        print(f"not used: {exclusion.node}: {exclusion.reason}", file=sys.stderr)
    for product, source in sorted(result.speed_sources.items()):
        print(f"speed of {product}: {result.speeds[product]:.3f} samples/s per GPU ({source})", file=sys.stderr)
    return 0


def read_nodes(path: Path) -> list[dict[str, Any]]:
    """The Node objects of a YAML file: a List/NodeList, single Nodes, or several documents."""
    import yaml

    from atoll.errors import AtollError

    try:
        documents = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except OSError as error:
        raise AtollError(f"--nodes {path}: cannot read: {error.strerror}") from None
    except yaml.YAMLError as error:
        raise AtollError(f"--nodes {path}: not YAML: {error}") from None
    nodes: list[dict[str, Any]] = []
    for number, document in enumerate(documents):
        if not isinstance(document, dict):
            raise AtollError(f"--nodes {path}: document {number} is not a mapping")
        items = document.get("items") if document.get("kind") in ("List", "NodeList") else [document]
        for index, item in enumerate(items or []):
            where = f"items[{index}]" if "items" in document else f"document {number}"
            if not isinstance(item, dict) or item.get("kind", "Node") != "Node":
                kind = item.get("kind") if isinstance(item, dict) else type(item).__name__
                raise AtollError(f"--nodes {path}: {where} is a {kind}, not a Node")
            if not (item.get("metadata") or {}).get("name"):
                raise AtollError(f"--nodes {path}: {where} has no metadata.name")
            nodes.append(item)
    if not nodes:
        raise AtollError(f"--nodes {path}: no Node found (expected `kubectl get nodes -o yaml` output)")
    return nodes


def parse_sizes(text: str, clusters: int) -> list[int]:
    """`120,80,100` → [120, 80, 100], one per cluster, each ≥ 0, not all 0."""
    from atoll.errors import AtollError

    try:
        sizes = [int(part) for part in text.split(",")]
    except ValueError:
        raise AtollError(f"--cluster-sizes must be comma-separated integers, got {text!r}") from None
    if len(sizes) != clusters:
        raise AtollError(f"--cluster-sizes has {len(sizes)} values but the run has partition.clusters = {clusters}")
    if any(size < 0 for size in sizes) or not any(sizes):
        raise AtollError(f"--cluster-sizes must be ≥ 0 and not all 0, got {text!r}")
    return sizes


def newest_heartbeat(nodes: list[dict[str, Any]]) -> datetime:
    """The newest agent heartbeat in a node snapshot (staleness is relative to it), else now."""
    from atoll.operator.placement import labels

    beats = []
    for node in nodes:
        value = ((node.get("metadata") or {}).get("annotations") or {}).get(labels.HEARTBEAT)
        try:
            beats.append(_parse_now(str(value)))
        except ValueError:
            continue
    return max(beats, default=datetime.now(UTC))


def _parse_now(text: str) -> datetime:
    moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
