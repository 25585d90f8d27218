"""The flow-matching math every expert, the router and the sampler share (DESIGN.md §1).

x_t = (1 − σ)·x0 + σ·ε with σ ∈ [0, 1] (σ = 1 is pure noise), target velocity ε − x0,
timestep = 1000·σ as in diffusers' FlowMatchEulerDiscreteScheduler, and the mixture of
expert velocities Σ_k w_k·v_k. Image-to-video conditions a clip [B, C, T, H, W] on its
first latent frame by keeping that frame clean (σ = 0) and leaving it out of the loss.
Pure torch: no models, no I/O, no global RNG.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

TIMESTEP_SCALE = 1000.0
"""timestep = TIMESTEP_SCALE · σ (FlowMatchEulerDiscreteScheduler's num_train_timesteps)."""

SigmaDistribution = Literal["logit-normal", "uniform"]


def add_noise(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The forward process x_t = (1 − σ)·x0 + σ·ε; σ has one value per example ([B])."""
    s = _per_example(sigma, x0)
    return (1.0 - s) * x0 + s * noise


def target_velocity(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The velocity dx_t/dσ = ε − x0 that experts regress."""
    return noise - x0


def timestep(sigma: torch.Tensor) -> torch.Tensor:
    """The model's timestep input for noise level σ (1000·σ, diffusers' convention)."""
    return sigma * TIMESTEP_SCALE


def sigma_from_normal(
    z: torch.Tensor, distribution: SigmaDistribution = "logit-normal", mean: float = 0.0, std: float = 1.0
) -> torch.Tensor:
    """Map standard-normal draws z to σ ∈ (0, 1).

    logit-normal: σ = sigmoid(mean + std·z) (SD3 / Paris). uniform: σ = Φ(z), the normal CDF,
    so both distributions are driven by the same per-example normal draw.
    """
    if distribution == "logit-normal":
        return torch.sigmoid(mean + std * z)
    if distribution == "uniform":
        return 0.5 * (1.0 + torch.erf(z / 2.0**0.5))
    raise ValueError(f"unknown σ distribution {distribution!r}: use logit-normal or uniform")


def sample_sigma(
    n: int,
    *,
    distribution: SigmaDistribution = "logit-normal",
    mean: float = 0.0,
    std: float = 1.0,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Draw n noise levels σ from the training distribution."""
    z = torch.randn(n, generator=generator, device=device)
    return sigma_from_normal(z, distribution, mean, std)


def x0_from_velocity(x_t: torch.Tensor, velocity: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The clean-sample estimate x0 = x_t − σ·v implied by a velocity prediction."""
    return x_t - _per_example(sigma, x_t) * velocity


def flow_matching_loss(
    prediction: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor, first_frame_given: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-example mean squared error against the target velocity ([B], float32).

    For clips whose first frame is given (first_frame_given [B] bool), that frame is known
    and is left out of their mean.
    """
    error = (prediction.float() - target_velocity(x0, noise).float()) ** 2
    if first_frame_given is None or not bool(first_frame_given.any()):
        return error.flatten(1).mean(dim=1)
    weight = torch.ones_like(error)
    weight[:, :, 0] = torch.where(_per_example(first_frame_given, error[:, :, 0]) > 0, 0.0, 1.0)
    return (error * weight).flatten(1).sum(dim=1) / weight.flatten(1).sum(dim=1)


def give_first_frame(x_t: torch.Tensor, x0: torch.Tensor, given: torch.Tensor) -> torch.Tensor:
    """Clips x_t [B, C, T, H, W] whose first latent frame is x0's (clean) where `given` [B] is true."""
    out = x_t.clone()
    out[:, :, 0] = torch.where(_per_example(given, x_t[:, :, 0]) > 0, x0[:, :, 0].to(x_t.dtype), x_t[:, :, 0])
    return out


def combine(velocities: Sequence[torch.Tensor | None] | torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Mix expert velocities by per-example weights: v = Σ_k w[:, k]·v_k.

    velocities: K tensors of shape [B, …] (or one stacked [K, B, …] tensor); an entry may be
    None when that expert was not run, which requires its weight column to be all zero.
    weights: [B, K], e.g. router posteriors, renormalised top-k or one-hot top-1. The
    weights are used as given (not renormalised), so `full` with the true posteriors
    reproduces the global velocity exactly.
    """
    if weights.ndim != 2:
        raise ValueError(f"weights must have shape [batch, experts], got {tuple(weights.shape)}")
    experts = weights.shape[1]
    if len(velocities) != experts:
        raise ValueError(f"{len(velocities)} expert velocities for {experts} weight columns")
    total: torch.Tensor | None = None
    for k in range(experts):
        v = velocities[k]
        column = weights[:, k]
        if v is None:
            if bool((column != 0).any()):
                raise ValueError(f"expert {k} has non-zero weight but no velocity")
            continue
        if v.shape[0] != weights.shape[0]:
            raise ValueError(f"expert {k}'s velocity has batch {v.shape[0]}, weights have {weights.shape[0]}")
        term = _per_example(column, v).to(v.dtype) * v
        total = term if total is None else total + term
    if total is None:
        raise ValueError("no expert has a velocity: at least one must be run")
    return total


def _per_example(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape [B] values to broadcast over a [B, …] tensor."""
    if values.ndim != 1 or values.shape[0] != like.shape[0]:
        raise ValueError(f"expected one value per example ([{like.shape[0]}]), got shape {tuple(values.shape)}")
    return values.reshape(-1, *([1] * (like.ndim - 1))).to(like.dtype)
