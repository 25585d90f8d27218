"""`atoll island add NAME --kubeconfig FILE`: check an island's credentials, then register it at home.

The check comes first and creates nothing anywhere: SelfSubjectAccessReviews on the island
for exactly what the operator needs there (atoll.operator.islands.access). Only when
nothing is missing are the kubeconfig Secret (operator namespace) and the ComputeIsland
created in the home cluster. The kubeconfig's content is never printed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "manage compute islands (other clusters experts may run on)"
DEFAULT_OPERATOR_NAMESPACE = "atoll-system"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="island_command", metavar="COMMAND", required=True)
    add = sub.add_parser(
        "add",
        help="check a cluster's credentials and register it as a ComputeIsland",
        description="Check with SelfSubjectAccessReviews that the credentials can do what the operator"
        " needs on the island (and nothing is missing), then create the kubeconfig Secret and the"
        " ComputeIsland in the home cluster.",
    )
    add.add_argument("name", metavar="NAME", help="the island's name (a DNS label; not 'home')")
    add.add_argument("--kubeconfig", required=True, type=Path, metavar="FILE", help="kubeconfig of the island")
    add.add_argument("--context", metavar="C", help="context of that kubeconfig (default: its current context)")
    add.add_argument(
        "--namespace", default="atoll", metavar="NS", help="namespace on the island for expert pods (default atoll)"
    )
    add.add_argument(
        "--store-endpoint",
        metavar="HOST:PORT",
        help="where the island's pods reach the store, if not the usual endpoint",
    )
    add.add_argument(
        "--home-kubeconfig", metavar="FILE", help="kubeconfig of the home cluster (default: $KUBECONFIG, in cluster)"
    )
    add.add_argument(
        "--operator-namespace",
        default=DEFAULT_OPERATOR_NAMESPACE,
        metavar="NS",
        help=f"the operator's namespace at home, for the kubeconfig Secret (default {DEFAULT_OPERATOR_NAMESPACE})",
    )


def main(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from atoll.api.errors import SpecError, format_validation_error
    from atoll.api.island import ComputeIslandManifest
    from atoll.operator.islands.check import check_access
    from atoll.operator.islands.kubeconfig import KubeconfigError, client_for, server_of, standalone
    from atoll.operator.islands.register import island_manifest, register
    from atoll.operator.submit import connect

    manifest = island_manifest(args.name, namespace=args.namespace, store_endpoint=args.store_endpoint)
    try:
        ComputeIslandManifest.model_validate(manifest)
    except ValidationError as error:
        raise SpecError(f"island {args.name!r}", format_validation_error(error), kind="ComputeIsland") from None
    source = str(args.kubeconfig)
    try:
        text = args.kubeconfig.read_text()
    except OSError as error:
        raise KubeconfigError(f"{source}: cannot read: {error.strerror}") from None
    kubeconfig = standalone(text, context=args.context, source=source, base=args.kubeconfig.resolve().parent)
    server = server_of(kubeconfig)
    report = check_access(client_for(kubeconfig), args.namespace, server=server)
    if report.missing:
        print(f"island {args.name}: the credentials of {source} at {server} may not:", file=sys.stderr)
        for request in report.missing:
            print(f"  {request}", file=sys.stderr)
        print(
            "nothing was created. Install charts/atoll-island on the island (or grant these) and try again.",
            file=sys.stderr,
        )
        return 1
    for request in report.broader:
        print(f"warning: the credentials may also {request}, which the operator never needs", file=sys.stderr)
    api_client, _ = connect(args.home_kubeconfig)
    done = register(api_client, manifest, operator_namespace=args.operator_namespace, kubeconfig=kubeconfig)
    print(
        f"computeisland.atoll.dev/{args.name} {done.island}"
        f" (kubeconfig in secret {done.operator_namespace}/{done.secret}; server {server})"
    )
    return 0
