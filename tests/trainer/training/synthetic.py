"""A tiny run's store without the partition stage: spec.json, partition/stats.json and data/.

Each cluster is a fixed random pattern plus a little noise, with a caption embedding per
cluster, so experts can learn it in tens of steps and a router can tell clusters apart at
low σ. The files follow the contracts of docs/architecture.md exactly (written with
atoll.trainer.clusterdata). Other suites (the checkpoint store's, the operator's) use
`write_synthetic_run` to train a real expert on any Store:

    spec = write_synthetic_run(store, steps=20)
    from atoll.trainer.stages import expert
    expert.run(StageContext(spec=spec, store=store, expert=0))
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from atoll import layout
from atoll.api import DDMRunSpec
from atoll.api.load import dump_spec_json
from atoll.store import Store
from atoll.trainer.clusterdata import ClusterData, ClusterWriter, DataInfo, write_info, write_null_text

LATENT_SHAPE = (3, 8, 8)
TEXT_SHAPE = (4, 16)


def synthetic_spec(
    *,
    clusters: int = 2,
    steps: int = 20,
    global_batch: int = 16,
    checkpoint_every: int = 10,
    router_steps: int = 20,
    expert: dict[str, Any] | None = None,
    router: dict[str, Any] | None = None,
    dataset: dict[str, Any] | None = None,
) -> DDMRunSpec:
    """A valid spec for tiny experts and router on the synthetic data (`dataset` overrides
    the dataset's fields, e.g. frames for a video preset)."""
    return DDMRunSpec.model_validate(
        {
            "dataset": {"uri": "builtin://shapes", "resolution": 8, **(dataset or {})},
            "partition": {"clusters": clusters, "features": "pixels"},
            "expert": {
                "preset": "tiny",
                "steps": steps,
                "globalBatchSize": global_batch,
                "checkpointEvery": checkpoint_every,
                "learningRate": 1e-3,
                "warmupSteps": 5,
                **(expert or {}),
            },
            "router": {
                "preset": "tiny",
                "steps": router_steps,
                "globalBatchSize": global_batch,
                "checkpointEvery": checkpoint_every,
                "learningRate": 1e-3,
                "warmupSteps": 5,
                **(router or {}),
            },
        }
    )


def cluster_examples(
    k: int,
    n: int,
    *,
    seed: int = 0,
    first_index: int = 0,
    latent_shape: tuple[int, int, int] = LATENT_SHAPE,
    text_shape: tuple[int, int] = TEXT_SHAPE,
) -> ClusterData:
    """n examples of synthetic cluster k: its pattern + 0.1·noise, its caption embedding."""
    pattern = torch.randn(latent_shape, generator=torch.Generator().manual_seed(1000 + k)).clamp(-1.5, 1.5)
    noise = torch.randn(n, *latent_shape, generator=torch.Generator().manual_seed(seed * 7919 + k))
    caption = torch.randn(text_shape, generator=torch.Generator().manual_seed(2000 + k))
    return ClusterData(
        latents=pattern + 0.1 * noise,
        text=caption.expand(n, *text_shape).to(torch.float16).clone(),
        text_mask=torch.ones(n, text_shape[0], dtype=torch.bool),
        labels=torch.full((n,), k, dtype=torch.int64),
        index=torch.arange(first_index, first_index + n, dtype=torch.int64),
    )


def write_synthetic_run(
    store: Store,
    *,
    sizes: Sequence[int] = (48, 32),
    spec: DDMRunSpec | None = None,
    shard_size: int = 20,
    latent_shape: tuple[int, int, int] = LATENT_SHAPE,
    text_shape: tuple[int, int] = TEXT_SHAPE,
    **spec_options: Any,
) -> DDMRunSpec:
    """Write spec.json, partition/stats.json and data/ for clusters of `sizes` ([C, H, W] latents,
    [L, D] captions); returns the spec."""
    spec = spec or synthetic_spec(clusters=len(sizes), **spec_options)
    store.put_bytes(layout.SPEC, dump_spec_json(spec).encode())
    first = 0
    for k, n in enumerate(sizes):
        writer = ClusterWriter(store, k, shard_size=shard_size)
        writer.add(cluster_examples(k, n, first_index=first, latent_shape=latent_shape, text_shape=text_shape))
        writer.finish()
        first += n
    write_null_text(store, torch.zeros(1, *text_shape), torch.zeros(1, text_shape[0], dtype=torch.bool))
    write_info(
        store,
        DataInfo(
            latent_shape=latent_shape,
            text_shape=text_shape,
            vae="identity",
            text_encoder="hashed-bow",
            resolution=latent_shape[-1],
            clusters=len(sizes),
            examples=sum(sizes),
            sizes=tuple(sizes),
        ),
    )
    store.put_json(
        layout.PARTITION_STATS,
        {
            "clusters": len(sizes),
            "sizes": list(sizes),
            "balance": max(sizes) / max(1, min(sizes)),
            "examples": sum(sizes),
            "features": "pixels",
        },
    )
    return spec
