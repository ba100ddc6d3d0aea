"""The layout's fit sample, side by side on the same points: UMAP fitted on every point against
UMAP fitted on a sample with the rest placed by ``transform`` (``pipeline.layout``), on a 16-d
mixture of clusters like the distilled features (clusters of different spreads and sizes).

For each it prints the seconds and two neighbourhood figures on 2,000 query points:
``knn_kept`` (the share of a point's 15 nearest neighbours in 16-d that are among its 15 nearest
in 2-d) and ``label_agree`` (the share of its 15 nearest in 2-d from its own cluster). Last line:

    full_s=A sample_s=B knn_kept_full=C knn_kept_sample=D

    python benchmarks/layout.py                 # 50,000 points, fit sample 20,000: ~3 min here
    python benchmarks/layout.py --n 5000 --fit-sample 2000

``--workers N`` also places the points past the fit sample on N Dask worker processes (as a run
does from ``DISTRIBUTE_MIN`` points on), timed with their first-call compilation, checks that the
layout equals the one placed in this process and adds ``workers_s=W same=S`` to the last line;
``--no-full`` skips the fit on every point (for large N):

    python benchmarks/layout.py --n 300000 --workers 2 --no-full
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
    ap.add_argument("--workers", type=int, default=0, help="also place the rest on N workers")
    ap.add_argument("--no-full", action="store_true", help="skip the fit on every point")
    args = ap.parse_args()
    warnings.filterwarnings("ignore", message="n_jobs value")
    x, label = mixture(args.n, args.seed)
    # numba compiles once, outside the timings: the fit (exact and approximate neighbours) and
    # this process's transform; --workers' processes compile their own inside theirs
    compute_layout(x[:500], "umap", args.seed)
    compute_layout(x[: min(args.n, 6000)], "umap", args.seed, fit_sample=5000)
    queries = np.random.default_rng(args.seed + 1).choice(args.n, min(2000, args.n), replace=False)
    res = {"full": (float("nan"), float("nan"))}
    runs = (
        (("sample", args.fit_sample),)
        if args.no_full
        else (("full", args.n), ("sample", args.fit_sample))
    )
    for name, fit in runs:
        t0 = time.perf_counter()
        xy = compute_layout(x, "umap", args.seed, fit_sample=fit)
        secs = time.perf_counter() - t0
        kept, agree = neighbourhoods(x, xy, label, queries)
        res[name] = (secs, kept)
        print(f"{name:<7} fit on {min(fit, args.n):>7,} of {args.n:,}: {secs:6.1f} s, "
              f"knn_kept {kept:.3f}, label_agree {agree:.3f}", flush=True)  # fmt: skip
        if name == "sample":
            here = xy
    tail = ""
    if args.workers:
        from distributed import Client, LocalCluster

        from pipeline.runner import dask_mapper

        with LocalCluster(n_workers=args.workers, threads_per_worker=1,
                          dashboard_address=":0") as lc, Client(lc) as client:  # fmt: skip
            client.submit(int, 0).result()  # the workers are up
            t0 = time.perf_counter()
            xy = compute_layout(x, "umap", args.seed, fit_sample=args.fit_sample,
                                mapper=dask_mapper(client), distribute_min=1)  # fmt: skip
            secs = time.perf_counter() - t0
        same = bool(np.array_equal(xy, here))
        print(f"sample, the rest on {args.workers} workers (their compilation included): "
              f"{secs:6.1f} s, same layout: {same}", flush=True)  # fmt: skip
        tail = f" workers_s={secs:.1f} same={int(same)}"
    full, sample = res["full"], res["sample"]
    print(f"full_s={full[0]:.1f} sample_s={sample[0]:.1f} knn_kept_full={full[1]:.3f} "
          f"knn_kept_sample={sample[1]:.3f}{tail}")  # fmt: skip


if __name__ == "__main__":  # the Dask workers of --workers import this module
    main()
