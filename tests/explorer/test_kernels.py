"""The overview's compiled loops (explorer/kernels.py) give exactly what the numpy code they
replaced gave, and layers drawn on two threads equal layers drawn one after the other."""

from __future__ import annotations

import numpy as np

from explorer import kernels
from tests.explorer.test_store import synthetic


def test_bin_cells_equals_numpy_binning_and_samples_bottom_k():
    """Counts, fakes, p(fake) sums and errors per cell equal numpy's binning; each cell's sample
    is exactly its ``per_cell`` rows of smallest key (a seeded uniform sample), all of them when
    the cell has fewer."""
    pts = synthetic(50_000, seed=3)
    for viewport, mask in (((-1.0, 1.5, -2.0, 1.0), pts.p_fake > 0.2),
                           ((-4.0, 4.0, -4.0, 4.0), None),
                           ((float(pts.x[7]), 2.0, -1.0, float(pts.y[7])), None)):  # fmt: skip
        x0, x1, y0, y1 = viewport
        nx, ny, per_cell = 7, 4, 5
        count, fake, psum, errs, members = kernels.bin_cells(pts, viewport, nx, ny, mask, 1,
                                                             per_cell, seed=11)  # fmt: skip
        inside = (pts.x >= x0) & (pts.x <= x1) & (pts.y >= y0) & (pts.y <= y1)
        want = np.flatnonzero(inside if mask is None else inside & mask)
        cx = np.minimum(((pts.x[want] - x0) / (x1 - x0) * nx).astype(np.int64), nx - 1)
        cy = np.minimum(((pts.y[want] - y0) / (y1 - y0) * ny).astype(np.int64), ny - 1)
        cell = cy * nx + cx
        assert len(want) > 100
        assert np.array_equal(count, np.bincount(cell, minlength=nx * ny))
        assert np.array_equal(fake, np.bincount(cell[pts.label[want] == 1], minlength=nx * ny))
        assert np.array_equal(errs, np.bincount(cell[pts.error[want]], minlength=nx * ny))
        np.testing.assert_allclose(
            psum, np.bincount(cell, weights=pts.p_fake[want], minlength=nx * ny), rtol=1e-9
        )  # fmt: skip
        for c in range(nx * ny):
            rows = want[cell == c]
            keys = np.array([kernels._key(int(r), 11) for r in rows], np.int64)
            bottom = np.sort(rows[np.argsort(keys, kind="stable")[:per_cell]])
            assert np.array_equal(members[c], bottom), c
    other = kernels.bin_cells(pts, (-4.0, 4.0, -4.0, 4.0), 2, 2, None, 1, 5, seed=12)[4]
    again = kernels.bin_cells(pts, (-4.0, 4.0, -4.0, 4.0), 2, 2, None, 1, 5, seed=12)[4]
    first = kernels.bin_cells(pts, (-4.0, 4.0, -4.0, 4.0), 2, 2, None, 1, 5, seed=11)[4]
    assert all(np.array_equal(a, b) for a, b in zip(other, again))  # the seed fixes the sample
    assert not all(np.array_equal(a, b) for a, b in zip(other, first))


def test_samples_cover_the_cell_uniformly():
    """Over many seeds every row of a cell is drawn about equally often (bottom-k of good
    pseudo-random keys is a uniform sample): 40 rows, 4 drawn per seed, 2,000 seeds; each row's
    share within 5 standard errors of 1/10 (a deterministic check: the keys are fixed)."""
    pts = synthetic(40, seed=5)
    hits = np.zeros(40)
    for seed in range(2000):
        (m,) = kernels.bin_cells(pts, (-9.0, 9.0, -9.0, 9.0), 1, 1, None, 1, 4, seed)[4]
        hits[m] += 1
    share = hits / 2000
    assert np.abs(share - 0.1).max() < 5 * np.sqrt(0.1 * 0.9 / 2000)


def test_category_colours_equal_the_float32_mean():
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 5, (5000, 3)).astype(np.uint32)
    counts[::7] = 0
    colors = np.array([[255, 0, 0], [0, 170, 0], [32, 64, 255]], np.float32)
    rgba, total = kernels.category_colours(counts, colors)
    assert np.array_equal(total, counts.sum(axis=1))
    nz = total > 0
    want = np.rint(counts[nz].astype(np.float32) @ colors / total[nz, None].astype(np.float32))
    assert np.abs(rgba[nz, :3].astype(int) - want.astype(int)).max() <= 1
    assert (rgba[~nz] == 0).all() and (rgba[:, 3] == 0).all()  # opacity is the caller's


def test_over_equals_integer_straight_alpha():
    rng = np.random.default_rng(1)
    layers = [rng.integers(0, 256, (30, 40, 4), dtype=np.uint8) for _ in range(3)]
    layers[1][..., 3] = 0
    layers[2][5:, :, 3] = 0
    out = np.empty((30 * 40, 3), np.int64)
    out[:] = (250, 251, 252)
    for layer in layers:
        flat = layer.reshape(-1, 4).astype(np.int64)
        a = flat[:, 3:4]
        out = (flat[:, :3] * a + out * (255 - a) + 127) // 255
    got = kernels.over(layers, (250, 251, 252))
    assert got.dtype == np.uint8 and (got[..., 3] == 255).all()
    assert np.array_equal(got[..., :3].reshape(-1, 3), out)


def test_layers_drawn_together_equal_layers_drawn_alone(small_run):
    """A zoom redraws points and glyphs on two threads (OverviewView.layers); the frame equals
    the one drawn layer by layer, and a second call reuses both layers."""
    from explorer.app import App
    from explorer.overview import composite

    app = App(str(small_run), sync_url=False)
    ov, s = app.overview, app.store
    s.show_glyphs = True
    xr = (ov.full_x[0] * 0.8, ov.full_x[1] * 0.8)
    yr = (ov.full_y[0] * 0.8, ov.full_y[1] * 0.8)
    alone = [ov.points_layer(xr, yr, 300, 200, "label"), ov.glyph_layer(xr, yr, 300, 200, 4)]
    assert all(layer[..., 3].any() for layer in alone)
    calls = []

    def counted(name, fn):
        return lambda: calls.append(name) or fn()

    specs = [("points", ("t", xr, yr), counted("points", lambda: ov.points_layer(
                 xr, yr, 300, 200, "label")), False),
             ("glyphs", ("t", xr, yr), counted("glyphs", lambda: ov.glyph_layer(
                 xr, yr, 300, 200, 4)), False)]  # fmt: skip
    together = ov.layers(specs)
    assert sorted(calls) == ["glyphs", "points"]
    for a, b in zip(alone, together):
        assert np.array_equal(a, b)
    assert np.array_equal(composite(alone), composite(together))
    again = ov.layers(specs)
    assert len(calls) == 2 and all(a is b for a, b in zip(again, together))


def test_stamp_equals_numpy_three_by_three_stamps():
    """The selection layer's pixels: each selected point inside the view covers its pixel and
    the 8 around it (clipped at the frame), exactly as the numpy stamping it replaced."""
    pts = synthetic(20_000, seed=8)
    rows = np.flatnonzero(pts.label == 1)
    x0, x1, y0, y1 = -1.5, 2.0, float(pts.y[rows[3]]), 1.8
    w, h = 97, 61
    ix = np.floor((pts.x[rows] - x0) * (w / (x1 - x0))).astype(np.int64)
    iy = np.floor((y1 - pts.y[rows]) * (h / (y1 - y0))).astype(np.int64)
    ix[pts.x[rows] == x1], iy[pts.y[rows] == y0] = w - 1, h - 1
    keep = (ix >= 0) & (ix < w) & (iy >= 0) & (iy < h)
    on = np.zeros((h + 2, w + 2), bool)
    for dy in range(3):
        for dx in range(3):
            on[iy[keep] + dy, ix[keep] + dx] = True
    got = kernels.stamp(pts.x, pts.y, rows, (x0, x1, y0, y1), w, h)
    assert keep.sum() > 100 and np.array_equal(got, on[1:-1, 1:-1])
