"""The flow-matching math shared by experts, router and sampler (atoll.trainer.flow)."""

from __future__ import annotations

import pytest
import torch

from atoll.trainer import flow


def test_forward_process_endpoints_and_target() -> None:
    x0 = torch.randn(4, 3, 8, 8)
    noise = torch.randn(4, 3, 8, 8)
    assert torch.equal(flow.add_noise(x0, noise, torch.zeros(4)), x0)
    assert torch.equal(flow.add_noise(x0, noise, torch.ones(4)), noise)
    sigma = torch.tensor([0.0, 0.25, 0.5, 1.0])
    x_t = flow.add_noise(x0, noise, sigma)
    # x_t moves along ε − x0 as σ grows: x_t = x0 + σ·(ε − x0), and x0 is recovered from v.
    velocity = flow.target_velocity(x0, noise)
    torch.testing.assert_close(x_t, x0 + sigma.view(-1, 1, 1, 1) * velocity)
    torch.testing.assert_close(flow.x0_from_velocity(x_t, velocity, sigma), x0)
    assert flow.flow_matching_loss(velocity, x0, noise).abs().max() == 0
    torch.testing.assert_close(flow.timestep(sigma), sigma * 1000)


def test_sigma_distributions() -> None:
    generator = torch.Generator().manual_seed(0)
    uniform = flow.sample_sigma(100_000, distribution="uniform", generator=generator)
    assert float(uniform.min()) >= 0
    assert float(uniform.max()) <= 1
    assert abs(float(uniform.mean()) - 0.5) < 0.01
    assert abs(float((uniform < 0.1).float().mean()) - 0.1) < 0.01
    logit = flow.sample_sigma(100_000, distribution="logit-normal", mean=0.0, std=1.0, generator=generator)
    assert abs(float(logit.median()) - 0.5) < 0.01
    shifted = flow.sample_sigma(100_000, distribution="logit-normal", mean=1.0, std=1.0, generator=generator)
    assert abs(float(shifted.median()) - float(torch.sigmoid(torch.tensor(1.0)))) < 0.01
    with pytest.raises(ValueError, match="unknown σ distribution"):
        flow.sigma_from_normal(torch.zeros(2), "cosine")  # type: ignore[arg-type]


def test_combine_weights_experts_per_example() -> None:
    v = [torch.full((3, 2), float(k + 1)) for k in range(3)]
    weights = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.2, 0.3, 0.5]])
    mixed = flow.combine(v, weights)
    torch.testing.assert_close(mixed[:, 0], torch.tensor([1.0, 1.5, 0.2 + 0.6 + 1.5]))
    # Stacked velocities work the same; an expert that was not run may be None if unweighted.
    torch.testing.assert_close(flow.combine(torch.stack(v), weights), mixed)
    top2 = torch.tensor([[0.5, 0.5, 0.0], [0.1, 0.9, 0.0], [1.0, 0.0, 0.0]])
    torch.testing.assert_close(flow.combine([v[0], v[1], None], top2), flow.combine(v, top2))
    with pytest.raises(ValueError, match="expert 2 has non-zero weight"):
        flow.combine([v[0], v[1], None], weights)
    with pytest.raises(ValueError, match="2 expert velocities for 3 weight columns"):
        flow.combine(v[:2], weights)
