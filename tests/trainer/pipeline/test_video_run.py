"""A video DDM trained for real, in-process, on moving digits (tiny: seconds of training): the Wan
experts learn, a trained expert beats an untrained one on domain FVD, the router reads clips,
assembly and evaluation write a loadable model, an animated grid and video metrics, and
`atoll sample` writes GIF and MP4 clips that start from a given first frame."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import pytest
import torch

from atoll.api import DDMRunSpec
from atoll.api.load import dump_spec_json
from atoll.cli import main as atoll_main
from atoll.store import LocalStore
from atoll.trainer.context import StageContext
from atoll.trainer.evaluation.domain import build_domain_metric, read_real_data
from atoll.trainer.evaluation.sampling import generate
from atoll.trainer.pipeline import DDMPipeline
from atoll.trainer.stages import assemble, evaluate, expert, partition, router
from atoll.trainer.training.runner import run_training

VIDEO_RUN: dict[str, Any] = {
    "dataset": {"uri": "builtin://moving-digits", "resolution": 16, "frames": 4, "fps": 4, "maxExamples": 320},
    "partition": {"clusters": 2, "features": "pixels", "fineClusters": 8, "sampleSize": 320},
    "expert": {
        "preset": "video-tiny",
        "steps": 40,
        "globalBatchSize": 8,
        "checkpointEvery": 20,
        "learningRate": 2e-3,
        "warmupSteps": 5,
        "firstFrameConditioning": 0.5,
    },
    "router": {"preset": "tiny", "steps": 80, "globalBatchSize": 16, "checkpointEvery": 40, "learningRate": 2e-3},
    "sampling": {"strategy": "top-1", "steps": 6, "guidance": 2.0},
    "evaluation": {"samples": 24, "strategies": ["top-1", "full"]},
}


@pytest.fixture(scope="module")
def video_run(tmp_path_factory: pytest.TempPathFactory, _one_torch_thread: None) -> tuple[StageContext, list[float]]:
    """Partition, two experts and the router trained on 320 moving-digit clips; expert 0's losses."""
    spec = DDMRunSpec.model_validate(VIDEO_RUN)
    store = LocalStore(tmp_path_factory.mktemp("video-run") / "run")
    store.put_bytes("spec.json", dump_spec_json(spec).encode())
    partition.run(StageContext(spec=spec, store=store))
    losses: list[float] = []
    for k in range(spec.partition.clusters):
        result = run_training(expert.expert_job(StageContext(spec=spec, store=store, expert=k)), store)
        assert result is not None
        losses = losses or result.losses
    router.run(StageContext(spec=spec, store=store))
    assemble.run(StageContext(spec=spec, store=store))
    return StageContext(spec=spec, store=store), losses


def test_wan_experts_learn(video_run: tuple[StageContext, list[float]]) -> None:
    _, losses = video_run
    assert len(losses) == 40
    assert np.mean(losses[-10:]) < 0.7 * np.mean(losses[:5]), losses


def test_a_trained_expert_beats_an_untrained_one_on_domain_fvd(video_run: tuple[StageContext, list[float]]) -> None:
    ctx, _ = video_run
    assert isinstance(ctx.store, LocalStore)
    trained = DDMPipeline.from_pretrained(ctx.store.root / "model")
    trained.set_progress_bar_config(disable=True)
    untrained = DDMPipeline.from_pretrained(ctx.store.root / "model")
    untrained.set_progress_bar_config(disable=True)
    for fresh in untrained.experts:
        with torch.no_grad():
            for parameter in fresh.parameters():  # random weights of the same architecture
                parameter.copy_(torch.randn_like(parameter) * 0.02)
    real = read_real_data(ctx.store, trained.codec())
    assert real.images.shape[1:] == (3, 4, 16, 16)
    metric = build_domain_metric(real, samples=24, seed=0, classifier_steps=60)
    rows = metric.sample_rows
    scores = []
    for pipeline in (trained, untrained):
        clips = generate(
            pipeline, real.text[rows], real.text_mask[rows], strategy="top-1", steps=6, guidance=2.0, seed=0
        ).images
        assert clips.shape == (24, 3, 4, 16, 16)
        scores.append(metric.distance(clips))
    assert scores[0] < 0.5 * scores[1], scores


def test_the_router_reads_clips_and_is_best_at_low_noise(video_run: tuple[StageContext, list[float]]) -> None:
    ctx, _ = video_run
    metrics = ctx.store.get_json("router/metrics.json")
    buckets = metrics["buckets"]
    assert len(buckets) == 10
    low = buckets[0]["accuracy"]
    assert low > metrics["chance"], metrics
    assert low >= buckets[-1]["accuracy"], buckets


def test_evaluate_writes_an_animated_grid_and_video_metrics(
    video_run: tuple[StageContext, list[float]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx, _ = video_run
    monkeypatch.setenv("ATOLL_WEIGHTS_DIR", str(tmp_path))  # no CLIP here: said so, not faked
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    evaluate.run(ctx)
    metrics = ctx.store.get_json("eval/metrics.json")
    assert metrics["video"] is True
    assert "fvd" in metrics
    assert metrics["fvd"]["available"] is False  # no I3D weights here: said so, not faked
    assert "i3d" in metrics["fvd"]["reason"].lower()
    assert metrics["clipSimilarity"]["available"] is False
    assert f"{tmp_path}/clip-vitl14 (absent)" in metrics["clipSimilarity"]["reason"]
    assert [f["name"] for f in metrics["classifier"]["factors"]] == ["digit", "direction"]
    reliable = metrics["classifier"]["reliable"]
    for row in metrics["strategies"].values():
        assert (row["frechetDistance"] is not None) == reliable
        assert row["grid"].endswith(".gif")
        assert 0 <= row["temporalConsistency"] <= 1
        assert row["clipSimilarity"] is None
        assert row["secondsPerClip"] > 0
        with PIL.Image.open(io.BytesIO(ctx.store.get_bytes(row["grid"]))) as gif:
            assert gif.format == "GIF"
            assert gif.n_frames == 4
    reference = metrics["reference"]
    shuffled = reference.get("shuffledFramesFrechetDistance") or reference["unreliableShuffledFramesFrechetDistance"]
    floor = reference.get("frechetDistance") or reference["unreliableFrechetDistance"]
    assert shuffled > floor


def test_atoll_sample_writes_clips_from_a_first_frame(
    video_run: tuple[StageContext, list[float]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ctx, _ = video_run
    assert isinstance(ctx.store, LocalStore)
    model = str(ctx.store.root / "model")
    first = PIL.Image.new("RGB", (16, 16))
    first.paste((255, 255, 255), (4, 4, 12, 12))  # a white square the clips must start from
    first.save(tmp_path / "first.png")
    gif = tmp_path / "clip.gif"
    code = atoll_main(
        [
            "sample",
            model,
            "--prompt",
            "a 3 moving left",
            "--image",
            str(tmp_path / "first.png"),
            "--steps",
            "4",
            "--out",
            str(gif),
        ]
    )
    assert code == 0
    assert "1 clip" in capsys.readouterr().out
    with PIL.Image.open(gif) as animation:
        assert animation.n_frames == 4
        animation.seek(0)
        start = np.asarray(animation.convert("RGB"), dtype=np.int16)
    expected = np.asarray(first.resize(start.shape[:2][::-1], PIL.Image.Resampling.NEAREST), dtype=np.int16)
    assert np.abs(start - expected).max() <= 8  # the given first frame, kept (up to GIF's palette)

    mp4 = tmp_path / "clips.mp4"
    assert (
        atoll_main(["sample", model, "--prompt", "a 7 moving up", "--num", "2", "--steps", "2", "--out", str(mp4)]) == 0
    )
    assert mp4.read_bytes()[4:8] == b"ftyp"
    assert atoll_main(["sample", model, "--prompt", "x", "--out", str(tmp_path / "x.png")]) == 1  # a video model
    assert "write a .gif or an .mp4" in capsys.readouterr().err
