"""Expert selection math: top-k, threshold:p and full weights from router probabilities."""

from __future__ import annotations

import pytest
import torch

from atoll.trainer.strategies import Strategy, StrategyError, expert_usage, parse_strategy

PROBS = torch.tensor(
    [
        [0.5, 0.3, 0.15, 0.05],
        [0.1, 0.2, 0.3, 0.4],
        [0.25, 0.25, 0.25, 0.25],
    ]
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("top-1", Strategy(kind="top-k", k=1)),
        ("top-2", Strategy(kind="top-k", k=2)),
        ("top-k:2", Strategy(kind="top-k", k=2)),
        ("top-k:7", Strategy(kind="top-k", k=7)),
        ("threshold:0.9", Strategy(kind="threshold", p=0.9)),
        ("threshold:1", Strategy(kind="threshold", p=1.0)),
        ("full", Strategy(kind="full")),
    ],
)
def test_parse(text: str, expected: Strategy) -> None:
    assert parse_strategy(text) == expected
    assert parse_strategy(parse_strategy(text).name) == expected


@pytest.mark.parametrize("text", ["top-0", "top-k:0", "top-3", "top-k", "threshold:1.5", "threshold:", "all", ""])
def test_parse_rejects(text: str) -> None:
    with pytest.raises(StrategyError, match="strategy"):
        parse_strategy(text)


def test_top1_is_one_hot_argmax() -> None:
    w = parse_strategy("top-1").weights(PROBS)
    assert torch.equal(w[0], torch.tensor([1.0, 0, 0, 0]))
    assert torch.equal(w[1], torch.tensor([0, 0, 0, 1.0]))
    # ties go to the lowest index
    assert torch.equal(w[2], torch.tensor([1.0, 0, 0, 0]))


def test_top2_renormalises() -> None:
    w = parse_strategy("top-2").weights(PROBS)
    torch.testing.assert_close(w[0], torch.tensor([0.5 / 0.8, 0.3 / 0.8, 0, 0]))
    torch.testing.assert_close(w[1], torch.tensor([0, 0, 0.3 / 0.7, 0.4 / 0.7]))
    torch.testing.assert_close(w.sum(dim=1), torch.ones(3))
    assert ((w > 0).sum(dim=1) == 2).all()


def test_threshold_keeps_smallest_prefix_reaching_p() -> None:
    w = parse_strategy("threshold:0.8").weights(PROBS)
    # row 0: 0.5 < 0.8, 0.5+0.3 = 0.8 reaches it → two experts
    assert (w[0] > 0).tolist() == [True, True, False, False]
    # row 1: 0.4, 0.7 < 0.8, 1.0 → three experts
    assert (w[1] > 0).tolist() == [False, True, True, True]
    torch.testing.assert_close(w.sum(dim=1), torch.ones(3))
    assert torch.equal(parse_strategy("threshold:0").weights(PROBS), parse_strategy("top-1").weights(PROBS))
    assert ((parse_strategy("threshold:1").weights(PROBS) > 0).sum(dim=1) == 4).all()


def test_full_is_the_router_posterior() -> None:
    assert torch.equal(parse_strategy("full").weights(PROBS), PROBS)


def test_too_many_experts_is_a_clear_error() -> None:
    with pytest.raises(StrategyError, match="selects 5 experts but the model has only 4"):
        parse_strategy("top-k:5").weights(PROBS)


def test_usage_counts_selected_samples() -> None:
    usage = expert_usage(parse_strategy("top-1").weights(PROBS))
    assert usage["selected"] == pytest.approx([2 / 3, 0, 0, 1 / 3])
