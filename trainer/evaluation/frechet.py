"""The Fréchet distance between Gaussians fitted to two feature sets (the FID formula).

d² = ‖μ₁ − μ₂‖² + Tr(Σ₁) + Tr(Σ₂) − 2·Tr((Σ₁ Σ₂)^½), in float64. Pure math on feature
arrays: which features (domain classifier, Inception) is the caller's business.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

Array = np.ndarray[Any, np.dtype[np.float64]]


@dataclass(frozen=True)
class FeatureStats:
    """Mean and covariance of a feature set."""

    mean: Array
    covariance: Array
    count: int


def feature_stats(features: torch.Tensor | Array) -> FeatureStats:
    """Fit a Gaussian to features [n, d] (n ≥ 2)."""
    if isinstance(features, torch.Tensor):
        features = features.detach().double().cpu().numpy()
    array = np.asarray(features, dtype=np.float64)
    if array.ndim != 2 or array.shape[0] < 2:
        raise ValueError(f"features must be [n ≥ 2, d], got shape {array.shape}")
    return FeatureStats(mean=array.mean(axis=0), covariance=np.cov(array, rowvar=False), count=array.shape[0])


def trace_sqrt_product(a: Array, b: Array) -> float:
    """Tr((A B)^½) for symmetric PSD A, B.

    The eigenvalues of A·B are those of the symmetric PSD matrix A^½ B A^½, so the trace is
    the sum of their square roots. Unlike a general matrix square root (scipy's sqrtm) this
    stays exact and warning-free when the covariances are singular (few samples, dead
    features).
    """
    values, vectors = np.linalg.eigh(a)
    root_a = (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T
    middle = root_a @ b @ root_a
    eigen = np.linalg.eigvalsh((middle + middle.T) / 2)
    return float(np.sqrt(np.clip(eigen, 0.0, None)).sum())


def frechet_distance(a: FeatureStats, b: FeatureStats) -> float:
    """The Fréchet distance between two fitted Gaussians (≥ 0)."""
    difference = a.mean - b.mean
    value = (
        difference @ difference
        + np.trace(a.covariance)
        + np.trace(b.covariance)
        - 2 * trace_sqrt_product(a.covariance, b.covariance)
    )
    return float(max(value, 0.0))
