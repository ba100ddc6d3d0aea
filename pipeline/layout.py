"""2-D layout of the distilled representations: UMAP (default) or PCA, reproducible from a seed."""

from __future__ import annotations

import numpy as np


def compute_layout(x: np.ndarray, method: str = "umap", seed: int = 0) -> np.ndarray:
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

        reducer = umap.UMAP(
            n_components=2,
            n_neighbors=min(15, n - 1),
            random_state=seed,  # fixes the seed (and makes UMAP single-threaded)
            init="spectral" if n > 16 else "random",
        )
        return reducer.fit_transform(x).astype(np.float32)
    raise ValueError(f"layout method must be 'umap' or 'pca', got {method!r}")
