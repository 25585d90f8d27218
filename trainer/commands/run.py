"""`atoll run FILE --local`: validate a DDMRun manifest and run its whole pipeline on this machine.

Re-running the same command resumes an interrupted run; a finished run prints its results
again. Without --local the manifest would go to Kubernetes (the operator's job).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

HELP = "run a DDMRun manifest: --local runs every stage on this machine"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", help="a DDMRun manifest (YAML)")
    parser.add_argument("--local", action="store_true", help="run every stage here as subprocesses")
    parser.add_argument(
        "--workdir", type=Path, default=Path(".atoll"), metavar="DIR", help="logs and the default store (.atoll)"
    )
    parser.add_argument(
        "--store",
        metavar="URI",
        help="store root (path or s3://bucket/prefix) overriding spec.storage.uri; the run writes under URI/<name>",
    )
    parser.add_argument("--jobs", type=int, metavar="N", help="most stages at once (default: the CPU cores)")


def main(args: argparse.Namespace) -> int:
    from rich.console import Console

    from atoll.api import load_manifest
    from atoll.errors import AtollError
    from atoll.trainer.runtime.board import make_board
    from atoll.trainer.runtime.local import LocalOptions, LocalRuntime, StageFailedError
    from atoll.trainer.runtime.report import print_results, read_metrics

    manifest = load_manifest(args.file)
    if not args.local:
        raise AtollError(
            "submitting to Kubernetes is not available from this command yet: use --local to run on this machine"
        )
    if args.jobs is not None and args.jobs < 1:
        raise AtollError("--jobs must be at least 1")
    # Pipes and logs get plain lines at a readable width; terminals get live bars.
    console = Console() if sys.stdout.isatty() else Console(width=int(os.environ.get("COLUMNS", "120")))
    options = LocalOptions(workdir=args.workdir, store=args.store, jobs=args.jobs)
    runtime = LocalRuntime(manifest, options, make_board(console))
    console.print(
        f"run {runtime.name}: store {runtime.store.uri}, logs {runtime.logs}", highlight=False, soft_wrap=True
    )
    try:
        result = runtime.run()
    except StageFailedError as error:
        console.print(f"[red]error:[/red] {error.job.label} failed: {error.reason}", highlight=False, soft_wrap=True)
        console.print(f"  log: {error.log_path}", highlight=False, soft_wrap=True)
        console.print("  fix the cause and run the same command again to resume", highlight=False, soft_wrap=True)
        return 1
    except KeyboardInterrupt:
        console.print(
            "interrupted: stages stopped; run the same command again to resume", highlight=False, soft_wrap=True
        )
        return 130
    done = f"finished in {result.wall_seconds:.0f}s"
    if result.skipped:
        done += f" (already done: {', '.join(result.skipped)})"
    console.print(done, highlight=False, soft_wrap=True)
    print_results(console, result.store, read_metrics(result.store))
    return 0
