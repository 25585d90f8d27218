"""`atoll run FILE`: validate a DDMRun manifest, then run it on this machine or on Kubernetes.

With --local every stage runs here as a subprocess (atoll.trainer.runtime); re-running the
same command resumes an interrupted run and a finished run prints its results again.
Without --local the DDMRun is applied to the current kube-context, where the operator
runs it (atoll.operator.submit). This module sits above both and imports each lazily.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from atoll.api import DDMRunManifest

HELP = "run a DDMRun manifest: on the current kube-context, or with --local on this machine"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", help="a DDMRun manifest (YAML)")
    parser.add_argument("--local", action="store_true", help="run every stage here as subprocesses")
    parser.add_argument("--workdir", type=Path, metavar="DIR", help="logs and the default store (default: .atoll)")
    parser.add_argument(
        "--store",
        metavar="URI",
        help="store root (path or s3://bucket/prefix) overriding spec.storage.uri; the run writes under URI/<name>",
    )
    parser.add_argument("--jobs", type=int, metavar="N", help="most stages at once (default: the CPU cores)")
    parser.add_argument("-n", "--namespace", help="Kubernetes namespace (default: the manifest's, else the context's)")
    parser.add_argument("--kubeconfig", help="kubeconfig file (default: KUBECONFIG or ~/.kube/config)")


def main(args: argparse.Namespace) -> int:
    from atoll.api import load_manifest

    manifest = load_manifest(args.file)
    if not args.local:
        return submit(manifest, args)
    return run_locally(manifest, args)


def submit(manifest: DDMRunManifest, args: argparse.Namespace) -> int:
    """Apply the DDMRun to the current kube-context and say how to follow it."""
    from atoll.api.load import check_for_kubernetes
    from atoll.errors import AtollError
    from atoll.operator.submit import apply_run

    for flag, value in (("--workdir", args.workdir), ("--store", args.store), ("--jobs", args.jobs)):
        if value is not None:
            raise AtollError(f"{flag} applies to --local runs only (on Kubernetes, set spec.storage)")
    check_for_kubernetes(manifest, args.file)
    done = apply_run(manifest, namespace=args.namespace, kubeconfig=args.kubeconfig)
    print(f"ddmrun.atoll.dev/{done.name} {done.action} in namespace {done.namespace}")
    print(f"follow it: atoll status {done.name} -n {done.namespace} --watch   (or: kubectl get ddm,ddmx -w)")
    return 0


def run_locally(manifest: DDMRunManifest, args: argparse.Namespace) -> int:
    """Every stage on this machine, with live progress; resumable."""
    from atoll.extras import require_train

    require_train("atoll run --local")  # before anything imports the training stack
    from rich.console import Console

    from atoll.errors import AtollError
    from atoll.stages import ExitCode
    from atoll.trainer.runtime.board import make_board
    from atoll.trainer.runtime.local import LocalOptions, LocalRuntime, StageFailedError
    from atoll.trainer.runtime.report import print_results, read_metrics

    if args.namespace or args.kubeconfig:
        raise AtollError("--namespace and --kubeconfig apply to Kubernetes runs, not --local")
    if args.jobs is not None and args.jobs < 1:
        raise AtollError("--jobs must be at least 1")
    # Pipes and logs get plain lines at a readable width; terminals get live bars.
    console = Console() if sys.stdout.isatty() else Console(width=int(os.environ.get("COLUMNS", "120")))
    options = LocalOptions(workdir=args.workdir or Path(".atoll"), store=args.store, jobs=args.jobs)
    runtime = LocalRuntime(manifest, options, make_board(console))
    console.print(
        f"run {runtime.name}: store {runtime.store.uri}, logs {runtime.logs}", highlight=False, soft_wrap=True
    )
    try:
        result = runtime.run()
    except StageFailedError as error:
        console.print(f"[red]error:[/red] {error.job.label} failed: {error.reason}", highlight=False, soft_wrap=True)
        console.print(f"  log: {error.log_path}", highlight=False, soft_wrap=True)
        if error.code == ExitCode.BAD_INPUT:
            hint = "  the spec or the data is wrong (no retry helps): fix it, then run the same command again"
        else:
            hint = "  fix the cause and run the same command again to resume"
        console.print(hint, highlight=False, soft_wrap=True)
        return 1
    except KeyboardInterrupt:
        console.print(
            "interrupted: stages stopped; run the same command again to resume", highlight=False, soft_wrap=True
        )
        return 130
    done = f"finished in {result.wall_seconds:.0f}s"
    if result.cpu_seconds:
        done += f", {sum(result.cpu_seconds.values()):.0f} CPU s in stages"
    if result.skipped:
        done += f" (already done: {', '.join(result.skipped)})"
    console.print(done, highlight=False, soft_wrap=True)
    print_results(console, result.store, read_metrics(result.store))
    return 0
