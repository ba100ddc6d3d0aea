"""The layout's fit sample, side by side on the same points: UMAP fitted on every point against
UMAP fitted on a sample with the rest placed by ``transform`` (``pipeline.layout``), on a 16-d
mixture of clusters like the distilled features (clusters of different spreads and sizes).

For each it prints the seconds and two neighbourhood figures on 2,000 query points:
``knn_kept`` (the share of a point's 15 nearest neighbours in 16-d that are among its 15 nearest
in 2-d) and ``label_agree`` (the share of its 15 nearest in 2-d from its own cluster). Last line:

    full_s=A sample_s=B knn_kept_full=C knn_kept_sample=D

    python benchmarks/layout.py                 # 50,000 points, fit sample 20,000: ~3 min here
    python benchmarks/layout.py --n 5000 --fit-sample 2000
"""

from __future__ import annotations

import argparse
import time
import warnings

try:  # must come before the package imports: see benchmarks/_isolate.py
    import _isolate  # noqa: F401
except ModuleNotFoundError:
    pass
import numpy as np
from sklearn.neighbors import NearestNeighbors

from pipeline.layout import compute_layout

K = 15


def mixture(n: int, seed: int = 0, dims: int = 16, clusters: int = 20):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, size=(clusters, dims))
    spread = rng.uniform(0.3, 1.5, size=clusters)
    weights = rng.dirichlet(np.full(clusters, 2.0))
    label = rng.choice(clusters, size=n, p=weights)
    x = centres[label] + rng.normal(size=(n, dims)) * spread[label, None]
    return x.astype(np.float32), label


def neighbourhoods(x, xy, label, queries):
    hi = NearestNeighbors(n_neighbors=K + 1).fit(x).kneighbors(x[queries], return_distance=False)
    lo = NearestNeighbors(n_neighbors=K + 1).fit(xy).kneighbors(xy[queries], return_distance=False)
    kept = np.mean([len(set(a[1:]) & set(b[1:])) / K for a, b in zip(hi, lo)])
    agree = np.mean(label[lo[:, 1:]] == label[queries, None])
    return kept, agree


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=50_000)
    ap.add_argument("--fit-sample", type=int, default=20_000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    warnings.filterwarnings("ignore", message="n_jobs value")
    x, label = mixture(args.n, args.seed)
    compute_layout(x[:500], "umap", args.seed)  # numba compiles once, outside the timings
    queries = np.random.default_rng(args.seed + 1).choice(args.n, min(2000, args.n), replace=False)
    res = {}
    for name, fit in (("full", args.n), ("sample", args.fit_sample)):
        t0 = time.perf_counter()
        xy = compute_layout(x, "umap", args.seed, fit_sample=fit)
        secs = time.perf_counter() - t0
        kept, agree = neighbourhoods(x, xy, label, queries)
        res[name] = (secs, kept)
        print(f"{name:<7} fit on {min(fit, args.n):>7,} of {args.n:,}: {secs:6.1f} s, "
              f"knn_kept {kept:.3f}, label_agree {agree:.3f}", flush=True)  # fmt: skip
    print(f"full_s={res['full'][0]:.1f} sample_s={res['sample'][0]:.1f} "
          f"knn_kept_full={res['full'][1]:.3f} knn_kept_sample={res['sample'][1]:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
