"""Can an expert memorise a handful of moving-digit clips, and does the real sampler give them back?

    .venv/bin/python bench/video_overfit.py [--clips 4] [--steps 300] [--batch 8] [--lr 1e-3]
                                            [--cases image,video-p2,video-p4] [--threads 1] [--any-class]
                                            [--preset video-tiny] [--wan WIDTH,DEPTH,HEADS,FFN]
                                            [--prediction sample|velocity]
                                            [--warmup 20] [--ema 0] [--caption-dropout 0]
                                            [--guidance 1] [--sampling-steps 20] [--sample-at 500,1000]
                                            [--out DIR]

The cheapest check that tells a sampling bug from too little training, and the quickest way
to size the video quickstart's experts. It takes `--clips` clips of one class ("a 0 moving
right") of `builtin://moving-digits` (16 × 16, 4 frames at 4 fps, the video quickstart's
data) and trains one expert from scratch on them with the stages' flow-matching math
(`atoll.trainer.flow`, `models.expert.velocity`, AdamW with warm-up, gradient clipping at 1,
optionally caption dropout and an EMA of the weights as the expert stage has), then samples 8
clips through `DDMPipeline` with one expert and the quickstart's sampler
(FlowMatchEulerDiscreteScheduler, 20 Euler steps, guidance 1 unless told otherwise) and
measures each sample's mean squared error to its nearest training clip ([-1, 1] pixels).
Cases, all on the same clips, seed and sampler:

  * image: the image path — a `tiny` PixArt expert on the clips' first frames;
  * video-p2: the `--preset` Wan expert (video-tiny unless told) with patch (1, 2, 2);
  * video-p4: the same Wan expert with patch (1, 4, 4);
  * video: the preset's own patch.

`--wan` overrides the Wan expert's width, depth, heads and feed-forward width, to try a shape
before it becomes a preset. `--prediction velocity` makes the Wan expert's network output the
velocity itself (the earlier experts) instead of the clean clip (the presets' x0 prediction).

Printed per case: the mean loss of the last 50 steps, CPU seconds per step, the samples'
nearest-neighbour MSE and its ratio to the baseline measured on the same clips: the MSE of a
blank (all black) clip, which is what a model that learned only the background scores. A
sampler, sign or layout bug keeps the ratio near 1 however long the expert trains; too little
training shows as a ratio that falls with --steps. With --any-class the clips are the first
`--clips` of every class (an expert's cluster, e.g. 512) and the 8 samples take the captions
of the first 8: a look at how far an expert of the quickstart's size gets in a given budget.
`--sample-at` also samples (and prints a row) at those earlier steps, so one run shows how
legibility grows with training. Pure CPU; nothing is written unless `--out DIR` is given:
then `<case>-step<N>.png` (one row per sample, its frames left to right, one frame for the image
case; the real clips of the same captions in `real.png`) is written there, to be looked at.
"""

from __future__ import annotations

import argparse
import copy
import platform
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SAMPLES = 8


def one_class_clips(count: int, any_class: bool = False) -> tuple[Any, list[str]]:
    """The first `count` moving-digit clips of the class of clip 0 (of any class), and their captions."""
    import torch

    from atoll.trainer.data.moving import MovingDigitsDataset

    dataset = MovingDigitsDataset(resolution=16, frames=4, fps=4.0, seed=0)
    wanted = dataset.label(0)
    rows = [i for i in range(len(dataset)) if any_class or dataset.label(i) == wanted][:count]
    return torch.stack([dataset.clip(i) for i in rows]), [dataset.caption(i) for i in rows]


def build(case: str, data_shape: tuple[int, ...], text_dim: int, args: argparse.Namespace) -> Any:
    """The expert of a case, seeded."""
    from atoll.trainer.models.common import seeded
    from atoll.trainer.models.expert import POSITIONS_KEY, PREDICTION_KEY, SINCOS_3D, expert_class, expert_config

    config = expert_config("tiny" if case == "image" else args.preset, latent_shape=data_shape, text_dim=text_dim)
    if case == "video-p2":
        config["patch_size"] = [1, 2, 2]
    if case == "video-p4":
        config["patch_size"] = [1, 4, 4]
    if case != "image" and args.prediction == "velocity":
        config.pop(PREDICTION_KEY, None)  # the network outputs the velocity itself, as before
    if case != "image" and args.positions != "preset":
        config.pop(POSITIONS_KEY, None)
        if args.positions == "on":
            config[POSITIONS_KEY] = SINCOS_3D
    if case != "image" and args.wan:
        width, depth, heads, ffn = (int(v) for v in args.wan.split(","))
        config.update(num_attention_heads=heads, attention_head_dim=width // heads, num_layers=depth, ffn_dim=ffn)
    with seeded(0):
        return expert_class(config).from_config(config)


def filmstrip(clips: Any, path: Path) -> None:
    """Clips [n, 3, F, R, R] in [-1, 1] as one PNG: a row per clip, its frames left to right."""
    from atoll.trainer.evaluation.grid import to_grid
    from atoll.trainer.evaluation.video import clip_frames

    frames = [frame for clip in clips for frame in clip_frames(clip)]
    to_grid(frames, columns=clips.shape[2]).save(path)


def sample(expert: Any, encoder: Any, captions: tuple[Any, Any], data: Any, args: argparse.Namespace) -> Any:
    """8 samples [8, 3, (F,) R, R] in [-1, 1] from one expert through DDMPipeline."""
    from atoll.trainer.encoders import vae_for
    from atoll.trainer.pipeline import DDMPipeline, flow_match_scheduler

    text, mask = captions
    pipeline = DDMPipeline(
        vae=vae_for("identity").model,
        text_encoder=encoder.model,
        scheduler=flow_match_scheduler(),
        experts=[expert.eval()],
        latent_shape=list(data.shape[1:]),
    )
    pipeline.set_progress_bar_config(disable=True)
    out = pipeline(
        prompt_embeds=text[:SAMPLES] if args.any_class else text[:1].expand(SAMPLES, -1, -1),
        prompt_attention_mask=mask[:SAMPLES] if args.any_class else mask[:1].expand(SAMPLES, -1),
        num_inference_steps=args.sampling_steps,
        guidance_scale=args.guidance,
        generator=0,
        output_type="pt",
    )
    expert.train()
    return (out.images if data.ndim == 4 else out.frames.transpose(1, 2)) * 2 - 1


def measure(case: str, step: int, samples: Any, data: Any, args: argparse.Namespace) -> dict[str, float]:
    """The samples' distances to their nearest training clip (and a blank clip's), their filmstrip written."""
    if args.out:
        filmstrip(samples.unsqueeze(2) if case == "image" else samples, args.out / f"{case}-step{step}.png")
    nearest = ((samples[:, None] - data[None]) ** 2).flatten(2).mean(2).min(dim=1).values
    return {
        "nearestMse": float(nearest.mean()),
        "bestMse": float(nearest.min()),
        "blankMse": float(((data + 1) ** 2).mean()),
    }


def optimisers(expert: Any, args: argparse.Namespace) -> tuple[Any, Any, Any]:
    """AdamW with linear warm-up (the stages' optimiser) and the EMA of the weights, or None."""
    import torch

    ema = None
    if args.ema > 0:
        from diffusers.training_utils import EMAModel

        ema = EMAModel(expert.parameters(), decay=args.ema, foreach=True)
    optimizer = torch.optim.AdamW(expert.parameters(), lr=args.lr, weight_decay=0.0, foreach=True)
    warmup = max(1, args.warmup)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
    return optimizer, schedule, ema


def run_case(case: str, clips: Any, captions: list[str], args: argparse.Namespace) -> list[dict[str, float]]:
    """One row per sampled step: loss, CPU s per training step and the samples' distances."""
    import torch

    from atoll.trainer import flow
    from atoll.trainer.encoders import text_encoder_for
    from atoll.trainer.models.expert import velocity

    data = clips[:, :, 0] if case == "image" else clips
    encoder = text_encoder_for("hashed-bow")
    text, mask = encoder.encode_prompts(captions)
    null_text, null_mask = encoder.encode_prompts([""])
    expert = build(case, tuple(data.shape[1:]), encoder.dim, args)
    optimizer, schedule, ema = optimisers(expert, args)
    generator = torch.Generator().manual_seed(1)
    sample_at = sorted({*(int(v) for v in args.sample_at.split(",") if v), args.steps})
    losses: list[float] = []
    rows: list[dict[str, float]] = []
    cpu = 0.0
    for step in range(1, args.steps + 1):
        start = time.process_time()
        picked = torch.randint(0, data.shape[0], (args.batch,), generator=generator)
        x0 = data[picked]
        noise = torch.randn(x0.shape, generator=generator)
        sigma = flow.sample_sigma(args.batch, generator=generator)
        batch_text, batch_mask = text[picked], mask[picked]
        if args.caption_dropout > 0:  # drawn only when asked, so runs without it keep their noise
            drop = torch.rand(args.batch, generator=generator) < args.caption_dropout
            batch_text = torch.where(drop[:, None, None], null_text, batch_text)
            batch_mask = torch.where(drop[:, None], null_mask, batch_mask)
        prediction = velocity(expert, flow.add_noise(x0, noise, sigma), sigma, batch_text, batch_mask)
        loss = flow.flow_matching_loss(prediction, x0, noise).mean()
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(expert.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if ema is not None:
            ema.step(expert.parameters())
        cpu += time.process_time() - start
        losses.append(loss.item())
        if step in sample_at:
            model = expert
            if ema is not None:
                model = copy.deepcopy(expert)
                ema.copy_to(model.parameters())
            samples = sample(model, encoder, (text, mask), data, args)
            tail = losses[-50:]
            row = {"step": step, "loss": sum(tail) / len(tail), "cpuPerStep": cpu / step}
            rows.append(row | measure(case, step, samples, data, args))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=4)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=20, help="linear learning-rate warm-up steps")
    parser.add_argument("--cases", default="image,video-p2,video-p4")
    parser.add_argument("--preset", default="video-tiny", help="the Wan preset of the video cases")
    parser.add_argument("--wan", default="", help="WIDTH,DEPTH,HEADS,FFN: override the Wan expert's shape")
    parser.add_argument(
        "--prediction",
        choices=["sample", "velocity"],
        default="sample",
        help="what the Wan expert's network outputs: x0 (the presets') or the velocity (the earlier experts')",
    )
    parser.add_argument(
        "--positions",
        choices=["preset", "on", "off"],
        default="preset",
        help="fixed 3-D sin-cos positions on the Wan expert's patch tokens: as the preset says, or forced",
    )
    parser.add_argument("--ema", type=float, default=0.0, help="sample an EMA of the weights with this decay (0: off)")
    parser.add_argument("--caption-dropout", type=float, default=0.0, help="share of steps on the empty caption")
    parser.add_argument("--guidance", type=float, default=1.0)
    parser.add_argument("--sampling-steps", type=int, default=20)
    parser.add_argument("--sample-at", default="", help="comma-separated earlier steps to sample at too")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--any-class", action="store_true")
    parser.add_argument("--out", type=Path, default=None, help="write the samples' filmstrips (PNG) here")
    args = parser.parse_args()
    import diffusers
    import torch

    torch.set_num_threads(args.threads)
    clips, captions = one_class_clips(args.clips, args.any_class)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        real = clips[:SAMPLES] if args.any_class else clips[:1].expand(SAMPLES, -1, -1, -1, -1)
        filmstrip(real, args.out / "real.png")
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, diffusers {diffusers.__version__}")
    what = "clips of every class" if args.any_class else f"clips of {captions[0]!r}"
    print(f"{args.clips} {what}, {args.steps} steps × {args.batch}, lr {args.lr}, warm-up {args.warmup}")
    print(
        f"preset {args.preset}{' reshaped ' + args.wan if args.wan else ''}, predicting {args.prediction},"
        f" EMA {args.ema or 'off'},"
        f" caption dropout {args.caption_dropout}, sampler {args.sampling_steps} steps at guidance {args.guidance}"
    )
    print("case       step  loss    CPU s/step  nearest MSE  best MSE  blank MSE  nearest / blank")
    for case in args.cases.split(","):
        for row in run_case(case, clips, captions, args):
            print(
                f"{case:<9} {row['step']:5.0f}  {row['loss']:.4f}  {row['cpuPerStep']:10.3f}"
                f"  {row['nearestMse']:11.4f}  {row['bestMse']:8.4f}  {row['blankMse']:9.4f}"
                f"  {row['nearestMse'] / row['blankMse']:15.2f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
