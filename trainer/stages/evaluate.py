"""The `evaluate` stage: sample grids and eval/metrics.json for every strategy in spec.evaluation.

Per strategy: `evaluation.samples` images conditioned on real captions, their domain
Fréchet distance to the real data (and Inception FID when those weights exist), expert
usage and speed, and eval/grid-<strategy>.png. Adds the real-vs-real noise floor and the
router's accuracy by σ. metrics.json is written last and marks the stage done. Reads the
model and data, never changes them.
"""

from __future__ import annotations

import io
from typing import Any

import torch

from atoll import layout
from atoll.api import DDMRunSpec
from atoll.log import get_logger
from atoll.stages import StageJob, is_done
from atoll.store import NotFoundError, Store, join_key
from atoll.trainer.context import StageContext
from atoll.trainer.evaluation.domain import DomainMetric, RealData, build_domain_metric, read_real_data
from atoll.trainer.evaluation.grid import grid_order, grid_png, tensor_to_images
from atoll.trainer.evaluation.inception import InceptionFeatures, find_inception
from atoll.trainer.evaluation.sampling import generate
from atoll.trainer.fence import write_done
from atoll.trainer.heartbeat import Heartbeat
from atoll.trainer.pipeline import DDMPipeline
from atoll.trainer.stages.assemble import open_model
from atoll.trainer.strategies import parse_strategy
from atoll.trainer.training.distributed import configure_threads, default_device

log = get_logger(__name__)

JOB = StageJob("evaluate")
METRICS = JOB.done_marker
"""eval/metrics.json: the evaluate stage's done marker, written last."""
ROUTER_METRICS = join_key(layout.ROUTER, "metrics.json")


def grid_key(strategy: str) -> str:
    """eval/grid-<strategy>.png, with ':' (top-k:3, threshold:0.9) written as '-'."""
    return join_key(layout.EVAL, f"grid-{strategy.replace(':', '-')}.png")


def run(ctx: StageContext) -> None:
    """Evaluate the assembled model; idempotent (an existing metrics.json means done)."""
    store, spec = ctx.store, ctx.spec
    strategies = spec.evaluation.strategies
    heartbeat = Heartbeat(store, "evaluate", attempt=ctx.attempt or 1, total_steps=len(strategies) + 1)
    if is_done(store, JOB):
        heartbeat.done(step=len(strategies) + 1, message="already evaluated")
        return
    configure_threads()
    try:
        metrics = evaluate(store, spec, heartbeat)
        write_done(store, JOB, ctx.attempt, metrics)
        heartbeat.done(step=len(strategies) + 1, message="evaluated")
    except Exception as error:
        heartbeat.failed(str(error) or type(error).__name__)
        raise


def evaluate(store: Store, spec: DDMRunSpec, heartbeat: Heartbeat | None = None) -> dict[str, Any]:
    """Everything metrics.json holds; writes the grids on the way."""
    device = default_device()
    with open_model(store) as directory:
        pipeline = DDMPipeline.from_pretrained(directory, device=device)
    pipeline.set_progress_bar_config(disable=True)
    if heartbeat is not None:
        heartbeat.running(message="training the domain classifier", gpu=_gpu_name(device))
    real = read_real_data(store, pipeline.codec())
    inception_path, fid_reason = find_inception()
    inception = InceptionFeatures(inception_path, device) if inception_path else None
    metric = build_domain_metric(real, samples=spec.evaluation.samples, seed=spec.evaluation.seed, inception=inception)
    metrics: dict[str, Any] = {
        "dataset": spec.dataset.uri,
        "samples": int(metric.sample_rows.shape[0]),
        "sampling": {"steps": spec.sampling.steps, "guidance": spec.sampling.guidance},
        "experts": pipeline.num_experts,
        "classifier": {
            "labels": "digit class" if spec.dataset.uri == "builtin://digits" else real.label_kind,
            "classes": metric.classifier.classes,
            "accuracy": metric.classifier.accuracy,
            "features": metric.classifier.model.head.in_features,
            "trainExamples": metric.classifier.train_examples,
        },
        "reference": _reference(real, metric),
        "fid": {"available": inception is not None, **({"weights": str(inception_path)} if inception_path else {})},
        "strategies": {},
        "strategyOrder": list(spec.evaluation.strategies),  # JSON objects are stored with sorted keys
        "router": _router_metrics(store),
    }
    if inception is None:
        metrics["fid"]["reason"] = fid_reason
    if heartbeat is not None:
        heartbeat.update(step=1, message="classifier trained", force=True)
    for i, strategy in enumerate(spec.evaluation.strategies):
        metrics["strategies"][strategy] = _evaluate_strategy(store, spec, pipeline, real, metric, strategy=strategy)
        if heartbeat is not None:
            heartbeat.update(step=i + 2, message=f"evaluated {strategy}", force=True)
    return metrics


def _evaluate_strategy(
    store: Store, spec: DDMRunSpec, pipeline: DDMPipeline, real: RealData, metric: DomainMetric, *, strategy: str
) -> dict[str, Any]:
    needed = parse_strategy(strategy).min_experts
    if pipeline.num_experts > 1 and needed > pipeline.num_experts:
        return {"skipped": f"needs {needed} experts, the model has {pipeline.num_experts}"}
    rows = metric.sample_rows
    generated = generate(
        pipeline,
        real.text[rows],
        real.text_mask[rows],
        strategy=strategy,
        steps=spec.sampling.steps,
        guidance=spec.sampling.guidance,
        seed=spec.evaluation.seed,
    )
    order, columns = grid_order(real.labels[rows] if real.label_kind == "class" else torch.full_like(rows, -1))
    grid = grid_png(tensor_to_images(generated.images), order, columns)
    buffer = io.BytesIO()
    grid.save(buffer, format="PNG")
    store.put_bytes(grid_key(strategy), buffer.getvalue())
    row: dict[str, Any] = {
        "frechetDistance": metric.distance(generated.images),
        "fid": metric.fid(generated.images),
        "expertsPerStep": generated.experts_per_step,
        "expertUsage": generated.selected,
        "expertWeight": generated.weight,
        "secondsPerImage": generated.seconds / max(1, generated.images.shape[0]),
        "grid": grid_key(strategy),
    }
    log.info("strategy evaluated", strategy=strategy, frechet=round(row["frechetDistance"], 3))
    return row


def _reference(real: RealData, metric: DomainMetric) -> dict[str, Any]:
    """The real-vs-real noise floor: the held-out real sample against the reference half."""
    sample = real.images[metric.sample_rows]
    return {
        "frechetDistance": metric.distance(sample),
        "fid": metric.fid(sample),
        "referenceExamples": int(metric.reference_rows.shape[0]),
        "sampleExamples": int(metric.sample_rows.shape[0]),
    }


def _router_metrics(store: Store) -> dict[str, Any]:
    try:
        router = store.get_json(ROUTER_METRICS)
    except NotFoundError:
        return {"available": False, "reason": "no router/metrics.json (a one-expert model has no router)"}
    return {
        "available": True,
        "accuracy": router.get("accuracy"),
        "chance": router.get("chance"),
        "accuracyBySigma": [
            {"sigmaLow": b.get("sigmaLow"), "sigmaHigh": b.get("sigmaHigh"), "accuracy": b.get("accuracy")}
            for b in router.get("buckets", [])
        ],
    }


def _gpu_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
