"""Entry point of every stage: `python -m atoll.trainer <stage> --run SPEC_URI --store RUN_URI …`.

The contract (arguments, done markers, exit codes) is `atoll.stages`; this module parses the
arguments, claims the stage's attempt (fencing, for every stage), runs the stage and maps
what happened onto `ExitCode`: 0 done, 1 failed (its reason is the last line on stderr and
in progress.json), 2 bad arguments, 3 fenced (a newer attempt exists), 4 bad input.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from atoll.errors import AtollError, BadInputError
from atoll.stages import STAGES, ExitCode, StageJob

# stage → module with `run(ctx: StageContext) -> None`.
MODULES: dict[str, str] = {stage: f"atoll.trainer.stages.{stage}" for stage in STAGES}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m atoll.trainer", description=__doc__)
    parser.add_argument("stage", choices=STAGES, help="the stage to run")
    parser.add_argument("--run", required=True, metavar="SPEC_URI", help="the run's spec.json (path or s3:// URI)")
    parser.add_argument("--store", required=True, metavar="RUN_URI", help="the run's store prefix (path or s3:// URI)")
    parser.add_argument("--expert", type=int, metavar="K", help="expert index (expert stage only)")
    parser.add_argument("--attempt", type=int, metavar="N", help="attempt number for fencing (default: next)")
    parser.add_argument("--micro-batch", type=int, metavar="M", help="examples per forward pass per GPU")
    parser.add_argument("--grad-accum", type=int, metavar="A", help="gradient accumulation steps")
    parser.add_argument("--gpus", type=int, default=1, metavar="G", help="GPUs to use on this node")
    return parser


def parse(argv: Sequence[str] | None) -> tuple[argparse.Namespace, StageJob]:
    """The arguments and the stage job they name (argparse exits 2 on bad arguments)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.expert is not None and args.expert < 0:
        parser.error("--expert must be >= 0")
    if args.attempt is not None and args.attempt < 1:
        parser.error("--attempt must be >= 1")
    try:
        job = StageJob(args.stage, args.expert)
    except ValueError as error:
        parser.error(f"{error} (--expert K)")
    return args, job


def main(argv: Sequence[str] | None = None) -> int:
    from atoll.log import get_logger

    args, job = parse(argv)
    log = get_logger("atoll.trainer")
    try:
        from atoll.store import open_store, read_spec
        from atoll.trainer.context import StageContext
        from atoll.trainer.fence import claim_attempt

        spec = read_spec(args.run)
        store = open_store(args.store)
        ctx = StageContext(
            spec=spec,
            store=store,
            expert=args.expert,
            attempt=claim_attempt(store, job, args.attempt),
            micro_batch=args.micro_batch,
            grad_accum=args.grad_accum,
            gpus=args.gpus,
        )
        importlib.import_module(MODULES[args.stage]).run(ctx)
    except AtollError as error:
        code = exit_code(error)
        log.error("stage failed", stage=args.stage, expert=args.expert, error=str(error), exit=int(code))
        print(f"error: {error}", file=sys.stderr)
        return code
    return ExitCode.DONE


def exit_code(error: AtollError) -> ExitCode:
    """The contract's exit status for an expected failure."""
    from atoll.store import FencedError

    if isinstance(error, FencedError):
        return ExitCode.FENCED
    if isinstance(error, BadInputError):
        return ExitCode.BAD_INPUT
    return ExitCode.FAILED


if __name__ == "__main__":
    sys.exit(main())
