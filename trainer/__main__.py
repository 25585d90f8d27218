"""Entry point of every stage: `python -m atoll.trainer <stage> --run SPEC_URI --store RUN_URI …`.

Exit status: 0 done, 1 the stage failed (its reason is the last line on stderr and in
progress.json), 2 bad arguments, 3 fenced (a newer attempt of this stage exists).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from atoll.errors import AtollError
from atoll.extras import MissingExtraError, require_train

# stage → module with `run(ctx: StageContext) -> None`.
STAGES: dict[str, str] = {
    "partition": "atoll.trainer.stages.partition",
    "expert": "atoll.trainer.stages.expert",
    "router": "atoll.trainer.stages.router",
    "assemble": "atoll.trainer.stages.assemble",
    "evaluate": "atoll.trainer.stages.evaluate",
}

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_FENCED = 3


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m atoll.trainer", description=__doc__)
    parser.add_argument("stage", choices=sorted(STAGES), help="the stage to run")
    parser.add_argument("--run", required=True, metavar="SPEC_URI", help="the run's spec.json (path or s3:// URI)")
    parser.add_argument("--store", required=True, metavar="RUN_URI", help="the run's store prefix (path or s3:// URI)")
    parser.add_argument("--expert", type=int, metavar="K", help="expert index (expert stage)")
    parser.add_argument("--attempt", type=int, metavar="N", help="attempt number for fencing (default: next)")
    parser.add_argument("--micro-batch", type=int, metavar="M", help="examples per forward pass per GPU")
    parser.add_argument("--grad-accum", type=int, metavar="A", help="gradient accumulation steps")
    parser.add_argument("--gpus", type=int, default=1, metavar="G", help="GPUs to use on this node")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from atoll.log import get_logger

    args = build_parser().parse_args(argv)
    log = get_logger("atoll.trainer")
    try:
        require_train("python -m atoll.trainer")
    except MissingExtraError as error:  # the operator install: no stage can run here
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    try:
        from atoll.store import open_store, read_spec
        from atoll.trainer.context import StageContext

        ctx = StageContext(
            spec=read_spec(args.run),
            store=open_store(args.store),
            expert=args.expert,
            attempt=args.attempt,
            micro_batch=args.micro_batch,
            grad_accum=args.grad_accum,
            gpus=args.gpus,
        )
        module = importlib.import_module(STAGES[args.stage])
        module.run(ctx)
    except AtollError as error:
        from atoll.store import FencedError

        log.error("stage failed", stage=args.stage, expert=args.expert, error=str(error))
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FENCED if isinstance(error, FencedError) else EXIT_FAILED
    return 0


if __name__ == "__main__":
    sys.exit(main())
