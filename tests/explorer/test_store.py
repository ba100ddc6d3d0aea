"""The explorer's data layer against brute force: filters, box and lasso selection, cell glyph
statistics, mean maps and manifest export on a real run directory."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from explorer.store import (
    Filters,
    Points,
    box_select,
    cell_stats,
    export_manifest,
    filter_mask,
    lasso_select,
    load_points,
    mean_maps,
)


def synthetic(n: int = 5000, seed: int = 0) -> Points:
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 2, n).astype(np.int8)
    p = np.clip(rng.normal(0.3 + 0.4 * label, 0.2), 0, 1).astype(np.float32)
    return Points(
        id=np.arange(n), x=rng.normal(0, 1, n).astype(np.float32),
        y=rng.normal(0, 1, n).astype(np.float32), label=label, p_fake=p,
        pred=(p >= 0.5).astype(np.int8), generator=rng.integers(0, 3, n).astype(np.int16),
        generators=("a", "b", "real"),
    )  # fmt: skip


def test_filters_match_brute_force():
    pts = synthetic()
    f = Filters(labels=(1,), generators=("a", "b"), misclassified=True, score_range=(0.1, 0.6))
    got = filter_mask(pts, f)
    want = np.array([
        pts.label[i] == 1 and pts.generator[i] in (0, 1) and pts.pred[i] != pts.label[i]
        and 0.1 <= pts.p_fake[i] <= 0.6 for i in range(len(pts))
    ])  # fmt: skip
    assert want.sum() > 50 and np.array_equal(got, want)
    assert filter_mask(pts, Filters()).all()
    with pytest.raises(ValueError, match="unknown generators"):
        filter_mask(pts, Filters(generators=("sdxl",)))
    with pytest.raises(ValueError, match="score_range"):
        filter_mask(pts, Filters(score_range=(0.8, 0.2)))


def test_box_and_lasso_selection():
    pts = synthetic()
    mask = pts.label == 1
    rows = box_select(pts, 0.5, -0.5, -1, 1, mask)  # corners in any order
    want = np.flatnonzero((np.abs(pts.x) <= 0.5) & (np.abs(pts.y) <= 1) & mask)
    assert len(want) > 100 and np.array_equal(rows, want)
    tri = np.array([[0, 0], [2, 0], [0, 2]])
    rows = lasso_select(pts, tri)
    inside = (pts.x > 0) & (pts.y > 0) & (pts.x + pts.y < 2)
    assert len(rows) > 100 and np.array_equal(rows, np.flatnonzero(inside))
    with pytest.raises(ValueError, match="3"):
        lasso_select(pts, tri[:2])


def test_cell_stats_are_exact_and_representatives_belong():
    pts = synthetic(20000)
    mask = pts.p_fake > 0.05
    vp = (-1.0, 1.5, -2.0, 1.0)
    cs = cell_stats(pts, vp, nx=5, ny=3, mask=mask, per_cell=8)
    rows = box_select(pts, *vp, mask)
    assert cs.count.sum() == len(rows)
    cx = np.minimum(((pts.x[rows] + 1.0) / 2.5 * 5).astype(int), 4)
    cy = np.minimum(((pts.y[rows] + 2.0) / 3.0 * 3).astype(int), 2)
    for j in range(3):
        for i in range(5):
            r = rows[(cx == i) & (cy == j)]
            assert cs.count[j, i] == len(r)
            assert cs.n_fake[j, i] == (pts.label[r] == 1).sum()
            np.testing.assert_allclose(cs.mean_p_fake[j, i], pts.p_fake[r].mean(), rtol=1e-5)
            np.testing.assert_allclose(cs.error_rate[j, i], (pts.pred[r] != pts.label[r]).mean())
            m = cs.members[j * 5 + i]
            assert len(m) == min(8, len(r)) and set(m) <= set(r)
            assert cs.representative[j, i] in set(m)
    empty = cell_stats(pts, (50, 51, 50, 51), 2, 2)
    assert empty.count.sum() == 0 and (empty.representative == -1).all()
    assert np.isnan(empty.mean_p_fake).all()


def test_dense_views_stay_bounded():
    pts = synthetic(200_000, seed=1)
    cs = cell_stats(pts, (-4, 4, -4, 4), nx=4, ny=4, per_cell=4)
    assert cs.count.sum() == len(box_select(pts, -4, 4, -4, 4))
    assert max(len(m) for m in cs.members) <= 4


def test_on_a_run_directory(tmp_path, random_encoder, dask_scheduler):
    from pipeline.config import RunConfig
    from pipeline.ingest import discover
    from pipeline.runner import run_pipeline
    from pipeline.synthetic import make_planted_dataset

    make_planted_dataset(tmp_path / "imgs", 30, 30, seed=2)
    out = tmp_path / "run"
    run_pipeline(RunConfig(source=str(tmp_path / "imgs"), out=str(out),
                           encoder_checkpoint=str(random_encoder), layout="pca",
                           scheduler=dask_scheduler, progress=False))  # fmt: skip
    pts, run = load_points(str(out))
    assert len(pts) == 60 and set(pts.generators) == {"real", "gen_a"}
    rows = np.flatnonzero(pts.label == 1)
    avg = mean_maps(run, pts, rows)
    want = run.relevance.take(pts.part[rows], pts.row[rows])[:, 0].mean(axis=0)
    np.testing.assert_allclose(avg, want)
    assert avg.shape == (8, 8) and (avg >= 0).all()
    for name in ("sel.csv", "sel.parquet"):
        path = export_manifest(pts, run, rows[:10], tmp_path / name)
        back = pd.read_csv(path) if name.endswith("csv") else pd.read_parquet(path)
        assert len(back) == 10 and (back["label"] == 1).all()
        cands = discover(path)  # the export is a manifest `asap run` reads
        assert [c.label for c in cands] == [1] * 10


def test_explorer_does_not_import_torch():
    import subprocess
    import sys

    # the served app too: only the what-if view imports torch, on first use
    mods = "explorer.store, explorer.app, explorer.server"
    code = f"import sys, {mods}; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_isin_lookup_equals_numpy():
    from explorer.store import _isin

    rng = np.random.default_rng(4)
    for dtype in (np.int8, np.int16, np.uint8):
        lo = np.iinfo(dtype).min
        col = rng.integers(max(lo, -5), 6, 10_000).astype(dtype)
        for values in ([1], [0, 1], [-3, 2, 5], [], [300, 2]):
            assert np.array_equal(_isin(col, values), np.isin(col, values)), (dtype, values)


def test_first_rows_in_order_equal_a_full_stable_sort(small_run):
    """The image view's first rows, found without sorting every row, are exactly the first rows
    of a full stable sort, for every order (labels and errors tie a lot)."""
    from explorer.datastore import SORT_BY, DataStore

    s = DataStore(str(small_run))
    rows = s.selected
    for order in SORT_BY:
        s.sort_by = order
        full = s.sorted_rows(rows)
        for limit in (1, 7, 24, len(rows) - 1, len(rows), len(rows) + 5):
            assert np.array_equal(s.sorted_rows(rows, limit), full[:limit]), (order, limit)


def test_explorer_reads_maps_without_read_ahead(small_run):
    """The explorer opens the run's maps for scattered reads (MADV_RANDOM where the platform has
    it): the same values come back."""
    from explorer.datastore import shared_run
    from pipeline.schema import open_run

    run = open_run(str(small_run))
    parts = np.zeros(5, np.int64)
    rows = np.array([4, 0, 3, 3, 1])
    before = run.relevance.take(parts, rows)
    run.relevance.random_access()
    assert np.array_equal(run.relevance.take(parts, rows), before)
    assert np.array_equal(run.relevance.fake_maps(parts, rows), before[:, 0])
    assert shared_run(str(small_run)).run.relevance._random
