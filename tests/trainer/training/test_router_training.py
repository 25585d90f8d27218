"""The router stage: trained on every cluster with the experts' noising, evaluated per σ bucket."""

from __future__ import annotations

from pathlib import Path

import torch

from atoll import layout
from atoll.store import LocalStore
from atoll.trainer.context import StageContext
from atoll.trainer.heartbeat import read_progress
from atoll.trainer.models import load_router_for_sampling
from atoll.trainer.stages import router
from tests.trainer.training.synthetic import synthetic_spec, write_synthetic_run


def test_router_tells_clusters_apart_at_low_sigma(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    spec = write_synthetic_run(store, sizes=(60, 30, 30), spec=synthetic_spec(clusters=3, router_steps=40))
    router.run(StageContext(spec=spec, store=store))

    metrics = store.get_json(router.METRICS)
    assert metrics["step"] == 40
    assert metrics["clusters"] == 3
    assert metrics["heldOutExamples"] == 12
    torch.testing.assert_close(torch.tensor(metrics["prior"]), torch.tensor([0.5, 0.25, 0.25]), rtol=0, atol=1e-9)
    assert metrics["chance"] == 0.5
    buckets = metrics["buckets"]
    assert len(buckets) == 10
    assert buckets[0]["sigmaLow"] == 0.0
    assert buckets[-1]["sigmaHigh"] == 1.0
    # Nearly clean samples are easy to place; near pure noise only the prior is left.
    assert buckets[0]["accuracy"] >= 0.9, buckets
    assert buckets[0]["crossEntropy"] < buckets[-1]["crossEntropy"], buckets
    progress = read_progress(store, "router")
    assert progress is not None
    assert progress.state == "done"
    assert progress.step == 40

    # Idempotent: a second run neither trains nor re-evaluates.
    before = store.get_bytes(router.METRICS)
    router.run(StageContext(spec=spec, store=store))
    assert store.get_bytes(router.METRICS) == before
    model = load_router_for_sampling(store)
    assert model.config.num_clusters == 3
    assert model.config.caption_channels is None


def test_conditional_router_reads_the_caption(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    spec = write_synthetic_run(
        store, sizes=(20, 20), spec=synthetic_spec(router_steps=3, router={"conditionOnText": True})
    )
    job = router.router_job(StageContext(spec=spec, store=store))
    task = job.make_task(store)
    assert task.describe()["conditionOnText"] is True
    router.run(StageContext(spec=spec, store=store))
    assert load_router_for_sampling(store).config.caption_channels == 16
    assert store.exists(layout.ROUTER + "/metrics.json")
