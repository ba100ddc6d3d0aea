"""How reproducible the pattern stage's grouping is, per patch descriptor and k-means start,
side by side on one finished run.

For each descriptor (``--features``), the run is copied and its pattern stage recomputed with
`asap patterns COPY --pattern-feature F` (every other setting the run's own). On the patches that
wrote, the clustering (``pipeline.patterns.cluster``: fit on a sample, one mini-batch pass, every
patch assigned) is then repeated with other seeds and with Gaussian noise added to the
descriptors (the stored descriptors are float16; another CPU or a 1e-7 change upstream moves
them by about that much), each start:

- ``single``: one k-means fit on the whole sample, 3 seeded starts, best inertia (before issue 9's
  change);
- ``medoid``: the medoid of 10 fits on random 80% subsets (the current default).

Reproducibility = adjusted Rand index (ARI) of every patch's final pattern against the seed-0,
noise-free grouping (1 = the same partition). Also per descriptor: the patterns' clusterwise
stability (Hennig 2007), and how many are significant (impact) and stable (>= 0.75). Last line,
for the default descriptor with the medoid start:

    ari_seeds=A ari_noise=B stability=C significant_stable=N

    python benchmarks/pattern_stability.py --run runs/demo     # about 2.5 minutes on 2 cores
    python benchmarks/pattern_stability.py --build 256         # a small generated run
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

try:  # must come before the package imports: see benchmarks/_isolate.py
    import _isolate  # noqa: F401
except ModuleNotFoundError:
    pass
import numpy as np
import pandas as pd
from sklearn.metrics import adjusted_rand_score

from pipeline import patterns as P
from pipeline.config import PatternConfig
from pipeline.schema import PATTERN_COLUMNS, STABLE_PATTERN, RunPaths, read_table

REPO = Path(__file__).resolve().parents[1]
CONSENSUS = P.consensus_kmeans


def single_fit(sample, k, runs, seed, frac=0.8):
    """The start before issue 9's change: one KMeans on the whole sample, best of 3 starts."""
    from sklearn.cluster import KMeans

    km = KMeans(k, n_init=3, random_state=seed).fit(sample)
    return km.cluster_centers_, [km.labels_], 0


STARTS = {"single": single_fit, "medoid": CONSENSUS}


def grouping(run: RunPaths, start: str, seed: int, noise: float) -> np.ndarray:
    """Every patch's pattern, clustered with ``start`` from ``seed``, descriptors + noise."""
    n = sum(1 for _ in run.root.glob("parts/patches-*.npz"))
    read = P._features
    rng = np.random.default_rng(1000 + seed)

    def noisy(r, p):
        f = read(r, p)
        return f + rng.normal(0, noise, f.shape).astype(np.float32) if noise else f

    P._features, P.consensus_kmeans = noisy, STARTS[start]
    try:
        _, assigned, _ = P.cluster(run, list(range(n)), PatternConfig(seed=seed))
    finally:
        P._features, P.consensus_kmeans = read, CONSENSUS
    return np.concatenate([assigned[p][0] for p in range(n)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", default=str(REPO / "runs" / "demo"), help="a finished run")
    ap.add_argument("--features", default="spectrum,both")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--noise", type=float, nargs="+", default=[1e-4, 1e-3])
    ap.add_argument("--build", type=int, default=0,
                    help="instead of --run, build a run of this many generated images")  # fmt: skip
    args = ap.parse_args()

    rows, last = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        if args.build:
            sys.path.insert(0, str(Path(__file__).parent))
            from blur import build_run

            src = build_run(Path(tmp) / "built", args.build)
        else:
            src = Path(args.run)
        if not (src / "run.json").exists():
            sys.exit(f"{src} is not a finished run: make one first (make demo, or asap run ...)")
        for feat in args.features.split(","):
            copy = Path(tmp) / feat
            shutil.copytree(src, copy, ignore=shutil.ignore_patterns("patches-*.npz"))
            for name in ("patterns.parquet", "pattern_members.parquet", "faithfulness.parquet"):
                (copy / name).unlink(missing_ok=True)
            cmd = [sys.executable, "-m", "pipeline.cli", "patterns", str(copy), "--pattern-feature",
                   feat, "--quiet"]  # fmt: skip
            subprocess.run(cmd, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
            run = RunPaths(copy)
            pats = read_table(run.patterns, PATTERN_COLUMNS)
            stable = pats["stability"] >= STABLE_PATTERN
            for start in STARTS:
                base = grouping(run, start, 0, 0.0)
                seeds = [adjusted_rand_score(base, grouping(run, start, s, 0.0))
                         for s in args.seeds]  # fmt: skip
                noise = [adjusted_rand_score(base, grouping(run, start, 0, e)) for e in args.noise]
                row = dict(feature=feat, start=start, patches=len(base),
                           ari_seeds=float(np.mean(seeds)), ari_seeds_min=float(np.min(seeds)),
                           ari_noise=float(np.mean(noise)),
                           ari_noise_min=float(np.min(noise)))  # fmt: skip
                if start == "medoid":  # the pattern stage's own tables: the default start
                    row.update(stability=float(pats["stability"].mean()),
                               stability_min=float(pats["stability"].min()),
                               significant=int(pats["significant"].sum()),
                               significant_stable=int((pats["significant"] & stable).sum()),
                               patterns=len(pats))  # fmt: skip
                    if feat == PatternConfig.feature:
                        last = row
                rows.append(row)
    table = pd.DataFrame(rows)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(f"run {src}; seeds {args.seeds} and noise {args.noise} against seed 0 noise-free")
        print(table.round(3).to_string(index=False))
    if not last:
        last = table.iloc[-1].to_dict()
    print(f"ari_seeds={last['ari_seeds']:.3f} ari_noise={last['ari_noise']:.3f} "
          f"stability={last.get('stability', float('nan')):.3f} "
          f"significant_stable={int(last.get('significant_stable', 0))}")  # fmt: skip


if __name__ == "__main__":
    main()
