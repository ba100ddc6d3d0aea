"""Layout: reproducible from a seed, PCA and UMAP."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.layout import compute_layout, warm_up


def _blobs(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.normal(0, 1, (60, 16)), rng.normal(6, 1, (60, 16))]).astype("f4")


def test_pca_is_deterministic_and_separates_blobs():
    x = _blobs()
    a, b = compute_layout(x, "pca", 0), compute_layout(x.copy(), "pca", 0)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (120, 2) and a.dtype == np.float32
    assert abs(a[:60, 0].mean() - a[60:, 0].mean()) > 10


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="2-D"):
        compute_layout(np.zeros(5), "pca")
    with pytest.raises(ValueError, match="umap"):
        compute_layout(np.zeros((5, 3)), "tsne")


@pytest.mark.slow
def test_umap_is_reproducible_from_seed():
    import warnings

    x = _blobs()
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        a, b = compute_layout(x, "umap", 7), compute_layout(x, "umap", 7)
    np.testing.assert_array_equal(a, b)
    assert np.isfinite(a).all()
    # the seed makes UMAP single-threaded; saying so keeps its warning out of every run's output
    assert not [w for w in said if "n_jobs" in str(w.message)]


@pytest.mark.slow
def test_umap_past_the_fit_sample_places_every_point_reproducibly():
    """Fitted on a sample, the rest placed by transform: every point gets a finite place, the
    same seed gives the same layout, and the clusters stay apart (points of one blob are nearer
    each other than to another blob's)."""
    x = _blobs()
    labels = np.repeat([0, 1], 60)
    a = compute_layout(x, "umap", 3, fit_sample=40)
    b = compute_layout(x, "umap", 3, fit_sample=40)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (len(x), 2) and np.isfinite(a).all()
    centres = np.stack([a[labels == k].mean(0) for k in range(2)])
    nearest = np.linalg.norm(a[:, None] - centres[None], axis=2).argmin(1)
    assert (nearest == labels).mean() > 0.95


@pytest.mark.slow
def test_umap_warm_up_leaves_the_layout_unchanged():
    """A run compiles UMAP's code on a driver thread while the workers encode: a layout
    computed while that warm-up runs beside it, and one after it, equal the layout without it."""
    import os
    import threading

    x = _blobs()
    alone = compute_layout(x, "umap", 5, fit_sample=40)
    own = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    seen = {}

    def low():  # a CPU run's warm-up lowers its own thread's priority, nothing else's
        warm_up(5, x.shape[1], nice=19)
        seen["warm-up"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    thread = threading.Thread(target=low)
    thread.start()
    beside = compute_layout(x, "umap", 5, fit_sample=40)
    thread.join()
    assert (
        seen["warm-up"] == 19 and os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == own
    )
    after = compute_layout(x, "umap", 5, fit_sample=40)
    np.testing.assert_array_equal(alone, beside)
    np.testing.assert_array_equal(alone, after)


@pytest.mark.slow
def test_umap_transform_on_the_workers_gives_the_same_layout(dask_scheduler, monkeypatch):
    """Past DISTRIBUTE_MIN points the transform chunks run on the Dask workers (issue 10: not on
    one core of the driver): each chunk is the same call on the same fitted model, so the layout
    equals the one placed in this process, point for point."""
    from distributed import Client

    import pipeline.layout as L
    from pipeline.runner import dask_mapper

    x = _blobs()
    monkeypatch.setattr(L, "TRANSFORM_CHUNK", 20)  # 80 points to place: 4 chunks
    here = L.compute_layout(x, "umap", 3, fit_sample=40)
    sent = []
    with Client(dask_scheduler) as client:
        mapper = dask_mapper(client)

        def counted(fn, obj, chunks):
            sent.extend(len(c) for c in chunks)
            return mapper(fn, obj, chunks)

        there = L.compute_layout(x, "umap", 3, fit_sample=40, mapper=counted, distribute_min=1)
        # below the threshold the mapper is not used
        small = L.compute_layout(x, "umap", 3, fit_sample=40, mapper=counted, distribute_min=81)
    assert sent == [20, 20, 20, 20]
    np.testing.assert_array_equal(there, here)
    np.testing.assert_array_equal(small, here)
