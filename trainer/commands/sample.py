"""`atoll sample MODEL_DIR --prompt TEXT …`: images or clips from an assembled DDM, written as one file.

MODEL_DIR is a run's model/ directory (or an s3:// URI of one, downloaded first). An image
model writes a PNG, a video model an animated GIF or an MP4 (by --out's suffix); with
--num N > 1 the file is a grid. `--image FIRST.png` starts every clip from that first
frame (image-to-video). Sampling only: it never changes the model.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

HELP = "sample images or clips from an assembled DDM (a run's model/ directory)"
VIDEO_SUFFIXES = (".gif", ".mp4")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL_DIR", help="the run's model/ directory (path or s3:// URI)")
    parser.add_argument("--prompt", required=True, metavar="TEXT", help='caption, e.g. "a handwritten 7"')
    parser.add_argument(
        "--strategy", metavar="S", help="top-1, top-2, top-k:N, threshold:p or full (default: the model's)"
    )
    parser.add_argument("--steps", type=int, metavar="N", help="Euler steps (default: the model's)")
    parser.add_argument("--guidance", type=float, metavar="G", help="classifier-free guidance, 1 = off")
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="seed of the initial noise (0)")
    parser.add_argument("--num", type=int, default=1, metavar="N", help="samples to draw; N > 1 writes a grid")
    parser.add_argument(
        "--image", type=Path, metavar="FIRST.png", help="video: the first frame every clip starts from (image-to-video)"
    )
    parser.add_argument(
        "--fps", type=float, metavar="FPS", help="video: frames per second of the file (default: the model's data)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        metavar="F",
        help="the file to write: .png for images, .gif or .mp4 for video",
    )


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

    _check_arguments(args)
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
    suffix = args.out.suffix.lower()
    if pipeline.is_video and suffix not in VIDEO_SUFFIXES:
        raise AtollError(f"--out {args.out}: this is a video model; write a .gif or an .mp4")
    if not pipeline.is_video and (suffix in VIDEO_SUFFIXES or args.image is not None):
        raise AtollError("this model samples images: write a .png, and give no --image")
    first = None
    if args.image is not None:
        import PIL.Image

        if not args.image.is_file():
            raise AtollError(f"--image {args.image} does not exist")
        first = PIL.Image.open(args.image)
    out = pipeline(
        args.prompt,
        image=first,
        strategy=args.strategy,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance,
        num_images_per_prompt=args.num,
        generator=args.seed,
        return_usage=True,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if pipeline.is_video:
        _write_clips(out.frames, args.out, fps=args.fps or pipeline.config.fps or 8.0)
    else:
        images = out.images
        assert isinstance(images, list)
        picture = images[0] if args.num == 1 else to_grid(images, columns=min(args.num, 8))
        picture.save(args.out)
    usage = out.usage or []
    experts = sum(sum(step["selected"]) for step in usage) / max(1, len(usage))
    strategy = args.strategy or pipeline.config.default_strategy
    steps = args.steps or pipeline.config.default_steps
    what = "clip" if pipeline.is_video else "image"
    print(
        f"wrote {args.out} ({args.num} {what}{'s' if args.num > 1 else ''}, {strategy}, {steps} steps,"
        f" seed {args.seed}; {experts:.2f} of {pipeline.num_experts} experts run per step)"
    )
    return 0


def _check_arguments(args: argparse.Namespace) -> None:
    from atoll.errors import AtollError
    from atoll.trainer.strategies import parse_strategy

    if args.num < 1:
        raise AtollError("--num must be at least 1")
    if args.steps is not None and args.steps < 1:
        raise AtollError("--steps must be at least 1")
    if args.guidance is not None and args.guidance < 0:
        raise AtollError("--guidance must be ≥ 0")
    if args.strategy is not None:
        parse_strategy(args.strategy)


def _write_clips(clips: Any, path: Path, *, fps: float) -> None:
    """A list of clips (each a list of PIL frames) as one animated GIF or MP4: a grid per frame when several."""
    from atoll.trainer.evaluation.grid import to_grid
    from atoll.trainer.evaluation.video import gif_bytes, mp4_bytes

    columns = min(len(clips), 8)
    frames = [clips[0][k] if len(clips) == 1 else to_grid([c[k] for c in clips], columns) for k in range(len(clips[0]))]
    if len(clips) == 1:  # enlarge a lone small clip like a grid tile, so it can be seen
        frames = [to_grid([f], 1) for f in frames]
    path.write_bytes(mp4_bytes(frames, fps) if path.suffix.lower() == ".mp4" else gif_bytes(frames, fps))
