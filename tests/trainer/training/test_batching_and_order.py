"""Batch splits and data order: the pure functions that make resumes exact under any split."""

from __future__ import annotations

import pytest
import torch

from atoll.trainer.training.batching import BatchPlanError, plan_batch
from atoll.trainer.training.data_order import draw_examples, held_out_rows


def test_plan_batch_resolves_and_rejects() -> None:
    assert plan_batch(64).micro_batch == 64
    assert plan_batch(64).automatic
    plan = plan_batch(64, world=2, micro_batch=8)
    assert (plan.micro_batch, plan.grad_accum, plan.world) == (8, 4, 2)
    assert plan.micro_slices(1) == [slice(32, 40), slice(40, 48), slice(48, 56), slice(56, 64)]
    assert plan_batch(64, grad_accum=4).micro_batch == 16
    assert plan_batch(64, micro_batch=16).smaller() is not None
    assert plan_batch(12, micro_batch=12).smaller().micro_batch == 6  # type: ignore[union-attr]
    with pytest.raises(
        BatchPlanError, match=r"micro-batch 8 × grad-accum 3 × 2 GPUs = 48.*expert.globalBatchSize is 64"
    ):
        plan_batch(64, world=2, micro_batch=8, grad_accum=3)
    with pytest.raises(BatchPlanError, match=r"router\.globalBatchSize \(10\) is not divisible by the 4 GPUs"):
        plan_batch(10, world=4, field="router")
    with pytest.raises(BatchPlanError, match="micro-batch 5 does not divide"):
        plan_batch(64, micro_batch=5)


def test_draws_depend_only_on_step_and_position() -> None:
    whole = draw_examples(1, 5, range(8), (2, 4, 4))
    left, right = draw_examples(1, 5, range(4), (2, 4, 4)), draw_examples(1, 5, range(4, 8), (2, 4, 4))
    assert torch.equal(whole.noise, torch.cat([left.noise, right.noise]))
    assert torch.equal(whole.normal, torch.cat([left.normal, right.normal]))
    assert torch.equal(whole.uniform, torch.cat([left.uniform, right.uniform]))
    other_step = draw_examples(1, 6, range(8), (2, 4, 4))
    assert not torch.equal(other_step.noise, whole.noise)
    assert abs(float(draw_examples(0, 0, range(4000), (1,)).uniform.mean()) - 0.5) < 0.03


def test_held_out_rows_are_seeded_bounded_and_distinct() -> None:
    held = held_out_rows(100, seed=0, fraction=0.1, limit=50)
    assert len(held) == 10
    assert held.tolist() == sorted(set(held.tolist()))
    assert all(0 <= row < 100 for row in held.tolist())
    assert torch.equal(held_out_rows(100, seed=0, fraction=0.1, limit=50), held)
    assert not torch.equal(held_out_rows(100, seed=1, fraction=0.1, limit=50), held)
    assert len(held_out_rows(100, seed=0, fraction=0.5, limit=8)) == 8
    assert len(held_out_rows(2, seed=0, fraction=0.01, limit=8)) == 1
    assert len(held_out_rows(10**12, seed=0, fraction=0.1, limit=2048)) == 2048  # no permutation of 10^12 rows
