"""The `atoll` command line: one sub-command per module, imported only when it runs.

Each command module defines HELP (one line), `add_arguments(parser)` and
`main(args) -> int`, and keeps heavy imports (torch, kopf) inside `main`, so
`atoll --help` stays instant and every command parses in the operator install (no
torch). A command that needs the `train` extra calls `atoll.extras.require_train`
first and exits 2 with one line saying how to install it.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from atoll import __version__
from atoll.errors import AtollError
from atoll.extras import MissingExtraError

# name → module implementing it. Only commands that work are listed.
COMMANDS: dict[str, str] = {
    "run": "atoll.commands.run",
    "status": "atoll.operator.status_command",
    "sample": "atoll.trainer.commands.sample",
    "crds": "atoll.operator.crd.command",
    "operator": "atoll.operator.command",
    "plan": "atoll.operator.placement.cli",
    "calibrate": "atoll.operator.placement.calibrate",
    "agent": "atoll.operator.agent.cli",
    "island": "atoll.operator.islands.command",
}


def build_parser() -> argparse.ArgumentParser:
    """The parser with every registered sub-command."""
    parser = argparse.ArgumentParser(
        prog="atoll", description="Train Decentralized Diffusion Models on heterogeneous GPU fleets."
    )
    parser.add_argument("--version", action="version", version=f"atoll {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        command = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(command)
        command.set_defaults(_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `atoll` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        code: int = args._module.main(args)
    except MissingExtraError as error:  # the operator install without `atoll[train]`
        print(f"error: {error}", file=sys.stderr)
        return 2
    except AtollError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
