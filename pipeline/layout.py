"""2-D layout of the distilled representations: UMAP (default) or PCA, reproducible from a seed.

Past ``FIT_SAMPLE`` points UMAP is fitted on a uniform sample drawn from the seed and every other
point is placed by ``transform`` (chunk by chunk): the fit's cost and memory stay bounded while the
layout covers every image (issue 10)."""

from __future__ import annotations

import numpy as np

FIT_SAMPLE = 20_000
TRANSFORM_CHUNK = 100_000


def compute_layout(
    x: np.ndarray, method: str = "umap", seed: int = 0, fit_sample: int = FIT_SAMPLE
) -> np.ndarray:
    """(n, d) float -> (n, 2) float32. Identical inputs and seed give identical output."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"layout needs a 2-D array (n, d), got shape {x.shape}")
    n = len(x)
    if n == 0:
        return np.zeros((0, 2), np.float32)
    if n < 3:
        return np.pad(x[:, :2], ((0, 0), (0, max(0, 2 - x.shape[1])))).astype(np.float32)
    if method == "pca":
        from sklearn.decomposition import PCA

        centred = x - x.mean(axis=0)
        out = PCA(n_components=2, svd_solver="full", random_state=seed).fit_transform(centred)
        # Fix each axis' sign so that the result does not depend on the SVD's sign convention.
        signs = np.sign(out[np.abs(out).argmax(axis=0), [0, 1]])
        return (out * np.where(signs == 0, 1, signs)).astype(np.float32)
    if method == "umap":
        import umap

        m = min(n, fit_sample)
        reducer = umap.UMAP(
            n_components=2,
            n_neighbors=min(15, m - 1),
            random_state=seed,  # fixes the seed, which makes UMAP single-threaded:
            n_jobs=1,  # said here, or UMAP warns in every run's output that it overrode n_jobs
            init="spectral" if m > 16 else "random",
        )
        if n <= fit_sample:
            return reducer.fit_transform(x).astype(np.float32)
        fit = np.sort(np.random.default_rng(seed).choice(n, size=fit_sample, replace=False))
        out = np.empty((n, 2), np.float32)
        out[fit] = reducer.fit_transform(x[fit])
        rest = np.setdiff1d(np.arange(n), fit)
        for s in range(0, len(rest), TRANSFORM_CHUNK):
            idx = rest[s : s + TRANSFORM_CHUNK]
            out[idx] = reducer.transform(x[idx])
        return out
    raise ValueError(f"layout method must be 'umap' or 'pca', got {method!r}")
