"""Can an expert memorise a handful of moving-digit clips, and does the real sampler give them back?

    .venv/bin/python bench/video_overfit.py [--clips 4] [--steps 300] [--batch 8] [--lr 1e-3]
                                            [--cases image,video-p2,video-p4] [--threads 1] [--any-class]

The cheapest check that tells a sampling bug from too little training. It takes `--clips`
clips of one class ("a 0 moving right") of `builtin://moving-digits` (16 × 16, 4 frames at 4
fps, the video quickstart's data) and trains one expert from scratch on them with the stages'
flow-matching math (`atoll.trainer.flow`, `models.expert.velocity`, AdamW with warm-up,
gradient clipping at 1), then samples 8 clips through `DDMPipeline` with one expert and the
quickstart's sampler (FlowMatchEulerDiscreteScheduler, 20 Euler steps, guidance 1) and
measures each sample's mean squared error to its nearest training clip ([-1, 1] pixels).
Cases, all on the same clips, seed and sampler:

  * image: the image path — a `tiny` PixArt expert on the clips' first frames;
  * video-p2: the `video-tiny` Wan expert as the preset builds it (patch (1, 2, 2), 256 tokens);
  * video-p4: the same Wan expert with patch (1, 4, 4) (64 tokens per clip).

Printed per case: the mean loss of the last 50 steps, CPU seconds per step, the samples'
nearest-neighbour MSE and its ratio to the baseline measured on the same clips: the MSE of a
blank (all black) clip, which is what a model that learned only the background scores. A
sampler, sign or layout bug keeps the ratio near 1 however long the expert trains; too little
training shows as a ratio that falls with --steps. With --any-class the clips are the first
`--clips` of every class (an expert's cluster, e.g. 512) and the 8 samples take the captions
of the first 8: a look at how far an expert of the quickstart's size gets in a given budget.
Pure CPU; nothing is written.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SAMPLES = 8
SAMPLING_STEPS = 20


def one_class_clips(count: int, any_class: bool = False) -> tuple[Any, list[str]]:
    """The first `count` moving-digit clips of the class of clip 0 (of any class), and their captions."""
    import torch

    from atoll.trainer.data.moving import MovingDigitsDataset

    dataset = MovingDigitsDataset(resolution=16, frames=4, fps=4.0, seed=0)
    wanted = dataset.label(0)
    rows = [i for i in range(len(dataset)) if any_class or dataset.label(i) == wanted][:count]
    return torch.stack([dataset.clip(i) for i in rows]), [dataset.caption(i) for i in rows]


def build(case: str, data_shape: tuple[int, ...], text_dim: int) -> Any:
    """The expert of a case, seeded."""
    from atoll.trainer.models.common import seeded
    from atoll.trainer.models.expert import expert_class, expert_config

    config = expert_config("tiny" if case == "image" else "video-tiny", latent_shape=data_shape, text_dim=text_dim)
    if case == "video-p4":
        config["patch_size"] = [1, 4, 4]
    with seeded(0):
        return expert_class(config).from_config(config)


def run_case(case: str, clips: Any, captions: list[str], args: argparse.Namespace) -> dict[str, float]:
    import torch

    from atoll.trainer import flow
    from atoll.trainer.encoders import text_encoder_for, vae_for
    from atoll.trainer.models.expert import velocity
    from atoll.trainer.pipeline import DDMPipeline, flow_match_scheduler

    data = clips[:, :, 0] if case == "image" else clips
    encoder = text_encoder_for("hashed-bow")
    text, mask = encoder.encode_prompts(captions)
    expert = build(case, tuple(data.shape[1:]), encoder.dim)
    optimizer = torch.optim.AdamW(expert.parameters(), lr=args.lr, weight_decay=0.0, foreach=True)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / 20))
    generator = torch.Generator().manual_seed(1)
    losses: list[float] = []
    start = time.process_time()
    for _ in range(args.steps):
        rows = torch.randint(0, data.shape[0], (args.batch,), generator=generator)
        x0 = data[rows]
        noise = torch.randn(x0.shape, generator=generator)
        sigma = flow.sample_sigma(args.batch, generator=generator)
        prediction = velocity(expert, flow.add_noise(x0, noise, sigma), sigma, text[rows], mask[rows])
        loss = flow.flow_matching_loss(prediction, x0, noise).mean()
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(expert.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    cpu_per_step = (time.process_time() - start) / args.steps
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
        num_inference_steps=SAMPLING_STEPS,
        guidance_scale=1.0,
        generator=0,
        output_type="pt",
    )
    samples = (out.images if case == "image" else out.frames.transpose(1, 2)) * 2 - 1
    nearest = ((samples[:, None] - data[None]) ** 2).flatten(2).mean(2).min(dim=1).values
    blank = float(((data + 1) ** 2).mean())
    tail = losses[-50:]
    return {
        "loss": sum(tail) / len(tail),
        "cpuPerStep": cpu_per_step,
        "nearestMse": float(nearest.mean()),
        "bestMse": float(nearest.min()),
        "blankMse": blank,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=4)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--cases", default="image,video-p2,video-p4")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--any-class", action="store_true")
    args = parser.parse_args()
    import diffusers
    import torch

    torch.set_num_threads(args.threads)
    clips, captions = one_class_clips(args.clips, args.any_class)
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, diffusers {diffusers.__version__}")
    what = "clips of every class" if args.any_class else f"clips of {captions[0]!r}"
    print(f"{args.clips} {what}, {args.steps} steps × {args.batch}, lr {args.lr}")
    print("case       loss    CPU s/step  nearest MSE  best MSE  blank MSE  nearest / blank")
    for case in args.cases.split(","):
        row = run_case(case, clips, captions, args)
        print(
            f"{case:<9} {row['loss']:.4f}  {row['cpuPerStep']:10.3f}  {row['nearestMse']:11.4f}"
            f"  {row['bestMse']:8.4f}  {row['blankMse']:9.4f}  {row['nearestMse'] / row['blankMse']:15.2f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
