"""The explorer's data layer: one run's points as flat numpy columns, filters, box/lasso selection,
and the per-cell statistics behind the overview's cell glyphs. Pure numpy (no Panel, no torch), so
that it can be tested and benchmarked on millions of points without a browser.

Costs are kept flat in the number of points: counts per cell are exact (``np.bincount``), while the
representative image and the mean relevance pattern of a cell come from a bounded random sample of
its points (``per_cell`` images), so a glyph never reads more than a few thousand maps."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from pipeline.schema import LABEL_FAKE, RunDirectoryError, open_run

from .kernels import bin_cells


@dataclass(frozen=True)
class Points:
    """Columns of equal length n, row i = one image."""

    id: np.ndarray  # int64
    x: np.ndarray  # float32 layout
    y: np.ndarray  # float32
    label: np.ndarray  # int8, 0 real / 1 fake
    p_fake: np.ndarray  # float32
    pred: np.ndarray  # int8
    generator: np.ndarray  # int16 codes into ``generators``
    generators: tuple[str, ...]
    part: np.ndarray | None = None  # int32, for relevance look-up
    row: np.ndarray | None = None  # int32
    dims: np.ndarray | None = None  # (n, 16) float32 distilled values

    def __len__(self) -> int:
        return len(self.x)

    @property
    def error(self) -> np.ndarray:
        return self.pred != self.label


def _codes(column) -> tuple[np.ndarray, tuple[str, ...]]:
    """Integer codes (sorted names) of a text column, without a Python string per row."""
    import pyarrow as pa
    import pyarrow.compute as pc

    enc = pc.dictionary_encode(pa.chunked_array([pa.array(column)])).combine_chunks()
    names = [str(n) for n in enc.dictionary.to_pylist()]
    rank = np.argsort(np.argsort(names, kind="stable"))  # dictionary index -> sorted index
    codes = rank[enc.indices.to_numpy(zero_copy_only=False)].astype(np.int16)
    return codes, tuple(sorted(names))


@lru_cache(maxsize=4)
def load_points(run_dir: str) -> tuple[Points, object]:
    """Points of a run directory and the opened run (cached per path, shared by sessions)."""
    run = open_run(run_dir, lean=True)
    f, im = run.features, run.images  # lean: features is a dict of numpy columns
    ids = f["id"]
    img_ids = im["id"].to_numpy(np.int64)
    order = np.argsort(img_ids, kind="stable")  # the contract orders by id; do not rely on it
    pos = order[np.clip(np.searchsorted(img_ids, ids, sorter=order), 0, len(order) - 1)]
    if len(ids) and not np.array_equal(img_ids[pos], ids):
        raise RunDirectoryError(f"{run_dir}: features name images missing from images.parquet")
    gen_codes, gen_names = _codes(im["generator"])
    pts = Points(
        id=ids,
        x=f["x"],
        y=f["y"],
        label=im["label"].to_numpy(np.int8)[pos],
        p_fake=f["p_fake"],
        pred=f["pred"],
        generator=gen_codes[pos],
        generators=gen_names,
        part=f["part"],
        row=f["row"],
        dims=f.pop("stack"),  # (n, 16), read straight into one array
    )
    for c in [c for c in f if c not in ("id", "x", "y", "p_fake", "pred", "part", "row")]:
        del f[c]  # logit: not shown; the rest is shared with the points
    return pts, run


@dataclass(frozen=True)
class Filters:
    labels: tuple[int, ...] | None = None  # keep these labels; None keeps all
    generators: tuple[str, ...] | None = None
    predicted: tuple[int, ...] | None = None
    misclassified: bool | None = None  # True: errors only; False: correct only
    score_range: tuple[float, float] = (0.0, 1.0)  # p(fake) bounds, inclusive


def _isin(column: np.ndarray, values) -> np.ndarray:
    """``np.isin`` for the small integer codes of a column (label, prediction, generator):
    through a lookup table over the code's whole range (np.isin sorted 10 M values: 0.4 s)."""
    if column.dtype.kind not in "iu" or column.dtype.itemsize > 2:
        return np.isin(column, values)
    unsigned = column.view(np.dtype(f"u{column.dtype.itemsize}"))
    table = np.zeros(1 << (8 * column.dtype.itemsize), bool)
    codes = np.asarray(list(values), np.int64)
    info = np.iinfo(column.dtype)
    codes = codes[(codes >= info.min) & (codes <= info.max)]
    table[codes.astype(column.dtype).view(unsigned.dtype)] = True
    return table[unsigned]


def filter_mask(pts: Points, f: Filters) -> np.ndarray:
    """Boolean mask of the points that pass every filter."""
    lo, hi = f.score_range
    if not 0.0 <= lo <= hi <= 1.0:
        raise ValueError(f"score_range must satisfy 0 <= lo <= hi <= 1, got {f.score_range}")
    mask = (pts.p_fake >= lo) if lo > 0 else np.ones(len(pts), bool)
    if hi < 1:
        mask &= pts.p_fake <= hi
    if f.labels is not None:
        mask &= _isin(pts.label, f.labels)
    if f.predicted is not None:
        mask &= _isin(pts.pred, f.predicted)
    if f.generators is not None:
        unknown = set(f.generators) - set(pts.generators)
        if unknown:
            raise ValueError(f"unknown generators {sorted(unknown)}; known: {pts.generators}")
        codes = [pts.generators.index(g) for g in f.generators]
        mask &= _isin(pts.generator, codes)
    if f.misclassified is not None:
        mask &= pts.error == f.misclassified
    return mask


def box_select(pts: Points, x0: float, x1: float, y0: float, y1: float, mask=None) -> np.ndarray:
    """Row indices inside the box (edges included), restricted to ``mask``."""
    x0, x1 = sorted((x0, x1))
    y0, y1 = sorted((y0, y1))
    inside = (pts.x >= x0) & (pts.x <= x1) & (pts.y >= y0) & (pts.y <= y1)
    if mask is not None:
        inside &= mask
    return np.flatnonzero(inside)


def lasso_select(pts: Points, polygon: np.ndarray, mask=None) -> np.ndarray:
    """Row indices inside a closed polygon (k, 2), restricted to ``mask``."""
    from matplotlib.path import Path as PolyPath

    polygon = np.asarray(polygon, dtype=np.float64)
    if polygon.ndim != 2 or polygon.shape[1] != 2 or len(polygon) < 3:
        raise ValueError(f"a lasso needs at least 3 (x, y) vertices, got shape {polygon.shape}")
    (x0, y0), (x1, y1) = polygon.min(axis=0), polygon.max(axis=0)
    cand = box_select(pts, x0, x1, y0, y1, mask)  # cheap pre-filter by bounding box
    xy = np.column_stack([pts.x[cand], pts.y[cand]])
    return cand[PolyPath(polygon).contains_points(xy)]


@dataclass
class CellStats:
    """Statistics of an nx-by-ny grid over a viewport; arrays of shape (ny, nx)."""

    viewport: tuple[float, float, float, float]  # x0, x1, y0, y1
    count: np.ndarray
    n_fake: np.ndarray
    mean_p_fake: np.ndarray  # NaN where empty
    error_rate: np.ndarray  # NaN where empty
    representative: np.ndarray  # row index of a representative image, -1 where empty
    members: list = field(default_factory=list)  # per cell (row-major): sampled row indices

    @property
    def fake_share(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.count > 0, self.n_fake / np.maximum(self.count, 1), np.nan)


def cell_stats(
    pts: Points,
    viewport: tuple[float, float, float, float],
    nx: int,
    ny: int,
    mask: np.ndarray | None = None,
    per_cell: int = 16,
    seed: int = 0,
) -> CellStats:
    """Aggregate the visible points into an nx-by-ny grid of cells.

    Counts, fake counts, mean p(fake) and error rate are exact. Each cell's representative is the
    sampled member whose p(fake) is closest to the cell's mean (a typical, not extreme, image), from
    a random sample of at most ``per_cell`` members per cell, which ``members`` also returns for
    the cell's mean relevance pattern."""
    if nx < 1 or ny < 1:
        raise ValueError(f"grid must be at least 1x1, got {nx}x{ny}")
    x0, x1, y0, y1 = viewport
    if not (x1 > x0 and y1 > y0):
        raise ValueError(f"viewport must have x1 > x0 and y1 > y0, got {viewport}")
    # one compiled pass over the points, sample included (numpy's masks, bincounts and sort took
    # 70 ms at 1 M points and about 0.9 s at 10 M)
    count, fake, psum, errs, members = bin_cells(pts, viewport, nx, ny, mask, LABEL_FAKE,
                                                 per_cell, seed)  # fmt: skip
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.where(count > 0, psum / np.maximum(count, 1), np.nan)
        err = np.where(count > 0, errs / np.maximum(count, 1), np.nan)
    rep = np.full(nx * ny, -1, dtype=np.int64)
    for c, m in enumerate(members):
        if len(m):
            rep[c] = m[np.argmin(np.abs(pts.p_fake[m] - mean_p[c]))]
    shape = (ny, nx)
    return CellStats(
        viewport=(x0, x1, y0, y1),
        count=count.reshape(shape),
        n_fake=fake.reshape(shape).astype(np.int64),
        mean_p_fake=mean_p.reshape(shape),
        error_rate=err.reshape(shape),
        representative=rep.reshape(shape),
        members=members,
    )


def channel_maps(run, parts, rows, channel: int = 0, method: str | None = None) -> np.ndarray:
    """Maps (n, gh, gw) of one channel (MAP_NAMES index) for (part, row) pairs. The fake channel
    (0) comes from explanation ``method`` (one of ``run.relevance.methods``; None: the run's
    own); every other channel is the run's own."""
    if channel == 0:
        return run.relevance.fake_maps(parts, rows, method)
    return run.relevance.take(parts, rows, channel)


def mean_maps(
    run, pts: Points, rows: np.ndarray, channel: int = 0, method: str | None = None
) -> np.ndarray:
    """Mean relevance map (gh, gw) of ``rows`` for one map channel (0: fake, by ``method``);
    zeros if empty."""
    gh, gw = run.relevance.map_shape[1:]
    if len(rows) == 0:
        return np.zeros((gh, gw), np.float32)
    return channel_maps(run, pts.part[rows], pts.row[rows], channel, method).mean(axis=0)


def cell_patterns(run, pts: Points, stats: CellStats, channel: int = 0, method: str | None = None):
    """Each cell's mean relevance map over its sampled members, (n_cells, gh, gw), and its
    coherence: the mean cosine similarity of the members' maps to that mean (1 = all members
    share one pattern, ~0 = unrelated maps; NaN for empty cells). The fake channel (0) comes
    from explanation ``method`` (None: the run's own)."""
    gh, gw = run.relevance.map_shape[1:]
    n = len(stats.members)
    means = np.zeros((n, gh, gw), np.float32)
    coherence = np.full(n, np.nan, np.float32)
    sizes = np.array([len(m) for m in stats.members])
    if sizes.sum() == 0:
        return means, coherence
    rows = np.concatenate(stats.members)
    maps = channel_maps(run, pts.part[rows], pts.row[rows], channel, method)
    maps = maps.reshape(len(rows), -1)  # (n, gh * gw)
    owner = np.repeat(np.arange(n), sizes)
    sums = np.zeros((n, gh * gw), np.float64)
    np.add.at(sums, owner, maps)
    mean = sums / np.maximum(sizes, 1)[:, None]
    unit = maps / np.maximum(np.linalg.norm(maps, axis=1, keepdims=True), 1e-12)
    mean_unit = mean / np.maximum(np.linalg.norm(mean, axis=1, keepdims=True), 1e-12)
    cos = (unit * mean_unit[owner]).sum(axis=1)
    csum = np.bincount(owner, weights=cos, minlength=n)
    filled = sizes > 0
    coherence[filled] = csum[filled] / sizes[filled]
    means[:] = mean.reshape(n, gh, gw)
    return means, coherence


def export_manifest(pts: Points, run, rows: np.ndarray, path: str | Path) -> Path:
    """Write the selected rows as a manifest (CSV or Parquet, by suffix) that `asap run` reads."""
    path = Path(path)
    import pandas as pd

    ids = pts.id[rows]
    # the explorer opens runs lean (no path/split columns in memory): read them for these rows
    images = pd.read_parquet(
        run.paths.images, columns=["id", "path", "label", "generator", "split"]
    )
    table = images.set_index("id").loc[ids].reset_index()
    table["p_fake"] = pts.p_fake[rows]
    if path.suffix.lower() == ".parquet":
        table.to_parquet(path, index=False)
    elif path.suffix.lower() == ".csv":
        table.to_csv(path, index=False)
    else:
        raise ValueError(f"export path must end in .csv or .parquet, got {path.name}")
    return path
