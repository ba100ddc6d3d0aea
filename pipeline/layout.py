"""2-D layout of the distilled representations: UMAP (default) or PCA, reproducible from a seed.

Past ``FIT_SAMPLE`` points UMAP is fitted on a uniform sample drawn from the seed and every other
point is placed by ``transform`` (chunk by chunk): the fit's cost and memory stay bounded while the
layout covers every image (issue 10). Given a ``mapper`` (the run's Dask workers), the chunks are
placed in parallel once there are at least ``DISTRIBUTE_MIN`` of those points: each chunk is the
same call with the same fitted model wherever it runs, so the layout is the same (a test). Below
that, the chunks stay in this process: UMAP's ``transform`` compiles for about 10 s in each new
process, longer than one core takes for 80,000 points."""

from __future__ import annotations

import numpy as np

FIT_SAMPLE = 20_000
TRANSFORM_CHUNK = 25_000
DISTRIBUTE_MIN = 200_000


WARM_UP_POINTS = 4_200  # past UMAP's 4,096: the approximate-neighbour path a real fit takes


def warm_up(seed: int = 0, dim: int = 16, nice: int = 0) -> float:
    """Compile UMAP's Numba code (fit, neighbours, spectral start, layout, ``transform``) on
    random points of the run's dtype and width, so that the real layout finds it compiled. On a
    machine whose Numba cache is empty the compilation is most of the layout: on a 2-core VM the
    layout of 100,000 points took 116 s with an empty cache; after this warm-up (88 s), 37 s. A
    run with GPU workers starts it on a driver thread at once (the driver's cores idle until the
    layout); a CPU run starts it at the encode stage on a thread of low priority (``nice``;
    on Linux per thread), which takes only the cycles the workers leave (their waits between
    tasks, the driver's idle moments). Returns its seconds."""
    import os
    import threading
    import time

    t0 = time.perf_counter()
    if nice and hasattr(os, "setpriority"):
        try:  # on Linux a thread's native id names it here: only this thread is lowered
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
        except OSError:
            pass
    import umap

    x = np.random.default_rng(seed).normal(size=(WARM_UP_POINTS, dim)).astype(np.float32)
    reducer = umap.UMAP(n_components=2, n_neighbors=15, random_state=seed, n_jobs=1,
                        init="spectral", n_epochs=5)  # fmt: skip
    reducer.fit(x)
    reducer.transform(x[:256])
    return time.perf_counter() - t0


def place(reducer, x: np.ndarray) -> np.ndarray:
    """One chunk of points placed on a fitted UMAP layout (a Dask task when distributed)."""
    return reducer.transform(x).astype(np.float32)


def compute_layout(x: np.ndarray, method: str = "umap", seed: int = 0,
                   fit_sample: int = FIT_SAMPLE, mapper=None,
                   distribute_min: int = DISTRIBUTE_MIN) -> np.ndarray:  # fmt: skip
    """(n, d) float -> (n, 2) float32. Identical inputs and seed give identical output.
    ``mapper(fn, obj, chunks) -> [fn(obj, chunk) for chunk in chunks]`` may run the transform
    chunks elsewhere (pipeline.runner: on the Dask workers)."""
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
        chunks = [rest[s : s + TRANSFORM_CHUNK] for s in range(0, len(rest), TRANSFORM_CHUNK)]
        if mapper is not None and len(rest) >= distribute_min:
            placed = mapper(place, reducer, [x[idx] for idx in chunks])
        else:
            placed = (place(reducer, x[idx]) for idx in chunks)
        for idx, xy in zip(chunks, placed):
            out[idx] = xy
        return out
    raise ValueError(f"layout method must be 'umap' or 'pca', got {method!r}")
