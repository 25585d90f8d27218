"""Sampling strategies: which experts run at a denoising step, and with what weights.

A strategy turns the router's posterior p(k | x_t, σ) of shape [B, K] into combination
weights of the same shape whose non-zero entries are the experts that must run. Pure
tensor math; it never runs a model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import torch

from atoll.errors import BadInputError

StrategyKind = Literal["top-k", "threshold", "full"]

_TOP_K = re.compile(r"^top-(?:k:)?([0-9]+)$")
_THRESHOLD = re.compile(r"^threshold:([0-9]*\.?[0-9]+)$")
STRATEGY_FORMS = "top-1, top-2, top-k:N (N ≥ 1), threshold:p (0 ≤ p ≤ 1) or full"


class StrategyError(BadInputError, ValueError):
    """A strategy string that does not parse, or that asks for more experts than exist."""


@dataclass(frozen=True, slots=True)
class Strategy:
    """One parsed sampling strategy.

    * `top-k` keeps the k most probable experts per sample and renormalises their
      probabilities to sum to 1 (`top-1` and `top-2` are `top-k:1` and `top-k:2`).
    * `threshold:p` sorts experts by probability (ties: lower index first) and keeps the
      smallest prefix whose cumulative probability reaches p — expert j of the sorted
      order is kept iff j = 0 or the probabilities before it sum to less than p — then
      renormalises. So at least one expert always runs, threshold:0 is top-1 and
      threshold:1 keeps every expert with non-zero probability.
    * `full` weights every expert by its router probability (the exact decomposition).
    """

    kind: StrategyKind
    k: int = 0
    p: float = 0.0

    @property
    def name(self) -> str:
        """The canonical strategy string (`top-2` for top-k:2)."""
        if self.kind == "top-k":
            return f"top-{self.k}" if self.k <= 2 else f"top-k:{self.k}"
        if self.kind == "threshold":
            return f"threshold:{self.p:g}"
        return "full"

    @property
    def min_experts(self) -> int:
        """Experts the model must have for this strategy to make sense."""
        return self.k if self.kind == "top-k" else 1

    def check_experts(self, experts: int) -> None:
        """Raise StrategyError if a model of `experts` experts cannot use this strategy."""
        if self.min_experts > experts:
            raise StrategyError(f"strategy {self.name} selects {self.k} experts but the model has only {experts}")

    def weights(self, probabilities: torch.Tensor) -> torch.Tensor:
        """Combination weights [B, K] from router probabilities [B, K] (rows sum to 1).

        Zero weight means the expert is not run for that sample.
        """
        if probabilities.ndim != 2:
            raise ValueError(f"router probabilities must be [batch, experts], got {tuple(probabilities.shape)}")
        self.check_experts(probabilities.shape[1])
        if self.kind == "full":
            return probabilities
        order = torch.sort(probabilities, dim=1, descending=True, stable=True)
        if self.kind == "top-k":
            keep_sorted = torch.zeros_like(order.values, dtype=torch.bool)
            keep_sorted[:, : self.k] = True
        else:
            before = torch.cumsum(order.values, dim=1) - order.values
            keep_sorted = before < self.p
            keep_sorted[:, 0] = True
        keep = torch.zeros_like(keep_sorted).scatter(1, order.indices, keep_sorted)
        kept = torch.where(keep, probabilities, torch.zeros_like(probabilities))
        total = kept.sum(dim=1, keepdim=True)
        # A router can put exactly zero mass on every kept expert only through underflow;
        # fall back to equal weights over the kept set rather than dividing by zero.
        uniform = keep.to(probabilities.dtype) / keep.sum(dim=1, keepdim=True).to(probabilities.dtype)
        return torch.where(total > 0, kept / total.clamp_min(torch.finfo(probabilities.dtype).tiny), uniform)


def parse_strategy(text: str) -> Strategy:
    """Parse `top-1`, `top-2`, `top-k:N`, `threshold:p` or `full` (the spec's pattern)."""
    value = text.strip()
    if value == "full":
        return Strategy(kind="full")
    match = _TOP_K.match(value)
    if match and (value.startswith("top-k:") or value in ("top-1", "top-2")):
        k = int(match.group(1))
        if k < 1:
            raise StrategyError(f"strategy {text!r}: top-k needs k ≥ 1")
        return Strategy(kind="top-k", k=k)
    match = _THRESHOLD.match(value)
    if match:
        p = float(match.group(1))
        if not 0.0 <= p <= 1.0:
            raise StrategyError(f"strategy {text!r}: threshold p must lie in [0, 1]")
        return Strategy(kind="threshold", p=p)
    raise StrategyError(f"unknown sampling strategy {text!r}: use {STRATEGY_FORMS}")


def expert_usage(weights: torch.Tensor) -> dict[str, list[float]]:
    """Per-expert statistics of one step's weights [B, K]: share of samples run, mean weight."""
    return {
        "selected": (weights > 0).float().mean(dim=0).tolist(),
        "weight": weights.float().mean(dim=0).tolist(),
    }
