"""The keys of one run inside its store prefix (DESIGN.md §2), in one place.

Every stage, the local runtime and the operator name store objects through these
functions, never by formatting paths themselves.
"""

from __future__ import annotations

SPEC = "spec.json"
OWNER = "owner.json"
"""The DDMRun that owns the prefix (namespace, name, UID): written once, before spec.json."""

PARTITION = "partition"
PARTITION_STATS = "partition/stats.json"
PARTITION_CENTROIDS = "partition/centroids.safetensors"
PARTITION_ASSIGNMENTS = "partition/assignments.safetensors"
PARTITION_DONE = "partition/done.json"

DATA = "data"
NULL_TEXT = "data/null-text.safetensors"

ROUTER = "router"
ROUTER_METRICS = "router/metrics.json"
MODEL = "model"
MODEL_MARKER = "model/assembled.json"
"""Written last by the assemble stage (the list of model files and their sizes)."""
EVAL = "eval"
EVAL_METRICS = "eval/metrics.json"


def cluster_data(k: int) -> str:
    """Prefix of cluster k's pre-encoded shards (latents + text embeddings)."""
    return f"data/cluster-{k}"


def expert(k: int) -> str:
    """Prefix of expert k's checkpoints and progress."""
    return f"experts/{k}"


def checkpoints(stage_prefix: str) -> str:
    """Prefix under which a training stage commits its checkpoints."""
    return f"{stage_prefix}/checkpoints"


def checkpoint(stage_prefix: str, step: int) -> str:
    """Prefix of one checkpoint; zero-padded so keys sort by step."""
    return f"{stage_prefix}/checkpoints/step-{step:09d}"


def progress(stage_prefix: str) -> str:
    """The heartbeat a stage rewrites while it runs."""
    return f"{stage_prefix}/progress.json"


def stage_prefix(stage: str, expert_index: int | None = None) -> str:
    """Where a stage keeps its state: experts/<k>, router, partition, model or eval."""
    if stage == "expert":
        if expert_index is None:
            raise ValueError("the expert stage needs an expert index")
        return expert(expert_index)
    return {"partition": PARTITION, "router": ROUTER, "assemble": MODEL, "evaluate": EVAL}[stage]
