"""Balanced two-level k-means (DDM / Paris partitioning) in torch, on the GPU when one is given.

Geometry: features are centred (the mean is kept) and L2-normalised, and centroids are
renormalised after every update (spherical k-means), so "nearest" means highest cosine
similarity — the metric DINOv2 and CLIP features are compared with, and a plain matmul.

Levels: F fine clusters are fitted by Lloyd on a random sample (F = min(fineClusters,
sample/4), at least K; the sample also gives the mean the features are centred by); the fine
centroids, weighted by how many examples (all N) each holds, are grouped into K coarse
clusters; every example goes to the coarse cluster of its nearest fine centroid. Only the
sample has to be in memory at once: `FineLevel.assign` takes the N examples batch by batch,
which is how the partition stage streams its features.

Balancing happens at the coarse level: each Lloyd step assigns fine clusters to coarse ones
by entropic optimal transport (Sinkhorn) with equal column mass W/K, rounds the transport
plan to a hard assignment (the argmax, i.e. nearest centroid under the transport's column
prices) and repairs what rounding breaks with greedy moves that strictly shrink the spread
of the loads at the least similarity cost. Sinkhorn is used
rather than a hard size constraint per example because fine clusters are indivisible
weighted items: prices make the assignment geometric (neighbouring fine clusters go
together), the repair makes it balanced to within one fine cluster's weight.
Distances are computed in chunks with small temporaries. Deterministic for a seed on a
given device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

CHUNK = 16384
"""Rows per distance block: 16384 × 1024 similarities are 64 MiB of float32."""
CONVERGED = 1e-3
"""Lloyd stops early once at most 0.1 % of the points change cluster in a sweep."""
REPAIR_TOLERANCE = 0.02
"""Stop repairing once max/min load ≤ 1.02."""


@dataclass(frozen=True)
class Partition:
    """The result of two-level k-means: centroids at both levels and every example's cluster."""

    assignments: torch.Tensor
    """[N] int64 coarse cluster of each example (dataset order)."""
    fine_assignments: torch.Tensor
    """[N] int64 nearest fine centroid of each example."""
    fine_centroids: torch.Tensor
    """[F, D] unit-norm fine centroids (in the normalised feature space)."""
    coarse_centroids: torch.Tensor
    """[K, D] unit-norm coarse centroids."""
    fine_to_coarse: torch.Tensor
    """[F] int64 coarse cluster of each fine cluster."""
    mean: torch.Tensor
    """[D] the feature mean subtracted before normalising."""
    sample_size: int
    """Examples the fine level was fitted on."""

    @property
    def clusters(self) -> int:
        return int(self.coarse_centroids.shape[0])

    @property
    def sizes(self) -> list[int]:
        """Examples per coarse cluster."""
        return cluster_sizes(self.assignments, self.clusters)

    @property
    def balance(self) -> float:
        """max/min cluster size (inf when a cluster is empty)."""
        return balance(self.sizes)


def cluster_sizes(assignments: torch.Tensor, k: int) -> list[int]:
    """Examples per cluster."""
    return [int(v) for v in torch.bincount(assignments.cpu(), minlength=k)]


def balance(sizes: list[int]) -> float:
    """max/min of cluster sizes; inf when one is empty."""
    return float("inf") if min(sizes) == 0 else max(sizes) / min(sizes)


def normalize_features(
    features: torch.Tensor, mean: torch.Tensor | None = None, *, inplace: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Centre by `mean` (the features' own when None) and scale rows to unit L2 norm, in chunks.

    With inplace=True the input (float32) is overwritten, so 1M × 768 needs no second copy.
    """
    x = features if inplace else features.to(torch.float32, copy=True)
    if mean is None:
        mean = torch.zeros(x.shape[1], dtype=torch.float64)
        for start in range(0, x.shape[0], CHUNK):
            mean += x[start : start + CHUNK].to(torch.float64).sum(0).cpu()
        mean = (mean / max(1, x.shape[0])).to(torch.float32)
    centre = mean.to(x.device, x.dtype)
    for start in range(0, x.shape[0], CHUNK):
        block = x[start : start + CHUNK]
        block.sub_(centre)
        block.div_(block.norm(dim=1, keepdim=True).clamp_min(1e-12))
    return x, mean


def nearest(x: torch.Tensor, centroids: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """For each row of x (any device), the index and cosine similarity of its nearest centroid (on `device`)."""
    c = centroids.to(device)
    labels = torch.empty(x.shape[0], dtype=torch.int64, device=device)
    best = torch.empty(x.shape[0], dtype=torch.float32, device=device)
    for start in range(0, x.shape[0], CHUNK):
        sims = x[start : start + CHUNK].to(device, non_blocking=True) @ c.T
        best[start : start + CHUNK], labels[start : start + CHUNK] = sims.max(dim=1)
    return labels, best


def _unit(x: torch.Tensor) -> torch.Tensor:
    unit: torch.Tensor = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return unit


def _kmeans_pp(x: torch.Tensor, weights: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """Weighted k-means++ seeding on unit vectors (small x: the fine centroids)."""
    probs = weights.double().cpu() / weights.sum().double().cpu()
    chosen = [int(torch.multinomial(probs, 1, generator=generator))]
    closest = 1.0 - (x @ x[chosen[0]]).cpu().double()
    for _ in range(1, k):
        score = (closest.clamp_min(0) ** 2) * probs
        if score.sum() <= 0:  # every remaining point coincides with a centre: take any unused one
            score = torch.ones_like(score)
            score[chosen] = 0
        chosen.append(int(torch.multinomial(score / score.sum(), 1, generator=generator)))
        closest = torch.minimum(closest, 1.0 - (x @ x[chosen[-1]]).cpu().double())
    return x[chosen].clone()


def lloyd(
    x: torch.Tensor,
    k: int,
    *,
    iterations: int,
    generator: torch.Generator,
    device: torch.device,
    weights: torch.Tensor | None = None,
    init: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Spherical Lloyd k-means on unit rows of x: (centroids [k, D], labels [n]).

    At most `iterations` sweeps; stops early when a sweep moves ≤ 0.1 % of the points.
    Initialised with k distinct random rows (or `init`); an emptied cluster is re-seeded
    with the row that fits its centroid worst, so all k clusters stay in use.
    """
    n = x.shape[0]
    if k > n:
        raise ValueError(f"cannot fit {k} clusters to {n} points")
    w = torch.ones(n, device=device) if weights is None else weights.to(device, torch.float32)
    centroids = x[torch.randperm(n, generator=generator)[:k]].to(device) if init is None else init.to(device)
    labels = torch.full((n,), -1, dtype=torch.int64, device=device)
    for _ in range(iterations):
        new_labels, best = nearest(x, centroids, device)
        counts = torch.bincount(new_labels, weights=w, minlength=k)
        empty = (counts == 0).nonzero().flatten()
        if len(empty):
            worst = torch.argsort(best)[: len(empty)]
            new_labels[worst] = empty
        changed = int((new_labels != labels).sum())
        labels = new_labels
        if changed == 0:
            break
        sums = torch.zeros(k, x.shape[1], device=device)
        for start in range(0, n, CHUNK):
            block = x[start : start + CHUNK].to(device)
            if weights is not None:
                block = block * w[start : start + CHUNK, None]
            sums.index_add_(0, labels[start : start + CHUNK], block)
        centroids = _unit(sums)
        if changed <= CONVERGED * n:  # centroids of the final labels are in; further sweeps move almost nothing
            break
    return centroids, labels


def sinkhorn_prices(sim: torch.Tensor, weights: torch.Tensor, iterations: int = 200) -> torch.Tensor:
    """Column prices [K] of entropic transport of mass `weights` [F] onto K equal columns.

    Rounding the plan is argmax_k(sim[f, k] + prices[k]): nearest centroid, with over-demanded
    clusters made more expensive. Temperature: 5 % of the similarity range.
    """
    f, k = sim.shape
    eps = 0.05 * float(sim.max() - sim.min()) + 1e-6
    log_a = torch.log(weights.double() / weights.sum().double()).clamp_min(-1e30)
    log_b = torch.full((k,), -torch.log(torch.tensor(float(k), dtype=torch.float64)).item(), dtype=torch.float64)
    logits = sim.double() / eps
    u = torch.zeros(f, dtype=torch.float64)
    v = torch.zeros(k, dtype=torch.float64)
    for _ in range(iterations):
        u = log_a - torch.logsumexp(logits + v[None, :], dim=1)
        v = log_b - torch.logsumexp(logits + u[:, None], dim=0)
    return (eps * v).to(sim.dtype)


def repair_balance(sim: torch.Tensor, weights: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """Greedy moves of single fine clusters that strictly shrink the load spread at the least cost.

    Each move takes the cluster furthest from the mean load: if it is the heaviest, push one
    of its fine clusters to any lighter cluster that stays below it; if the lightest, pull
    one in from a heavier cluster that stays above it; among the legal moves the one that
    loses the least similarity wins. The sum of squared loads falls with every move, so it
    terminates.
    """
    labels = labels.clone()
    w = weights.double()
    loads = torch.bincount(labels, weights=w, minlength=k)
    target = float(w.sum()) / k
    for _ in range(8 * len(labels)):
        heavy, light = int(loads.argmax()), int(loads.argmin())
        if loads[heavy] <= loads[light] * (1 + REPAIR_TOLERANCE):
            break
        loss = sim.double().gather(1, labels[:, None]) - sim.double()  # [F, K]: similarity lost by moving f to k
        if float(loads[heavy]) - target >= target - float(loads[light]):
            legal = (labels[:, None] == heavy) & (loads[None, :] + w[:, None] < loads[heavy])
        else:
            legal = (torch.arange(k)[None, :] == light) & (loads[labels] - w > loads[light])[:, None]
        legal &= w[:, None] > 0
        if not bool(legal.any()):
            break
        cost = torch.where(legal, loss, torch.full_like(loss, float("inf")))
        flat = int(cost.argmin())
        f, dest = divmod(flat, k)
        loads[labels[f]] -= w[f]
        loads[dest] += w[f]
        labels[f] = dest
    return labels


def balanced_assign(sim: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Hard assignment of F weighted items to K columns of near-equal total weight."""
    prices = sinkhorn_prices(sim, weights)
    labels = (sim + prices[None, :]).argmax(dim=1)
    return repair_balance(sim, weights, labels, sim.shape[1])


def coarse_kmeans(
    fine: torch.Tensor, weights: torch.Tensor, k: int, *, iterations: int, balanced: bool, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """K coarse centroids over weighted fine centroids: (centroids [K, D], fine_to_coarse [F]). CPU (F is small)."""
    fine, weights = fine.cpu().float(), weights.cpu().float()
    seeding_weights = weights.clamp_min(1e-6)  # empty fine clusters may still seed nothing
    centroids = _kmeans_pp(fine, seeding_weights, k, generator)
    labels = torch.full((fine.shape[0],), -1, dtype=torch.int64)
    for _ in range(iterations):
        sim = fine @ centroids.T
        new_labels = balanced_assign(sim, weights) if balanced else sim.argmax(dim=1)
        if torch.equal(new_labels, labels):
            break
        labels = new_labels
        sums = torch.zeros_like(centroids).index_add_(0, labels, fine * weights[:, None])
        used = torch.bincount(labels, minlength=k) > 0
        centroids = torch.where(used[:, None], _unit(sums), centroids)
    return centroids, labels


def sample_rows(n: int, sample_size: int, generator: torch.Generator) -> torch.Tensor:
    """The sorted rows the fine level is fitted on: all n, or a seeded random `sample_size` of them."""
    if sample_size >= n:
        return torch.arange(n)
    return torch.randperm(n, generator=generator)[:sample_size].sort().values


@dataclass(frozen=True)
class FineLevel:
    """The fine clusters fitted on a sample, and how any example's features reach them."""

    centroids: torch.Tensor
    """[F, D] unit-norm fine centroids (in the normalised feature space)."""
    mean: torch.Tensor
    """[D] the sample's feature mean, subtracted before normalising."""
    sample_size: int

    def assign(self, features: torch.Tensor, device: torch.device) -> torch.Tensor:
        """The nearest fine centroid [n] (CPU) of raw feature rows (a batch or all of them; not modified)."""
        labels = torch.empty(features.shape[0], dtype=torch.int64)
        for start in range(0, features.shape[0], CHUNK):
            block, _ = normalize_features(features[start : start + CHUNK], self.mean)
            labels[start : start + CHUNK] = nearest(block, self.centroids, device)[0].cpu()
        return labels


def fit_fine(
    sample: torch.Tensor,
    clusters: int,
    *,
    fine_clusters: int,
    iterations: int,
    generator: torch.Generator,
    device: torch.device,
) -> FineLevel:
    """Fine clusters over the raw features of the sample: F = min(fine_clusters, sample/4), at least K."""
    n = sample.shape[0]
    x, mean = normalize_features(sample)
    f = min(n, max(clusters, min(fine_clusters, n // 4)))
    centroids, _ = lloyd(x.to(device), f, iterations=iterations, generator=generator, device=device)
    return FineLevel(centroids=centroids.cpu(), mean=mean, sample_size=n)


def fit_coarse(
    fine: FineLevel,
    fine_assignments: torch.Tensor,
    clusters: int,
    *,
    iterations: int,
    balanced: bool,
    generator: torch.Generator,
) -> Partition:
    """The K coarse clusters over the fine ones, given every example's fine cluster [N]."""
    f = fine.centroids.shape[0]
    # Weights are fine-cluster sizes over *all* examples (not just the sample): the coarse
    # level then balances the final partition exactly, not a sample estimate of it.
    weights = torch.bincount(fine_assignments, minlength=f).float()
    coarse, fine_to_coarse = coarse_kmeans(
        fine.centroids, weights, clusters, iterations=iterations, balanced=balanced, generator=generator
    )
    return Partition(
        assignments=fine_to_coarse[fine_assignments],
        fine_assignments=fine_assignments,
        fine_centroids=fine.centroids,
        coarse_centroids=coarse,
        fine_to_coarse=fine_to_coarse,
        mean=fine.mean,
        sample_size=fine.sample_size,
    )


def two_level_kmeans(
    features: torch.Tensor,
    clusters: int,
    *,
    fine_clusters: int = 1024,
    sample_size: int = 200_000,
    iterations: int = 25,
    balanced: bool = True,
    seed: int = 0,
    device: torch.device | str | None = None,
) -> Partition:
    """Partition N feature rows held in memory into K clusters (see the module docstring).

    The partition stage runs the same three steps (`sample_rows`, `fit_fine`, `fit_coarse`)
    with its features streamed instead. `features` stays where it is and is not modified; the
    sample and centroids live on `device` (CUDA when available by default).
    """
    n = features.shape[0]
    if not 1 <= clusters <= n:
        raise ValueError(f"cannot split {n} examples into {clusters} clusters")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    generator = torch.Generator().manual_seed(seed)
    rows = sample_rows(n, sample_size, generator)
    fine = fit_fine(
        features[rows], clusters, fine_clusters=fine_clusters, iterations=iterations, generator=generator, device=dev
    )
    return fit_coarse(
        fine, fine.assign(features, dev), clusters, iterations=iterations, balanced=balanced, generator=generator
    )


def plain_kmeans(
    features: torch.Tensor,
    clusters: int,
    *,
    iterations: int = 25,
    seed: int = 0,
    device: torch.device | str | None = None,
    inplace: bool = False,
) -> torch.Tensor:
    """One-level spherical Lloyd k-means over all examples (the unbalanced baseline): labels [N]."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    x, _ = normalize_features(features, inplace=inplace)
    _, labels = lloyd(x, clusters, iterations=iterations, generator=torch.Generator().manual_seed(seed), device=dev)
    return labels.cpu()
