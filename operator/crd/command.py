"""`atoll crds`: print the CRDs (for `kubectl apply -f -`) or write them into a directory."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "print the DDMRun, DDMExpert and ComputeIsland CustomResourceDefinitions as YAML"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--write",
        metavar="DIR",
        type=Path,
        help="write one file per CRD into DIR (e.g. crds/) instead of printing them",
    )


def main(args: argparse.Namespace) -> int:
    from atoll.operator.crd import all_crds, crd_file_name, render_crd, render_crds

    crds = all_crds()
    if args.write is None:
        sys.stdout.write(render_crds(crds))
        return 0
    args.write.mkdir(parents=True, exist_ok=True)
    for crd in crds:
        path = args.write / crd_file_name(crd)
        path.write_text(render_crd(crd))
        print(path)
    return 0
