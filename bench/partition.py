"""Partition benchmark: balanced two-level k-means vs plain torch Lloyd vs scikit-learn MiniBatchKMeans.

Synthetic features (default 1M × 768): a Gaussian mixture whose component sizes follow a
Zipf law, so a clustering that follows density alone is unbalanced. Every method gets a
fresh copy of the same features and is timed including the same normalisation (centre,
L2). Prints wall and CPU seconds (CPU time is steadier on a shared machine), each as a ratio
to plain Lloyd (the baseline, same run), cluster sizes, balance (max/min), the largest
cluster's share and the mean cosine similarity of examples to their cluster's mean direction (coherence).

    .venv/bin/python bench/partition.py            # 1M × 768, K = 8 (several minutes on 2 cores)
    .venv/bin/python bench/partition.py --n 100000 # quick
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable

import numpy as np
import sklearn
import torch

from atoll.trainer import kmeans


def mixture(n: int, dim: int, components: int, seed: int) -> torch.Tensor:
    """n × dim float32 features from `components` Gaussians with Zipf sizes (share ∝ 1/rank)."""
    generator = torch.Generator().manual_seed(seed)
    shares = 1.0 / torch.arange(1, components + 1, dtype=torch.float64)
    counts = (shares / shares.sum() * n).floor().long()
    counts[0] += n - int(counts.sum())
    centres = torch.randn(components, dim, generator=generator)
    spread = 0.5 + torch.rand(components, generator=generator)  # components of different widths
    features = torch.empty(n, dim)
    component = torch.repeat_interleave(torch.arange(components), counts)
    component = component[torch.randperm(n, generator=generator)]  # mixed order, like a real dataset
    for start in range(0, n, 65536):
        which = component[start : start + 65536]
        noise = torch.randn(len(which), dim, generator=generator)
        features[start : start + 65536] = centres[which] + spread[which, None] * noise
    return features


def coherence(features: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """Mean cosine similarity between each (normalised) example and its cluster's mean direction."""
    sums = torch.zeros(k, features.shape[1], dtype=torch.float64)
    for start in range(0, features.shape[0], 65536):
        sums.index_add_(0, labels[start : start + 65536], features[start : start + 65536].double())
    directions = (sums / sums.norm(dim=1, keepdim=True).clamp_min(1e-12)).float()
    total = 0.0
    for start in range(0, features.shape[0], 65536):
        block = features[start : start + 65536]
        total += float((block * directions[labels[start : start + 65536]]).sum())
    return total / features.shape[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000, help="examples")
    parser.add_argument("--dim", type=int, default=768, help="feature width")
    parser.add_argument("--clusters", type=int, default=8, help="K")
    parser.add_argument("--components", type=int, default=64, help="mixture components")
    parser.add_argument("--fine", type=int, default=1024, help="fine clusters (partition.fineClusters)")
    parser.add_argument("--sample", type=int, default=200_000, help="fine-level sample (partition.sampleSize)")
    parser.add_argument("--iterations", type=int, default=25, help="Lloyd iterations per level")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-sklearn", action="store_true")
    args = parser.parse_args()
    k = args.clusters
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(
        f"python {platform.python_version()} · torch {torch.__version__} ({torch.get_num_threads()} threads,"
        f" {device}) · scikit-learn {sklearn.__version__} · numpy {np.__version__}"
    )
    print(
        f"features {args.n} × {args.dim}, {args.components}-component Zipf mixture; K={k}, fine={args.fine},"
        f" sample={args.sample}, iterations={args.iterations}"
    )

    def two_level(x: torch.Tensor) -> torch.Tensor:
        return kmeans.two_level_kmeans(
            x,
            k,
            fine_clusters=args.fine,
            sample_size=args.sample,
            iterations=args.iterations,
            seed=args.seed,
            device=device,
        ).assignments

    def plain(x: torch.Tensor) -> torch.Tensor:
        return kmeans.plain_kmeans(x, k, iterations=args.iterations, seed=args.seed, device=device, inplace=True)

    def minibatch(x: torch.Tensor) -> torch.Tensor:
        from sklearn.cluster import MiniBatchKMeans

        normalised, _ = kmeans.normalize_features(x, inplace=True)
        model = MiniBatchKMeans(n_clusters=k, batch_size=4096, n_init=1, random_state=args.seed)
        model.fit(normalised.numpy())
        return torch.from_numpy(model.labels_.astype(np.int64))

    methods: list[tuple[str, Callable[[torch.Tensor], torch.Tensor]]] = [
        ("plain torch Lloyd, k-means++ seeds (baseline)", plain),
        ("balanced two-level (atoll)", two_level),
    ]
    if not args.skip_sklearn:
        methods.append(("sklearn MiniBatchKMeans", minibatch))
    results = []
    for name, method in methods:
        features = mixture(args.n, args.dim, args.components, args.seed)
        started, cpu_started = time.perf_counter(), time.process_time()
        labels = method(features)
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
        sizes = kmeans.cluster_sizes(labels, k)
        normalised, _ = kmeans.normalize_features(mixture(args.n, args.dim, args.components, args.seed), inplace=True)
        results.append((name, seconds, cpu_seconds, sizes, coherence(normalised, labels, k)))
        del features, normalised
        print(
            f"  done: {name} in {seconds:.1f} s wall, {cpu_seconds:.1f} s CPU; sizes {sizes},"
            f" max/min {kmeans.balance(sizes):.3f}, coherence {results[-1][-1]:.3f}",
            flush=True,
        )

    wall_baseline, cpu_baseline = results[0][1], results[0][2]
    print()
    print("| method | wall s | × baseline | CPU s | × baseline | max/min | largest share | coherence | sizes |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, seconds, cpu_seconds, sizes, coh in results:
        print(
            f"| {name} | {seconds:.1f} | {seconds / wall_baseline:.2f} | {cpu_seconds:.1f} |"
            f" {cpu_seconds / cpu_baseline:.2f} | {kmeans.balance(sizes):.3f} | {max(sizes) / sum(sizes):.1%} |"
            f" {coh:.3f} | {sizes} |"
        )


if __name__ == "__main__":
    main()
