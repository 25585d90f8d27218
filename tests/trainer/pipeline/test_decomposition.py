"""The DDM decomposition on a 2-D Gaussian mixture, where everything has a closed form.

Data: 8 isotropic Gaussians on a ring, split into K = 4 clusters of two components each.
Under x_t = (1 − σ)·x0 + σ·ε the per-component flow velocity and the posterior of each
component are analytic, so the per-cluster velocities v_k, the posteriors p(k | x_t, σ)
and the global velocity v are exact. The sampler's combination code (the `full` strategy's
weights + flow.combine) must reproduce v from the v_k; a router trained as a classifier on
noised samples (flow.add_noise / flow.sample_sigma, as the experts noise) must approach
the true posterior.
"""

from __future__ import annotations

import math

import torch

from atoll.trainer import flow
from atoll.trainer.strategies import parse_strategy

K = 4
COMPONENTS = 8
ANGLES = torch.arange(COMPONENTS, dtype=torch.float64) * (2 * math.pi / COMPONENTS)
MEANS = torch.stack([3 * torch.cos(ANGLES), 3 * torch.sin(ANGLES)], dim=1)  # [C, 2]
STDS = torch.tensor([0.3, 0.5, 0.4, 0.6, 0.35, 0.45, 0.55, 0.25], dtype=torch.float64)
WEIGHTS = torch.tensor([0.05, 0.15, 0.1, 0.2, 0.08, 0.12, 0.18, 0.12], dtype=torch.float64)
# Cluster of each component: neighbours on the ring share a cluster (unequal shares π_k).
CLUSTER_OF = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])


def component_terms(x: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log(w_c · N(x; (1−σ)μ_c, var_c I)) [B, C] and the component velocities [B, C, 2].

    For x0 ~ N(μ, s² I): x_t ~ N((1−σ)μ, var I) with var = (1−σ)² s² + σ², and
    E[ε − x0 | x_t] = (σ − (1−σ) s²) / var · (x_t − (1−σ)μ) − μ.
    """
    s = sigma[:, None]  # [B, 1]
    var = (1 - s) ** 2 * STDS[None] ** 2 + s**2  # [B, C]
    centred = x[:, None, :] - (1 - s)[..., None] * MEANS[None]  # [B, C, 2]
    log_density = torch.log(WEIGHTS)[None] - (centred**2).sum(-1) / (2 * var) - torch.log(2 * math.pi * var)
    velocity = ((s - (1 - s) * STDS[None] ** 2) / var)[..., None] * centred - MEANS[None]
    return log_density, velocity


def exact_fields(x: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(global velocity [B, 2], per-cluster velocities [K, B, 2], posteriors p(k | x_t, σ) [B, K])."""
    log_density, velocity = component_terms(x, sigma)
    p_component = torch.softmax(log_density, dim=1)  # p(c | x_t)
    global_velocity = (p_component[..., None] * velocity).sum(1)
    one_hot = torch.nn.functional.one_hot(CLUSTER_OF, K).to(torch.float64)  # [C, K]
    posterior = p_component @ one_hot  # p(k | x_t) = Σ_{c∈k} p(c | x_t)
    per_cluster = []
    for k in range(K):
        # cluster k's own flow: its components re-weighted among themselves
        within = torch.where(CLUSTER_OF[None] == k, log_density, torch.full_like(log_density, -torch.inf))
        p_within = torch.softmax(within, dim=1)
        per_cluster.append((p_within[..., None] * velocity).sum(1))
    return global_velocity, torch.stack(per_cluster), posterior


def sample_mixture(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """n points of the mixture and their cluster labels."""
    component = torch.multinomial(WEIGHTS, n, replacement=True, generator=generator)
    noise = torch.randn(n, 2, generator=generator, dtype=torch.float64)
    return MEANS[component] + STDS[component, None] * noise, CLUSTER_OF[component]


def test_full_strategy_reproduces_the_global_velocity() -> None:
    generator = torch.Generator().manual_seed(0)
    x0, _ = sample_mixture(4096, generator)
    sigma = torch.rand(4096, generator=generator, dtype=torch.float64).clamp(0.02, 0.98)
    x_t = flow.add_noise(x0, torch.randn(4096, 2, generator=generator, dtype=torch.float64), sigma)
    global_velocity, per_cluster, posterior = exact_fields(x_t, sigma)

    weights = parse_strategy("full").weights(posterior)
    combined = flow.combine(list(per_cluster), weights)
    assert (combined - global_velocity).abs().max().item() < 1e-5

    # in float32, as the sampler runs, still within 1e-5 of the float32 reference scale
    combined32 = flow.combine([v.float() for v in per_cluster], weights.float())
    assert (combined32.double() - global_velocity).abs().max().item() < 1e-5 * global_velocity.abs().max().item()

    # top-1 is only an approximation, clearly off where clusters overlap (high σ)
    top1 = flow.combine(list(per_cluster), parse_strategy("top-1").weights(posterior))
    assert (top1 - global_velocity).abs().max().item() > 1e-2


def test_trained_router_approaches_the_true_posterior() -> None:
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(1)
    router = torch.nn.Sequential(
        torch.nn.Linear(3, 64), torch.nn.SiLU(), torch.nn.Linear(64, 64), torch.nn.SiLU(), torch.nn.Linear(64, K)
    )
    optimizer = torch.optim.AdamW(router.parameters(), lr=1e-2)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=800)

    def features(x_t: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return torch.cat([x_t, sigma[:, None]], dim=1).float()

    for _ in range(800):
        # the router's data: the whole mixture (so clusters appear with their shares π_k),
        # noised exactly as the experts noise theirs
        x0, labels = sample_mixture(256, generator)
        sigma = flow.sample_sigma(256, distribution="uniform", generator=generator).double()
        x_t = flow.add_noise(x0, torch.randn(256, 2, generator=generator, dtype=torch.float64), sigma)
        loss = torch.nn.functional.cross_entropy(router(features(x_t, sigma)), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()

    x0, _ = sample_mixture(8192, generator)
    sigma = torch.rand(8192, generator=generator, dtype=torch.float64)
    x_t = flow.add_noise(x0, torch.randn(8192, 2, generator=generator, dtype=torch.float64), sigma)
    _, per_cluster, posterior = exact_fields(x_t, sigma)
    with torch.no_grad():
        predicted = torch.softmax(router(features(x_t, sigma)), dim=1).double()

    total_variation = 0.5 * (predicted - posterior).abs().sum(1)
    prior = torch.zeros(K, dtype=torch.float64).index_add_(0, CLUSTER_OF, WEIGHTS)
    prior_tv = 0.5 * (prior[None] - posterior).abs().sum(1)
    assert total_variation.mean().item() < 0.03, total_variation.mean().item()
    assert total_variation.mean().item() < 0.1 * prior_tv.mean().item()

    # and the velocity it mixes is close to the global one
    exact = flow.combine(list(per_cluster), posterior)
    routed = flow.combine(list(per_cluster), parse_strategy("full").weights(predicted))
    relative = (routed - exact).norm(dim=1).mean() / exact.norm(dim=1).mean()
    assert relative.item() < 0.05, relative.item()
