"""`atoll calibrate BENCH.json`: the planner's speed table from a bench/gpu.py run.

Prints the calibration (speed entries with their sources, and the planner's memory model
against the measured peaks) as JSON; `--out FILE` also writes the speed table
(`operator/placement/measured_speeds.json` is the one Atoll ships). Exits 1 when the planner
under-estimates a measured peak by more than 10 %: the speeds are still written, the memory
model needs fixing. Needs no GPU and no cluster.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HELP = "turn a bench/gpu.py JSON into the planner's measured speed table"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bench", metavar="BENCH.json", help="the JSON bench/gpu.py wrote")
    parser.add_argument(
        "--compiled",
        action="store_true",
        help="use the torch.compile runs (for fleets whose experts train with compile: true)",
    )
    parser.add_argument("--out", metavar="FILE", help="write the speed table here (measured_speeds.json format)")


def main(args: argparse.Namespace) -> int:
    from atoll.operator.placement.measured import CalibrationError, calibrate, table_json

    path = Path(args.bench)
    try:
        bench = json.loads(path.read_text())
    except OSError as error:
        raise CalibrationError(f"{path}: cannot read: {error.strerror}") from None
    except json.JSONDecodeError as error:
        raise CalibrationError(f"{path}: not JSON: {error}") from None
    result = calibrate(bench, compiled=args.compiled)
    if args.out:
        note = f"atoll calibrate {path.name}{' --compiled' if args.compiled else ''}"
        Path(args.out).write_text(json.dumps(table_json(result.entries, note), indent=2) + "\n")
    document = {**table_json(result.entries), "memory": [check.to_json() for check in result.memory]}
    json.dump(document, sys.stdout, indent=2)
    sys.stdout.write("\n")
    failing = [check for check in result.memory if not check.ok]
    for check in failing:
        print(
            f"the planner under-estimates {check.model} {check.preset} at micro-batch {check.micro_batch} by"
            f" {check.under_estimate:.1%} (measured {check.measured_bytes / 2**30:.2f} GiB, planned"
            f" {check.planner_bytes / 2**30:.2f} GiB): fix operator/placement/workload.py",
            file=sys.stderr,
        )
    return 1 if failing else 0
