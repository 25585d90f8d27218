"""Fixtures of the pipeline tests: tiny random DDMPipelines and one tiny trained run.

`tiny_pipeline` builds K random tiny experts and a router (no training) for the sampler's
mechanics; `trained_run` runs the real partition, expert and router stages in-process on a
few hundred digits for a few steps, once per session, for assemble and evaluate.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from atoll.api import DDMRunSpec
from atoll.api.load import dump_spec_json
from atoll.store import LocalStore
from atoll.trainer.context import StageContext

LATENT = (3, 8, 8)

TINY_RUN: dict[str, Any] = {
    "dataset": {"uri": "builtin://digits", "resolution": 8, "maxExamples": 240},
    "partition": {"clusters": 2, "features": "pixels", "fineClusters": 16, "sampleSize": 240},
    "expert": {"preset": "tiny", "steps": 12, "globalBatchSize": 16, "checkpointEvery": 6},
    "router": {"preset": "tiny", "steps": 8, "globalBatchSize": 16, "checkpointEvery": 4},
    "sampling": {"strategy": "top-1", "steps": 3, "guidance": 2.0},
    "evaluation": {"samples": 24, "strategies": ["top-1", "full"]},
}


def tiny_spec(**overrides: Any) -> DDMRunSpec:
    """TINY_RUN with top-level sections replaced by `overrides`."""
    document = copy.deepcopy(TINY_RUN)
    document.update(overrides)
    return DDMRunSpec.model_validate(document)


@pytest.fixture(scope="package", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """Tiny models gain nothing from a second thread, and on a shared 2-core machine a spinning
    OpenMP thread made these tests 3-5× slower; stages in subprocesses size their own pools."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ATOLL_TORCH_THREADS", "1")  # what in-process stages size their pool from
        yield
    torch.set_num_threads(before)


@pytest.fixture(scope="package")
def make_pipeline() -> Callable[..., Any]:
    """build(K, strategy=…) → a DDMPipeline of K random tiny experts (and a router when K > 1)."""
    from atoll.trainer.encoders import text_encoder_for, vae_for
    from atoll.trainer.models.expert import build_expert
    from atoll.trainer.models.router import build_router
    from atoll.trainer.pipeline import DDMPipeline, flow_match_scheduler

    def build(experts: int = 3, *, strategy: str = "top-2", steps: int = 4, guidance: float = 2.0) -> DDMPipeline:
        text = text_encoder_for("hashed-bow")
        pipeline = DDMPipeline(
            vae=vae_for("identity").model,
            text_encoder=text.model,
            scheduler=flow_match_scheduler(),
            router=build_router("tiny", clusters=experts, latent_shape=LATENT, seed=99) if experts > 1 else None,
            experts=[build_expert("tiny", latent_shape=LATENT, text_dim=text.dim, seed=k) for k in range(experts)],
            default_strategy=strategy,
            default_steps=steps,
            default_guidance=guidance,
        )
        pipeline.set_progress_bar_config(disable=True)
        return pipeline

    return build


@pytest.fixture(scope="package")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> StageContext:
    """A run whose partition, experts (K=2) and router have really trained (a few steps)."""
    from atoll.trainer.stages import expert, partition, router

    root = tmp_path_factory.mktemp("trained-run")
    spec = tiny_spec()
    store = LocalStore(root / "run")
    store.put_bytes("spec.json", dump_spec_json(spec).encode())
    partition.run(StageContext(spec=spec, store=store))
    for k in range(spec.partition.clusters):
        expert.run(StageContext(spec=spec, store=store, expert=k))
    router.run(StageContext(spec=spec, store=store))
    return StageContext(spec=spec, store=store)


def copy_run(context: StageContext, destination: Path) -> StageContext:
    """An independent copy of a run's store (tests that damage or extend it)."""
    import shutil

    assert isinstance(context.store, LocalStore)
    shutil.copytree(context.store.root, destination)
    return StageContext(spec=context.spec, store=LocalStore(destination))
