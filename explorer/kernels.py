"""Compiled loops for the overview's per-frame work at a million points (issue 11: a zoom or a
filter at 1 M points spent about 70 ms binning the points into glyph cells and 30 ms in each of
shading and compositing, with numpy's temporaries). Numba is already here through Datashader;
each loop is compiled once per machine (``cache=True``) and releases the GIL, so that the
overview's layers can be drawn on two threads at once. Each function keeps the arithmetic of
the numpy version it replaced (float32 where the columns are float32), so the results are the
same to the last bit, not just close."""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def _key(i, seed):
    """A pseudo-random 63-bit key for row ``i`` (splitmix64 of the row and the seed)."""
    z = (np.uint64(i) + np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15)
         + np.uint64(0x9E3779B97F4A7C15))  # fmt: skip
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return np.int64((z ^ (z >> np.uint64(31))) >> np.uint64(1))


@numba.njit(cache=True, nogil=True)
def _bin_cells(x, y, p_fake, label, pred, mask, use_mask, x0, x1, y0, y1, sx, sy, fx, fy, nx,
               ny, fake_label, per_cell, seed):  # fmt: skip
    n_cells = nx * ny
    count = np.zeros(n_cells, np.int64)
    fake = np.zeros(n_cells, np.int64)
    psum = np.zeros(n_cells, np.float64)
    errs = np.zeros(n_cells, np.int64)
    members = np.full((n_cells, per_cell), -1, np.int64)
    keys = np.full((n_cells, per_cell), np.iinfo(np.int64).max, np.int64)
    worst = np.zeros(n_cells, np.int64)  # slot of the largest key kept in each cell
    for i in range(len(x)):
        if use_mask and not mask[i]:
            continue
        xi, yi = x[i], y[i]
        if not (xi >= x0 and xi <= x1 and yi >= y0 and yi <= y1):
            continue
        cx = min(int((xi - x0) / sx * fx), nx - 1)
        cy = min(int((yi - y0) / sy * fy), ny - 1)
        c = cy * nx + cx
        count[c] += 1
        if label[i] == fake_label:
            fake[c] += 1
        psum[c] += p_fake[i]
        if pred[i] != label[i]:
            errs[c] += 1
        # the cell's sample: the per_cell rows with the smallest keys seen so far
        k = _key(i, seed)
        w = worst[c]
        if k < keys[c, w]:
            keys[c, w], members[c, w] = k, i
            for j in range(per_cell):  # the new largest kept key
                if keys[c, j] > keys[c, w]:
                    w = j
            worst[c] = w
    return count, fake, psum, errs, members


def bin_cells(pts, viewport, nx: int, ny: int, mask, fake_label: int, per_cell: int,
              seed: int = 0):  # fmt: skip
    """One pass over the points: per cell of the nx-by-ny grid over ``viewport``, the count, the
    fakes, the sum of p(fake), the errors, and a uniform random sample of at most ``per_cell``
    rows (the rows with the smallest pseudo-random keys for ``seed``; -1 pads), in row order.
    A point on the viewport's edge is inside; cell coordinates are
    ``min(int((x - x0) / (x1 - x0) * nx), nx - 1)`` in the columns' precision."""
    t = pts.x.dtype.type
    x0, x1, y0, y1 = viewport
    use_mask = mask is not None
    m = mask if use_mask else np.zeros(1, np.bool_)
    count, fake, psum, errs, members = _bin_cells(
        pts.x, pts.y, pts.p_fake, pts.label, pts.pred, m, use_mask, t(x0), t(x1), t(y0), t(y1),
        t(x1 - x0), t(y1 - y0), t(nx), t(ny), int(nx), int(ny), pts.label.dtype.type(fake_label),
        int(per_cell), int(seed),
    )  # fmt: skip
    members.sort(axis=1)  # -1 padding first
    return count, fake, psum, errs, [row[row >= 0] for row in members]


@numba.njit(cache=True, nogil=True)
def _category_colours(counts, colors, rgba, total):
    """rgba[:, :3] = the mean of each pixel's points' category colours (float32, rounded half to
    even as np.rint), total = its point count."""
    n, k = counts.shape
    for i in range(n):
        t = 0
        for j in range(k):
            t += counts[i, j]
        total[i] = t
        if t == 0:
            continue
        tf = np.float32(t)
        for ch in range(3):
            acc = np.float32(0.0)
            for j in range(k):
                acc += np.float32(counts[i, j]) * colors[j, ch]
            rgba[i, ch] = np.uint8(np.rint(acc / tf))


def category_colours(flat_counts: np.ndarray, colors: np.ndarray):
    """(h*w, 4) uint8 RGBA with the colours filled in, and (h*w,) int64 point counts."""
    rgba = np.zeros((len(flat_counts), 4), np.uint8)
    total = np.zeros(len(flat_counts), np.int64)
    _category_colours(np.ascontiguousarray(flat_counts), colors.astype(np.float32), rgba, total)
    return rgba, total


@numba.njit(cache=True, nogil=True)
def _over(layer, out):
    """One straight-alpha layer (n, 4) over the opaque pixels ``out`` (n, 4), in place."""
    for i in range(out.shape[0]):
        a = np.int64(layer[i, 3])
        if a == 0:
            continue
        na = 255 - a
        for ch in range(3):
            out[i, ch] = (np.int64(layer[i, ch]) * a + np.int64(out[i, ch]) * na + 127) // 255


def over(layers: list[np.ndarray], background=(255, 255, 255)) -> np.ndarray:
    """Straight-alpha RGBA layers (h, w, 4) uint8, bottom first, over an opaque background, in
    integers rounded once per layer: one opaque (h, w, 4) uint8 image."""
    h, w = layers[0].shape[:2]
    out = np.empty((h * w, 4), np.uint8)
    out[:, :3] = background
    out[:, 3] = 255
    for layer in layers:
        _over(np.ascontiguousarray(layer).reshape(-1, 4), out)
    return out.reshape(h, w, 4)


@numba.njit(cache=True, nogil=True)
def spread_radius(img, threshold, max_px):
    """Datashader's dynspread rule on a (h, w) uint32 RGBA image: the largest radius r <=
    ``max_px`` such that, for every radius up to r, at most ``threshold`` of the drawn pixels
    have another drawn pixel within 2 r (a square window); 0 if none qualifies."""
    h, w = img.shape
    c = np.zeros((h + 1, w + 1), np.int32)  # integral image of the drawn pixels
    n = 0
    for y in range(h):
        row = 0
        for x in range(w):
            if img[y, x] >> 24:
                row += 1
                n += 1
            c[y + 1, x + 1] = c[y, x + 1] + row
    if n == 0:
        return 0
    px = 0
    for r in range(1, max_px + 1):
        crowded = 0
        for y in range(h):
            y0, y1 = max(y - 2 * r, 0), min(y + 2 * r + 1, h)
            for x in range(w):
                if img[y, x] >> 24 == 0:
                    continue
                x0, x1 = max(x - 2 * r, 0), min(x + 2 * r + 1, w)
                if c[y1, x1] - c[y0, x1] - c[y1, x0] + c[y0, x0] > 1:
                    crowded += 1
        if crowded / n > threshold:
            break
        px = r
    return px


@numba.njit(cache=True, nogil=True)
def _stamp(x, y, rows, x0, x1, y0, y1, sx, sy, w, h, out):
    for r in rows:
        xi, yi = x[r], y[r]
        ix = w - 1 if xi == x1 else int(np.floor((xi - x0) * sx))
        iy = h - 1 if yi == y0 else int(np.floor((y1 - yi) * sy))
        if ix < 0 or ix >= w or iy < 0 or iy >= h:
            continue
        for oy in range(max(iy - 1, 0), min(iy + 2, h)):
            for ox in range(max(ix - 1, 0), min(ix + 2, w)):
                out[oy, ox] = True


def stamp(x, y, rows, viewport, w: int, h: int) -> np.ndarray:
    """(h, w) bool: the pixels within one pixel of each point of ``rows`` inside ``viewport``
    (row 0 at the top; a point on the far edge belongs to the last pixel), with the columns'
    precision (``OverviewView._pixels``' arithmetic)."""
    t = x.dtype.type
    x0, x1, y0, y1 = viewport
    out = np.zeros((h, w), np.bool_)
    _stamp(x, y, np.asarray(rows, np.int64), t(x0), t(x1), t(y0), t(y1), t(w / (x1 - x0)),
           t(h / (y1 - y0)), int(w), int(h), out)  # fmt: skip
    return out
