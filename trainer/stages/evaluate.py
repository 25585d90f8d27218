"""The `evaluate` stage: sample grids and eval/metrics.json for every strategy in spec.evaluation.

Per strategy: `evaluation.samples` images (or clips) conditioned on real captions, their
domain Fréchet distance to the real data (FVD in a 3-D evaluator's features for clips;
Inception FID / I3D FVD when those weights exist), for clips the text–video alignment
(how often the evaluator recognises the content and motion the caption asked for) and
temporal consistency, CLIP text–video similarity (CLIP score for images) when CLIP's weights
exist, expert usage and speed, and eval/grid-<strategy>.png (an animated
.gif for clips). Adds the real-vs-real noise floor (and, for clips, real clips with their
frames shuffled), the evaluator's held-out accuracy — domain scores of an evaluator near
chance are reported as unreliable, not as numbers — and the router's accuracy by σ.
metrics.json is written last and marks the stage done. Reads the model and data, never
changes them.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import torch

from atoll import layout
from atoll.api import DDMRunSpec
from atoll.log import get_logger
from atoll.stages import StageJob, is_done
from atoll.store import NotFoundError, Store, join_key
from atoll.trainer.context import StageContext
from atoll.trainer.data import DatasetError, open_dataset
from atoll.trainer.data.base import DatasetUnreachableError
from atoll.trainer.encoders.text import CLIP_REPO
from atoll.trainer.evaluation.clipsim import load_clip_scorer
from atoll.trainer.evaluation.domain import DomainMetric, RealData, build_domain_metric, read_real_data
from atoll.trainer.evaluation.grid import grid_order, grid_png, tensor_to_images
from atoll.trainer.evaluation.i3d import I3DFeatures, find_i3d
from atoll.trainer.evaluation.inception import InceptionFeatures, find_inception
from atoll.trainer.evaluation.sampling import generate
from atoll.trainer.evaluation.video import clip_grid, gif_bytes, shuffle_frames, temporal_consistency
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

ClipSimilarity = Callable[[torch.Tensor], "float | None"]
"""Examples generated for (or taken from) the evaluation captions → their mean CLIP similarity."""


def grid_key(strategy: str, video: bool = False) -> str:
    """eval/grid-<strategy>.png (.gif for clips), with ':' (top-k:3, threshold:0.9) written as '-'."""
    return join_key(layout.EVAL, f"grid-{strategy.replace(':', '-')}.{'gif' if video else 'png'}")


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
    video = real.images.ndim == 5
    standard_name = "fvd" if video else "fid"
    weights, standard_reason = find_i3d() if video else find_inception()
    standard: Any = None
    if weights is not None:
        standard = I3DFeatures(weights, device) if video else InceptionFeatures(weights, device)
    metric = build_domain_metric(real, samples=spec.evaluation.samples, seed=spec.evaluation.seed, inception=standard)
    clip_similarity, clip_info = _clip_similarity(spec, real, metric.sample_rows, device)
    metrics: dict[str, Any] = {
        "dataset": spec.dataset.uri,
        "video": video,
        "samples": int(metric.sample_rows.shape[0]),
        "sampling": {"steps": spec.sampling.steps, "guidance": spec.sampling.guidance},
        "experts": pipeline.num_experts,
        "classifier": _classifier(spec, real, metric),
        "reference": _reference(real, metric, clip_similarity, seed=spec.evaluation.seed),
        standard_name: {"available": standard is not None, **({"weights": str(weights)} if weights else {})},
        "clipSimilarity": clip_info,
        "strategies": {},
        "strategyOrder": list(spec.evaluation.strategies),  # JSON objects are stored with sorted keys
        "router": _router_metrics(store),
    }
    if standard is None:
        metrics[standard_name]["reason"] = standard_reason
    if heartbeat is not None:
        heartbeat.update(step=1, message="classifier trained", force=True)
    for i, strategy in enumerate(spec.evaluation.strategies):
        metrics["strategies"][strategy] = _evaluate_strategy(
            store, spec, pipeline, real, metric, clip_similarity=clip_similarity, strategy=strategy
        )
        if heartbeat is not None:
            heartbeat.update(step=i + 2, message=f"evaluated {strategy}", force=True)
    return metrics


def _evaluate_strategy(
    store: Store,
    spec: DDMRunSpec,
    pipeline: DDMPipeline,
    real: RealData,
    metric: DomainMetric,
    *,
    clip_similarity: ClipSimilarity | None,
    strategy: str,
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
    samples = generated.images
    video = samples.ndim == 5
    key = grid_key(strategy, video)
    store.put_bytes(key, _grid(real, rows, samples, fps=spec.dataset.fps))
    row: dict[str, Any] = {
        **_scores(metric, "frechetDistance", metric.distance(samples)),
        ("fvd" if video else "fid"): metric.fid(samples),
        "clipSimilarity": clip_similarity(samples) if clip_similarity else None,
        "expertsPerStep": generated.experts_per_step,
        "expertUsage": generated.selected,
        "expertWeight": generated.weight,
        ("secondsPerClip" if video else "secondsPerImage"): generated.seconds / max(1, samples.shape[0]),
        "grid": key,
    }
    if video:
        both, per_factor = metric.recognised(samples, real.factor_labels(real.labels[rows]))
        row.update(_scores(metric, "alignment", both))
        by_factor = dict(zip(real.factor_names, per_factor, strict=True))
        row["alignmentByFactor"] = by_factor if metric.classifier.reliable else None
        row["temporalConsistency"] = temporal_consistency(samples)
    log.info("strategy evaluated", strategy=strategy, frechet=round(metric.distance(samples), 3))
    return row


def _scores(metric: DomainMetric, name: str, value: float) -> dict[str, Any]:
    """{name: value} from a reliable evaluator; {name: None, unreliableName: value} from one near chance."""
    if metric.classifier.reliable:
        return {name: value}
    return {name: None, f"unreliable{name[0].upper()}{name[1:]}": value}


def _grid(real: RealData, rows: torch.Tensor, samples: torch.Tensor, *, fps: float) -> bytes:
    """The grid file: a PNG of images, an animated GIF of clips; one row per class (per content for clips)."""
    labels = real.factor_labels(real.labels[rows])[:, 0] if real.label_kind == "class" else torch.full_like(rows, -1)
    order, columns = grid_order(labels)
    if samples.ndim == 5:
        return gif_bytes(clip_grid(samples, order, columns), fps)
    buffer = io.BytesIO()
    grid_png(tensor_to_images(samples), order, columns).save(buffer, format="PNG")
    return buffer.getvalue()


def _classifier(spec: DDMRunSpec, real: RealData, metric: DomainMetric) -> dict[str, Any]:
    """What the evaluator learned and how well: held-out accuracy per label factor against chance."""
    classifier = metric.classifier
    factors = [
        {"name": name, "classes": classes, "accuracy": accuracy, "chance": chance}
        for name, classes, accuracy, chance in zip(
            real.factor_names, classifier.classes, classifier.accuracies, classifier.chances, strict=True
        )
    ]
    out: dict[str, Any] = {
        "labels": _label_description(spec, real),
        "classes": int(torch.tensor(classifier.classes).prod()),
        "accuracy": classifier.accuracy,
        "factors": factors,
        "features": metric.classifier.model.heads[0].in_features,
        "trainExamples": classifier.train_examples,
        "reliable": classifier.reliable,
    }
    if not classifier.reliable:
        weak = [f"{f['name']} {f['accuracy']:.3f} (chance {f['chance']:.3f})" for f in factors]
        out["reason"] = (
            "the evaluator is near chance on held-out real data (" + ", ".join(weak) + "): distances in its"
            " features are not scores; train longer or on more data, or use FID/FVD with real weights"
        )
    return out


def _label_description(spec: DDMRunSpec, real: RealData) -> str:
    if spec.dataset.uri == "builtin://digits":
        return "digit class"
    if real.label_kind == "class" and real.factors:
        return " × ".join(real.factor_names)
    return real.label_kind


def _reference(
    real: RealData, metric: DomainMetric, clip_similarity: ClipSimilarity | None, *, seed: int
) -> dict[str, Any]:
    """The real-vs-real noise floor: the held-out real sample against the reference half
    (and, for clips, the same clips with their frames shuffled: a metric that sees time rises far above it)."""
    sample = real.images[metric.sample_rows]
    out: dict[str, Any] = {
        **_scores(metric, "frechetDistance", metric.distance(sample)),
        ("fvd" if sample.ndim == 5 else "fid"): metric.fid(sample),
        "clipSimilarity": clip_similarity(sample) if clip_similarity else None,
        "referenceExamples": int(metric.reference_rows.shape[0]),
        "sampleExamples": int(metric.sample_rows.shape[0]),
    }
    if sample.ndim == 5:
        out.update(_scores(metric, "shuffledFramesFrechetDistance", metric.distance(shuffle_frames(sample, seed))))
        both, _ = metric.recognised(sample, real.factor_labels(real.labels[metric.sample_rows]))
        out.update(_scores(metric, "alignment", both))
        out["temporalConsistency"] = temporal_consistency(sample)
    return out


def _clip_similarity(
    spec: DDMRunSpec, real: RealData, rows: torch.Tensor, device: torch.device
) -> tuple[ClipSimilarity | None, dict[str, Any]]:
    """CLIPSIM against the captions of the evaluation rows, and what metrics.json says about it: the
    weights it was loaded from, or why it is unavailable (no weights, or captions that cannot be read)."""
    scorer, reason = load_clip_scorer(spec.weights, device)
    if scorer is None:
        return None, {"available": False, "reason": reason}
    if real.index is None:
        return None, {"available": False, "reason": "the real data carry no example ids to read captions by"}
    try:
        dataset = open_dataset(spec.dataset)
        captions = [dataset.caption(int(i)) for i in real.index[rows]]
    except (DatasetError, DatasetUnreachableError) as error:
        return None, {"available": False, "reason": f"the evaluation captions could not be read: {error}"}
    info = {"available": True, "model": CLIP_REPO, "weights": scorer.weights}
    return (lambda examples: scorer(examples, captions)), info


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
