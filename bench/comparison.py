"""What the DDM-vs-monolith benchmarks (images and video) share: counted FLOPs, runs, monolith specs.

FLOPs per training example are counted with torch.utils.flop_counter.FlopCounterMode on
one forward + backward pass of each model (matmuls and convolutions), router included;
partition k-means and sampling are not training and are not counted. Both sides of a
comparison run through `atoll run FILE --local`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml


def latent_shape(spec: dict[str, Any]) -> tuple[int, ...]:
    """The identity VAE's latent of one example: [3, R, R], or [3, F, R, R] for clips."""
    side = int(spec["dataset"]["resolution"])
    frames = int(spec["dataset"].get("frames", 1))
    return (3, side, side) if frames == 1 else (3, frames, side, side)


def expert_flops(preset: str, spec: dict[str, Any]) -> float:
    """Training FLOPs (forward + backward) of one example for an expert of `preset`."""
    from torch.utils.flop_counter import FlopCounterMode

    from atoll.trainer.encoders import text_encoder_for
    from atoll.trainer.models.expert import build_expert, velocity

    latent = latent_shape(spec)
    text = text_encoder_for(spec["dataset"].get("textEncoder", "hashed-bow"))
    caption, mask = (t.clone() for t in text.encode_prompts(["a 7 moving left"]))  # out of inference mode
    expert = build_expert(preset, latent_shape=latent, text_dim=text.dim, seed=0)
    with FlopCounterMode(display=False) as counter:
        velocity(expert, torch.randn(1, *latent), torch.tensor([0.5]), caption, mask).square().mean().backward()
    return float(counter.get_total_flops())


def router_flops(spec: dict[str, Any]) -> float:
    """Training FLOPs (forward + backward) of one example for the spec's router."""
    from torch.utils.flop_counter import FlopCounterMode

    from atoll.trainer import flow
    from atoll.trainer.encoders import text_encoder_for
    from atoll.trainer.models.router import build_router, router_logits

    latent = latent_shape(spec)
    text = text_encoder_for(spec["dataset"].get("textEncoder", "hashed-bow"))
    caption, mask = (t.clone() for t in text.encode_prompts(["a 7 moving left"]))
    reads_caption = bool(spec["router"].get("conditionOnText", False))
    router = build_router(
        spec["router"]["preset"],
        clusters=spec["partition"]["clusters"],
        latent_shape=latent,
        text_dim=text.dim if reads_caption else None,
    )
    x = torch.randn(1, *latent)
    sigma = torch.tensor([0.5])
    x_t = flow.add_noise(x, torch.randn_like(x), sigma)
    with FlopCounterMode(display=False) as counter:
        router_logits(router, x_t, sigma, caption, mask).logsumexp(1).sum().backward()
    return float(counter.get_total_flops())


def parameters(preset: str, spec: dict[str, Any]) -> int:
    """Exact parameter count of one expert of `preset` on the spec's data."""
    from atoll.trainer.encoders import text_encoder_for
    from atoll.trainer.models.expert import expert_parameter_count

    text = text_encoder_for(spec["dataset"].get("textEncoder", "hashed-bow"))
    return expert_parameter_count(preset, latent_shape=latent_shape(spec), text_dim=text.dim)


def monolith_presets(expert_preset: str) -> tuple[str, str]:
    """The monoliths' presets for a DDM of `expert_preset` experts: the same preset (equal FLOPs) and
    its twice-as-wide variant `<preset>-w2` (equal FLOPs, about four experts' parameters)."""
    from atoll.api.presets import PRESETS

    wide = f"{expert_preset}-w2"
    if expert_preset not in PRESETS or wide not in PRESETS:
        raise SystemExit(
            f"expert preset {expert_preset!r} has no wide variant {wide!r} for the equal-parameter monolith"
        )
    return expert_preset, wide


def monolith(base: dict[str, Any], *, name: str, preset: str, steps: int) -> dict[str, Any]:
    """The DDM's manifest as a one-expert model (no router) of `preset` trained `steps` steps."""
    document = json.loads(json.dumps(base))
    spec = document["spec"]
    spec["partition"]["clusters"] = 1
    spec["expert"]["preset"] = preset
    spec["expert"]["steps"] = steps
    # One expert: every strategy is the same (and top-2 of one expert is refused by the spec).
    spec["sampling"]["strategy"] = "full"
    spec["evaluation"]["strategies"] = ["full"]
    document["metadata"] = {"name": name}
    return document


def run_manifest(document: dict[str, Any], path: Path, workdir: Path) -> tuple[dict[str, Any], float]:
    """`atoll run FILE --local`; returns eval/metrics.json and the wall time."""
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    start = time.perf_counter()
    command = [sys.executable, "-m", "atoll", "run", str(path), "--local", "--workdir", str(workdir)]
    subprocess.run(command, check=True)
    seconds = time.perf_counter() - start
    name = document["metadata"]["name"]
    metrics = json.loads((workdir / "runs" / name / "eval" / "metrics.json").read_text())
    return metrics, seconds


def versions() -> dict[str, str]:
    import platform

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": __import__("diffusers").__version__,
    }


def score(row: dict[str, Any], name: str = "frechetDistance") -> float:
    """A domain score of metrics.json, or its unreliable value (the table then says so)."""
    value = row.get(name)
    if value is None:
        value = row.get(f"unreliable{name[0].upper()}{name[1:]}")
    return float("nan") if value is None else float(value)
