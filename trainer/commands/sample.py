"""`atoll sample MODEL_DIR --prompt TEXT …`: images from an assembled DDM, written as one PNG.

MODEL_DIR is a run's model/ directory (or an s3:// URI of one, downloaded first). With
--num N > 1 the PNG is a grid. Sampling only: it never changes the model.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "sample images from an assembled DDM (a run's model/ directory)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL_DIR", help="the run's model/ directory (path or s3:// URI)")
    parser.add_argument("--prompt", required=True, metavar="TEXT", help='caption, e.g. "a handwritten 7"')
    parser.add_argument(
        "--strategy", metavar="S", help="top-1, top-2, top-k:N, threshold:p or full (default: the model's)"
    )
    parser.add_argument("--steps", type=int, metavar="N", help="Euler steps (default: the model's)")
    parser.add_argument("--guidance", type=float, metavar="G", help="classifier-free guidance, 1 = off")
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="seed of the initial noise (0)")
    parser.add_argument("--num", type=int, default=1, metavar="N", help="images to sample; N > 1 writes a grid")
    parser.add_argument("--out", type=Path, required=True, metavar="F.png", help="the PNG to write")


def main(args: argparse.Namespace) -> int:
    import contextlib
    import tempfile

    from atoll.extras import require_train

    require_train("atoll sample")
    import torch

    from atoll.errors import AtollError
    from atoll.store import open_store
    from atoll.trainer.evaluation.grid import to_grid
    from atoll.trainer.pipeline import DDMPipeline, check_model_dir
    from atoll.trainer.strategies import parse_strategy

    if args.num < 1:
        raise AtollError("--num must be at least 1")
    if args.steps is not None and args.steps < 1:
        raise AtollError("--steps must be at least 1")
    if args.guidance is not None and args.guidance < 0:
        raise AtollError("--guidance must be ≥ 0")
    if args.strategy is not None:
        parse_strategy(args.strategy)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with contextlib.ExitStack() as stack:
        directory = Path(args.model)
        if args.model.startswith("s3://"):
            store = open_store(args.model)
            directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="atoll-model-")))
            for info in store.list_objects(""):
                store.get_file(info.key, directory / info.key)
        check_model_dir(directory)
        pipeline = DDMPipeline.from_pretrained(directory, device=device)
    pipeline.set_progress_bar_config(disable=True)
    out = pipeline(
        args.prompt,
        strategy=args.strategy,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance,
        num_images_per_prompt=args.num,
        generator=args.seed,
        return_usage=True,
    )
    images = out.images
    assert isinstance(images, list)
    picture = images[0] if args.num == 1 else to_grid(images, columns=min(args.num, 8))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    picture.save(args.out)
    usage = out.usage or []
    experts = sum(sum(step["selected"]) for step in usage) / max(1, len(usage))
    strategy = args.strategy or pipeline.config.default_strategy
    steps = args.steps or pipeline.config.default_steps
    print(
        f"wrote {args.out} ({args.num} image{'s' if args.num > 1 else ''}, {strategy}, {steps} steps,"
        f" seed {args.seed}; {experts:.2f} of {pipeline.num_experts} experts run per step)"
    )
    return 0
