"""The planner's cost model for video experts: tokens = frames × h × w / patch volume, Wan's VAE
geometry, memory that grows with the clip, and placements that follow from it."""

from __future__ import annotations

import pytest

from atoll.api import DDMRunSpec
from atoll.operator.placement import plan_run, workload_of
from tests.placement.fleets import NOW, PRODUCTS, node

H100, L4, T4 = PRODUCTS[0], PRODUCTS[5], PRODUCTS[8]


def video_run(
    preset: str = "wan-1.3b", *, frames: int = 17, resolution: int = 256, vae: str = "wan2.1-vae"
) -> DDMRunSpec:
    return DDMRunSpec.model_validate(
        {
            "dataset": {"uri": "builtin://moving-digits", "resolution": resolution, "frames": frames, "vae": vae},
            "weights": {"source": "hub"},
            "partition": {"clusters": 2},
            "expert": {"preset": preset, "steps": 10_000, "globalBatchSize": 64},
        }
    )


def test_video_tokens_follow_the_vae_and_the_patch() -> None:
    wan = workload_of(video_run(frames=17, resolution=256))
    assert wan.latent_shape == (16, 5, 32, 32)  # Wan's VAE: 1 + 16/4 latent frames, 8× down in space
    assert wan.tokens == 5 * 16 * 16  # patch (1, 2, 2)
    pixels = workload_of(video_run("video-tiny", frames=8, resolution=16, vae="identity"))
    assert pixels.latent_shape == (3, 8, 16, 16)
    assert pixels.tokens == 8 * 8 * 8
    # Wan 2.1 1.3B's parameter count, and FLOPs that grow with the frames (attention a bit faster).
    assert wan.parameters == pytest.approx(1.42e9, rel=0.02)
    longer = workload_of(video_run(frames=33, resolution=256))
    assert longer.tokens == 9 * 16 * 16
    assert longer.flops_per_sample() > 9 / 5 * wan.flops_per_sample()


def test_video_memory_decides_which_gpus_may_train_an_expert() -> None:
    wan = workload_of(video_run(frames=33, resolution=480))
    assert wan.min_memory_gib(gpus=1, bf16=False) > 16  # a T4 (no bf16, 16 GB) cannot hold it
    assert wan.split_batch(64, 1, T4[1], bf16=False) is None
    micro, accum = wan.split_batch(64, 1, H100[1], bf16=True) or (0, 0)
    assert micro * accum == 64
    assert micro < 64  # long clips: gradient accumulation on an 80 GB GPU


def test_the_planner_places_video_experts_by_their_cost() -> None:
    fleet = [node("h100", H100, 8), node("l4", L4, 4), node("t4", T4, 4)]
    result = plan_run(video_run(frames=33, resolution=480), fleet, now=NOW)
    assert {a.node for a in result.assignments} <= {"h100", "l4"}  # never the T4s: the expert does not fit
    assert any(a.node == "h100" for a in result.assignments)
    for a in result.assignments:
        assert a.micro_batch * a.grad_accum * a.gpus == 64
