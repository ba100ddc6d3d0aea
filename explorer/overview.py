"""The representation overview: the 2-D layout rasterised by Datashader on the server, the
cell-glyph layer, and on top a layer for the selection (or the highlighted pattern's images) that
dims every other point and rings an image clicked in a view, composited into one frame of a Bokeh
figure. Box, lasso and tap selections write to the DataStore; hovering a point shows its card."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import datashader as ds
import datashader.transfer_functions as tf
import numpy as np
import panel as pn
import param

from . import kernels
from .datastore import DataStore
from .render import ByteBoundedCache, glyph_raster, overlay
from .store import cell_patterns, cell_stats

CATEGORY_COLORS = {
    "label": {"real": "#3b4cc0", "fake": "#b40426"},
    "error": {"correct": "#9e9e9e", "error": "#ff7f00"},
}
REAL_GREY = "#a0a0a0"  # reals in the colouring by generator
P_FAKE_COLORS = ["#3b4cc0", "#dddddd", "#b40426"]  # p(fake) 0 -> 0.5 -> 1
PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf"]
DEFAULT_SIZE = (900, 600)
DIM_VEIL = (255, 255, 255, 170)  # RGBA over the points outside a selection
LOCATED_RING = (255, 0, 170, 255)  # the ring around an image clicked in a view
HOVER_MAX = 5000  # points in view up to which each shows its card on hover
HOVER_THUMB = 96
# Bokeh keeps the frame's size in the page (inner_width and inner_height are set without a change
# event), so the page reports it in the figure's tags: at once, and whenever it changes; the
# server draws each frame at the size it is shown
SIZE_JS = """
const report = () => {
  const w = plot.inner_width, h = plot.inner_height
  if (w > 0 && h > 0 && (plot.tags[0] !== w || plot.tags[1] !== h)) plot.tags = [w, h]
}
report()
let n = 0
const fast = setInterval(() => { report(); if (++n > 30) clearInterval(fast) }, 50)
setInterval(report, 500)
"""
_BLANK = {"image": [np.zeros((1, 1), np.uint32)], "x": [0.0], "y": [0.0], "dw": [1e-9],
          "dh": [1e-9]}  # fmt: skip
LAYER_CACHE_BYTES = 192 * 2**20  # points and glyph layers shared by the sessions of a process
_LAYERS = ByteBoundedCache(LAYER_CACHE_BYTES)
_DRAW_POOL: tuple[int, ThreadPoolExecutor] | None = None  # (process id, pool)


def draw_pool() -> ThreadPoolExecutor:
    """This process's pool of layer threads, made on first use: `asap serve --procs N` forks
    after the warm-up drew layers, and a forked process has none of its parent's threads."""
    global _DRAW_POOL
    import os

    if _DRAW_POOL is None or _DRAW_POOL[0] != os.getpid():
        _DRAW_POOL = (os.getpid(), ThreadPoolExecutor(2, thread_name_prefix="asap-layer"))
    return _DRAW_POOL[1]


def glyph_key() -> str:
    """What a cell glyph's marks mean (README, "Cell glyphs"), as HTML for under the overview."""
    from matplotlib import colormaps

    cw = colormaps["coolwarm"]
    hexes = ["#{:02x}{:02x}{:02x}".format(*(int(255 * c) for c in cw(v)[:3])) for v in (0, 0.5, 1)]
    frame = "".join(f"<span style='border:2px solid {h};padding:0 3px;margin-right:2px'>"
                    f"{t}</span>" for h, t in zip(hexes, ("real", "mixed", "fake")))  # fmt: skip
    return (
        "<div class='asap-glyph-key' style='font-size:11px;line-height:1.5'><b>Cell glyph</b> "
        "(one per cell of the grid, for the images in it): "
        f"frame colour = mean p(fake) {frame}; frame width = error rate (thicker = more "
        "misclassified); left tile = the cell's most typical image with its fake map; right tile "
        "= the cell's mean relevance pattern, more opaque the more its images agree; bar = "
        "<span style='color:#3b4cc0'>real</span> : <span style='color:#b40426'>fake</span> share, "
        "its length growing with the log of the count printed after it.</div>"
    )


def _rgba(img) -> np.ndarray:
    """A shaded datashader image -> (h, w, 4) uint8 RGBA, row 0 at the top."""
    arr = np.asarray(img.data)
    return np.flipud(arr.view(np.uint8).reshape(*arr.shape, 4))


def _hex(color: str) -> tuple[int, int, int]:
    return tuple(int(color.lstrip("#")[i : i + 2], 16) for i in (0, 2, 4))


def _image(rgba: np.ndarray, agg) -> tf.Image:
    """(h, w, 4) uint8 (row 0 = the agg's first row) -> a datashader Image on the agg's grid."""
    data = np.ascontiguousarray(rgba).view(np.uint32).reshape(rgba.shape[:2])
    return tf.Image(data, dims=["y", "x"], coords={"y": agg.coords["y"], "x": agg.coords["x"]})


def shade_categories(agg, colors: list[str], min_alpha: int = 60) -> tf.Image:
    """Datashader's categorical shading (``how="eq_hist"``) in a few numpy steps, only over the
    pixels that hold points (``tf.shade`` took 90 ms for a 600x800 frame of two categories):
    each pixel's colour is the mean of its points' category colours; its opacity grows from
    ``min_alpha`` to 255 with the rank of its count among the non-empty pixels (histogram
    equalisation, so sparse and dense regions both show)."""
    counts = np.asarray(agg.data)
    h, w, k = counts.shape
    rgba, total = kernels.category_colours(
        counts.reshape(-1, k), np.array([_hex(x) for x in colors], np.float32)
    )
    nz = np.flatnonzero(total)
    if len(nz):
        tot = total[nz]
        top = int(tot.max())
        if top <= 1 << 22:  # integer counts: a histogram of them gives each its rank
            cdf = np.cumsum(np.bincount(tot, minlength=top + 1))[tot]
            low = np.count_nonzero(tot == tot.min())
        else:
            uniq, inv, n = np.unique(tot, return_inverse=True, return_counts=True)
            cdf, low = np.cumsum(n)[inv], n[0]
        span = max(len(tot) - low, 1)
        frac = np.clip((cdf - low) / span, 0, 1) if top > tot.min() else np.ones(len(tot))
        rgba[nz, 3] = np.rint(min_alpha + (255 - min_alpha) * frac)
    return _image(rgba.reshape(h, w, 4), agg)


def shade_mean(agg, colors: list[str], span=(0.0, 1.0)) -> tf.Image:
    """A mean aggregate (NaN where empty) through a linear colour map of ``colors`` over
    ``span``; opaque where there are points."""
    v = np.asarray(agg.data, np.float32)
    h, w = v.shape
    ok = np.flatnonzero(np.isfinite(v.ravel()))
    rgba = np.zeros((h * w, 4), np.uint8)
    if len(ok):
        t = np.clip((v.ravel()[ok] - span[0]) / (span[1] - span[0]), 0, 1) * (len(colors) - 1)
        stops = np.array([_hex(c) for c in colors], np.float32)
        i = np.minimum(t.astype(np.int64), len(colors) - 2)
        f = (t - i)[:, None]
        rgba[ok, :3] = np.rint(stops[i] * (1 - f) + stops[i + 1] * f)
        rgba[ok, 3] = 255
    return _image(rgba.reshape(h, w, 4), agg)


def dynspread(img: np.ndarray, threshold: float = 0.8, max_px: int = 4, min_px: int = 0):
    """Datashader's ``dynspread`` in numpy (its numba kernels took 6 s to compile on the first
    frame that needed them): grow every drawn pixel of a (h, w) uint32 RGBA image into a disc of
    radius px, px up to ``max_px`` while at most ``threshold`` of the drawn pixels have another
    within 2 px: sparse points get bigger, dense ones stay sharp. Where discs overlap, the more
    opaque pixel wins. ``min_px``: spread at least this much (datashader has no such floor)."""
    h, w = img.shape
    # the radius: one compiled pass per radius tried (kernels.spread_radius)
    px = max(kernels.spread_radius(np.ascontiguousarray(img), float(threshold), int(max_px)),
             min(min_px, max_px))  # fmt: skip
    if px == 0:
        return img
    ys, xs = np.nonzero(img >> 24)
    n = len(ys)
    if n == 0:
        return img
    d = np.arange(-px, px + 1)
    dy, dx = (a.ravel() for a in np.meshgrid(d, d, indexing="ij"))
    disc = dy**2 + dx**2 <= (px + 0.5) ** 2
    dy, dx = dy[disc], dx[disc]
    pw = w + 2 * px
    out = np.zeros((h + 2 * px, pw), np.uint32)
    if n * len(dy) * 32 < h * w * len(dy):  # few points: write each disc
        at = ((ys + px) * pw + xs + px)[None, :] + (dy * pw + dx)[:, None]
        np.maximum.at(out.ravel(), at.ravel(), np.tile(img[ys, xs], len(dy)))
    else:  # many: one shifted copy of the image per offset
        for oy, ox in zip(dy, dx):  # alpha is the top byte: the maximum is the more opaque
            view = out[px + oy : px + oy + h, px + ox : px + ox + w]
            np.maximum(view, img, out=view)
    return out[px : px + h, px : px + w]


def composite(layers: list[np.ndarray], background=(255, 255, 255)) -> np.ndarray:
    """Straight-alpha RGBA layers (h, w, 4), bottom first, drawn over an opaque background: one
    opaque (h, w, 4) uint8 image, so that the page receives one frame per change. Integer
    arithmetic, one compiled pass over the pixels (``kernels.over``)."""
    return kernels.over(layers, background)


class OverviewView(pn.viewable.Viewer):
    """Datashader overview with cell glyphs; selection tools feed the DataStore.

    A plain Bokeh figure, not a HoloViews plot: building one per browser session costs a few
    milliseconds instead of about two seconds of the server's one loop (issue 11), and every change
    sends one composited frame. Each layer (points, cell glyphs, selection) is cached with what it
    depends on, so that a colour change never recomputes the glyphs and a selection never
    re-aggregates the points. A change draws at once; the tab on screen follows on the next tick."""

    store = param.ClassSelector(class_=DataStore, constant=True)
    thumb_url = param.String(default=None, allow_None=True, doc="server route of thumbnails by id")

    def __init__(self, store: DataStore, **params):
        super().__init__(store=store, **params)
        p = store.points
        pad_x = max(float(p.x.max() - p.x.min()) * 0.03, 1e-3) if len(p) else 1.0
        pad_y = max(float(p.y.max() - p.y.min()) * 0.03, 1e-3) if len(p) else 1.0
        self.full_x = (float(p.x.min()) - pad_x, float(p.x.max()) + pad_x) if len(p) else (0, 1)
        self.full_y = (float(p.y.min()) - pad_y, float(p.y.max()) + pad_y) if len(p) else (0, 1)
        self._filtered = (None, None)  # (filter_version, DataFrame)
        self._layers: dict[str, tuple] = {}  # name -> (inputs, RGBA)
        self._fig = None
        self._doc = None
        self.frames = 0  # frames sent to the page (tests count them)

    # ----- helpers ------------------------------------------------------------------------------
    def _ranges(self, x_range, y_range):
        x_range = tuple(x_range) if x_range else tuple(self.store.x_range or self.full_x)
        y_range = tuple(y_range) if y_range else tuple(self.store.y_range or self.full_y)
        return x_range, y_range

    def _canvas(self, x_range, y_range, width, height) -> ds.Canvas:
        w, h = int(width or DEFAULT_SIZE[0]), int(height or DEFAULT_SIZE[1])
        return ds.Canvas(plot_width=max(w, 50), plot_height=max(h, 50),
                         x_range=x_range, y_range=y_range)  # fmt: skip

    def filtered_frame(self):
        version = self.store.filter_version
        if self._filtered[0] != version:
            mask = self.store.mask
            frame = self.store.frame if mask.all() else self.store.frame[mask]  # no copy if all
            self._filtered = (version, frame)
        return self._filtered[1]

    # ----- layers: (h, w, 4) uint8 RGBA, row 0 at the top ----------------------------------------
    def points_layer(self, x_range, y_range, width, height, color_by) -> np.ndarray:
        x_range, y_range = self._ranges(x_range, y_range)
        cvs = self._canvas(x_range, y_range, width, height)
        df = self.filtered_frame()
        if color_by == "p_fake":
            agg = cvs.points(df, "x", "y", ds.mean("p_fake"))
            img = shade_mean(agg, P_FAKE_COLORS)
        else:
            agg = cvs.points(df, "x", "y", ds.count_cat(color_by))
            key = self.color_key(color_by)
            cats = list(agg.coords[color_by].values)
            img = shade_categories(agg, [key.get(c, REAL_GREY) for c in cats])
        data = np.asarray(img.data)
        # a view where the points cover under 2% of the pixels draws each at least 3 px wide:
        # a thin arc of points (neighbours within 2 px, so datashader's rule keeps 1 px) stayed
        # a faint 1-px trace
        sparse = np.count_nonzero(data >> 24) < data.size * 0.02
        data = dynspread(data, threshold=0.8, max_px=4, min_px=1 if sparse else 0)
        return np.flipud(data.view(np.uint8).reshape(*data.shape, 4))

    def selection_layer(self, x_range, y_range, width, height, pattern, located=None):
        """The selection (or the highlighted pattern's images) drawn dark over a white veil that
        dims every other point, and a ring around the image ``located`` (clicked in a view);
        fully transparent when none of these is set. Drawn in numpy: a selection is a set of
        rows, not a data frame to aggregate."""
        x_range, y_range = self._ranges(x_range, y_range)
        w, h = max(int(width or DEFAULT_SIZE[0]), 50), max(int(height or DEFAULT_SIZE[1]), 50)
        store = self.store
        if pattern is not None and store.patterns is not None:
            mem = store.patterns.members
            ids = mem.loc[mem["pattern"] == pattern, "id"].unique()
            rows = np.flatnonzero(np.isin(store.points.id, ids) & store.mask)
            color = "#00c853"
        elif store.selection_kind != "none":
            rows, color = store.selected, "#111111"
        else:
            rows, color = np.zeros(0, np.int64), "#111111"
        arr = np.zeros((h, w, 4), np.uint8)
        if store.selection_kind != "none" or pattern is not None:
            # a selection (or a highlighted pattern) dims the rest: a white veil over every
            # point that is not in it, the chosen points drawn on top, 3 px wide
            arr[:] = DIM_VEIL
            p = store.points  # one compiled pass (4 M selected points: 0.7 s in numpy)
            on = kernels.stamp(p.x, p.y, rows, (*x_range, *y_range), w, h)
            arr[on] = (*_hex(color), 255)
        if located is not None:  # an image clicked in a view: a ring around its point
            iy, ix = self._pixels(np.flatnonzero(store.points.id == located)[:1], x_range,
                                  y_range, w, h)  # fmt: skip
            if len(iy):
                yy, xx = np.ogrid[:h, :w]
                d2 = (yy - iy[0]) ** 2 + (xx - ix[0]) ** 2
                arr[(d2 > 6.5**2) & (d2 <= 9.5**2)] = LOCATED_RING
        return arr

    def _pixels(self, rows, x_range, y_range, w, h):
        """Pixel (row from the top, column) of each point of ``rows`` inside the viewport."""
        p = self.store.points
        (x0, x1), (y0, y1) = x_range, y_range
        x, y = p.x[rows], p.y[rows]
        ix = np.floor((x - x0) * (w / (x1 - x0))).astype(np.int64)
        iy = np.floor((y1 - y) * (h / (y1 - y0))).astype(np.int64)
        ix[x == x1], iy[y == y0] = w - 1, h - 1  # the far edges belong to the last pixel
        keep = (ix >= 0) & (ix < w) & (iy >= 0) & (iy < h)
        return iy[keep], ix[keep]

    def hover_data(self, x_range=None, y_range=None) -> dict:
        """The filtered points in view with what the hover card shows (id, label, generator,
        p(fake)), when at most HOVER_MAX are in view (zoom in for more)."""
        x_range, y_range = self._ranges(x_range, y_range)
        p, mask = self.store.points, self.store.mask
        (x0, x1), (y0, y1) = x_range, y_range
        inside = mask & (p.x >= x0) & (p.x <= x1) & (p.y >= y0) & (p.y <= y1)
        rows = np.flatnonzero(inside)
        if len(rows) > HOVER_MAX:
            rows = rows[:0]
        return {
            "x": p.x[rows],
            "y": p.y[rows],
            "id": p.id[rows],
            "label": np.array(["real", "fake"])[p.label[rows].astype(int)],
            "generator": np.asarray(p.generators, dtype=object)[p.generator[rows]],
            "p_fake": p.p_fake[rows],
        }

    def hover_tool(self, renderer):
        from bokeh.models import HoverTool

        image = (f"<img src='{self.thumb_url}@id' width='{HOVER_THUMB}' height='{HOVER_THUMB}' "
                 "style='display:block'>" if self.thumb_url else "")  # fmt: skip
        return HoverTool(
            renderers=[renderer],
            tooltips=f"<div style='font-size:11px'>{image}#@id · @label · @generator<br>"
            "p(fake) @p_fake{0.000}</div>",
            point_policy="snap_to_data",
        )

    def glyph_layer(self, x_range, y_range, width, height, grid, map_method=None) -> np.ndarray:
        x_range, y_range = self._ranges(x_range, y_range)
        w, h = int(width or DEFAULT_SIZE[0]), int(height or DEFAULT_SIZE[1])
        stats, thumbs, pats, coh = self.glyph_data(x_range, y_range, w, h, grid, map_method)
        return glyph_raster(stats, thumbs, pats, coh, w, h)

    def glyph_data(self, x_range, y_range, width, height, grid, map_method=None):
        """Cell statistics, representative thumbnails (with fake heat map), mean patterns and
        their coherence for the current viewport; what the glyph layer draws. The fake maps are
        by ``map_method`` (None: the run's own)."""
        store = self.store
        nx = int(grid)
        ny = max(1, int(round(grid * height / max(width, 1))))
        viewport = (*x_range, *y_range)
        stats = cell_stats(store.points, viewport, nx, ny, store.mask, per_cell=16)
        pats, coh = cell_patterns(store.run, store.points, stats, 0, map_method)
        reps = []  # (cell, thumbnail, row) of each readable representative
        for c, row in enumerate(stats.representative.ravel()):
            if row < 0:
                continue
            try:
                reps.append((c, store.images.thumbnail(int(store.points.id[row]), 96), row))
            except PermissionError:
                continue
        rows = np.array([row for _, _, row in reps], np.int64)
        part, prow = store.points.part[rows], store.points.row[rows]
        heats = store.run.relevance.fake_maps(part, prow, map_method)  # one read for all cells
        thumbs = {c: overlay(rgb, heat, 0.5) for (c, rgb, _), heat in zip(reps, heats)}
        return stats, thumbs, pats, coh

    # ----- the frame: the layers that changed, composited ----------------------------------------
    def view(self) -> tuple:
        """(x_range, y_range, width, height) the page shows now."""
        fig = self._fig
        if fig is None:
            x, y = self._ranges(None, None)
            return x, y, *DEFAULT_SIZE
        # the frame's size in pixels, as the page reports it (SIZE_JS)
        w, h = fig.tags if len(fig.tags) == 2 else DEFAULT_SIZE
        return ((fig.x_range.start, fig.x_range.end), (fig.y_range.start, fig.y_range.end),
                int(w), int(h))  # fmt: skip

    def _cached(self, name: str, inputs: tuple, shared: bool) -> np.ndarray | None:
        """Layer ``name`` for ``inputs`` if already drawn: this session's last one, or for a
        ``shared`` layer (a function of the run and the inputs only) one drawn by another session
        of this process (most sessions open on the same view)."""
        cached = self._layers.get(name)
        if cached is not None and cached[0] == inputs:
            return cached[1]
        arr = _LAYERS.get((self.store.run_dir, name, inputs)) if shared else None
        if arr is not None:
            self._layers[name] = (inputs, arr)
        return arr

    def _keep(self, name: str, inputs: tuple, shared: bool, arr: np.ndarray) -> np.ndarray:
        if shared:
            arr.setflags(write=False)
            _LAYERS.put((self.store.run_dir, name, inputs), arr)
        self._layers[name] = (inputs, arr)
        return arr

    def layers(self, specs: list[tuple]) -> list[np.ndarray]:
        """The layers of ``specs`` ((name, inputs, draw, shared), bottom first), each redrawn only
        if its inputs changed. Layers to redraw are drawn at the same time, one on this thread
        and the others on a small pool: Datashader's kernels and most numpy steps release the
        GIL, so a zoom that redraws points and glyphs waits for the slower of the two, not for
        both (1 M points: about 165 ms -> 120 ms here). Every shared cache is read and written
        on this thread only."""
        out = [self._cached(name, inputs, shared) for name, inputs, _, shared in specs]
        todo = [i for i, arr in enumerate(out) if arr is None]
        if len(todo) > 1:
            self.filtered_frame()  # filled here, not by two workers at once
            later = [(i, draw_pool().submit(specs[i][2])) for i in todo[1:]]
            out[todo[0]] = specs[todo[0]][2]()
            for i, future in later:
                out[i] = future.result()
        elif todo:
            out[todo[0]] = specs[todo[0]][2]()
        for i in todo:
            name, inputs, _, shared = specs[i]
            self._keep(name, inputs, shared, out[i])
        return out

    def frame(self) -> np.ndarray:
        """The overview as the page shows it: points, cell glyphs, selection over white; each
        layer redrawn only if what it depends on changed."""
        s = self.store
        xr, yr, w, h = self.view()
        at = (xr, yr, w, h, s.filters)
        specs = [("points", (*at, s.color_by),
                  lambda: self.points_layer(xr, yr, w, h, s.color_by), True)]  # fmt: skip
        if s.show_glyphs:
            glyphs = lambda: self.glyph_layer(xr, yr, w, h, s.grid, s.map_method)  # noqa: E731
            specs.append(("glyphs", (*at, s.grid, s.map_method), glyphs, True))
        if s.pattern is not None or s.selection_kind != "none" or s.located is not None:
            key = (*at, s.selection_version, s.pattern, s.located)
            specs.append(("selection", key, lambda: self.selection_layer(
                xr, yr, w, h, s.pattern, s.located), False))  # fmt: skip
        return composite(self.layers(specs))

    def _image_data(self) -> dict:
        (x0, x1), (y0, y1), _, _ = self.view()
        rgba = np.ascontiguousarray(np.flipud(self.frame()))  # Bokeh: row 0 at the bottom
        h, w = rgba.shape[:2]
        return {"image": [rgba.view(np.uint32).reshape(h, w)], "x": [x0], "y": [y0],
                "dw": [x1 - x0], "dh": [y1 - y0]}  # fmt: skip

    def redraw(self, *_) -> None:
        """Send a new frame (and the hover points) to the page. At once, in the event that asked
        for it: the other views defer their work to the next tick (``views.later``), so that the
        page gets the overview's frame first."""
        if self._fig is not None:
            self._flush()

    def _flush(self) -> None:
        self._image.data = self._image_data()
        self.frames += 1
        s = self.store
        key = (s.filter_version, self.view()[:2] if len(s.points) > HOVER_MAX else None)
        if key != self._hover_key:  # a small run sends its points once per filter
            self._hover_key = key
            self._hover.data = self.hover_data(*self.view()[:2])

    # ----- assembly -----------------------------------------------------------------------------
    def figure(self):
        """The Bokeh figure of one session, wired to the DataStore."""
        from bokeh.events import RangesUpdate, SelectionGeometry
        from bokeh.models import (
            BoxSelectTool,
            ColumnDataSource,
            CustomJS,
            LassoSelectTool,
            PanTool,
            Range1d,
            ResetTool,
            TapTool,
            WheelZoomTool,
        )
        from bokeh.plotting import figure

        s = self.store
        x0, y0 = self._ranges(None, None)
        fig = figure(x_range=Range1d(*x0), y_range=Range1d(*y0), tools=[],
                     sizing_mode="stretch_both", min_height=480, min_border=0,
                     toolbar_location="right", output_backend="canvas")  # fmt: skip
        fig.axis.visible = False
        fig.grid.visible = False
        fig.outline_line_color = None
        self._fig, self._doc = fig, pn.state.curdoc
        served = self._doc is not None and self._doc.session_context is not None
        # served: the first frame is drawn when the page reports the figure's size (SIZE_JS), not
        # once at a default size and again at the real one
        self._image = ColumnDataSource(_BLANK if served and not fig.tags else self._image_data())
        fig.image_rgba(image="image", x="x", y="y", dw="dw", dh="dh", source=self._image)
        self._hover = ColumnDataSource(self.hover_data(x0, y0))
        self._hover_key = (s.filter_version, (x0, y0) if len(s.points) > HOVER_MAX else None)
        hover = fig.scatter("x", "y", source=self._hover, size=9, alpha=0)
        # the selection tools report their geometry only (SelectionGeometry); they select on an
        # empty renderer, so no selection state travels back and forth with the page
        target = fig.scatter(x=[], y=[], alpha=0)
        pan, wheel = PanTool(), WheelZoomTool()
        fig.add_tools(pan, wheel, BoxSelectTool(renderers=[target], continuous=False),
                      LassoSelectTool(renderers=[target], continuous=False),
                      TapTool(renderers=[target]), ResetTool(), self.hover_tool(hover))  # fmt: skip
        fig.toolbar.active_drag, fig.toolbar.active_scroll = pan, wheel
        # Bokeh reports the end of a wheel zoom after lod_timeout ms without a wheel event
        # (500 by default: half a second of every zoom)
        fig.lod_interval, fig.lod_timeout = 80, 80
        fig.toolbar.active_tap = None  # the Tap tool selects once chosen, not every click
        fig.on_event(RangesUpdate, self._on_ranges)
        fig.on_event(SelectionGeometry, self._on_select)
        fig.on_change("tags", lambda attr, old, new: self.redraw())
        if self._doc is not None:
            self._doc.js_on_event("document_ready", CustomJS(args={"plot": fig}, code=SIZE_JS))
        s.param.watch(self.redraw, ["filter_version", "color_by", "selection_version", "pattern",
                                    "show_glyphs", "grid", "map_method"])  # fmt: skip
        s.param.watch(self._follow_store, ["x_range", "y_range"])
        s.param.watch(self._on_located, ["located"])
        return fig

    def _on_ranges(self, event) -> None:
        if None in (event.x0, event.x1, event.y0, event.y1):
            return
        xr, yr = (event.x0, event.x1), (event.y0, event.y1)
        if (self.store.x_range, self.store.y_range) == (xr, yr):
            self.redraw()
        else:  # _follow_store redraws
            self.store.param.update(x_range=xr, y_range=yr)

    def _on_select(self, event) -> None:
        if not event.final:
            return
        g, s = event.geometry, self.store
        if g.get("type") == "rect":
            s.select_box(g["x0"], g["y0"], g["x1"], g["y1"])
        elif g.get("type") == "poly" and len(g.get("x", ())) > 2:
            s.select_lasso(np.column_stack([g["x"], g["y"]]))
        elif g.get("type") == "point":
            s.select_nearest(g["x"], g["y"])

    def _follow_store(self, *_) -> None:
        """A viewport set from outside (a link, or dropped as unshowable) moves the figure."""
        fig, (xr, yr) = self._fig, self._ranges(None, None)
        if fig is None:
            return
        if (fig.x_range.start, fig.x_range.end) != xr:
            fig.x_range.update(start=xr[0], end=xr[1])
        if (fig.y_range.start, fig.y_range.end) != yr:
            fig.y_range.update(start=yr[0], end=yr[1])
        self.redraw()

    def _on_located(self, *_) -> None:
        """Ring an image clicked in a view; if it is outside the viewport, pan to it first."""
        s, fig = self.store, self._fig
        row = np.flatnonzero(s.points.id == s.located)[:1] if s.located is not None else []
        if fig is None or len(row) == 0:
            return self.redraw()
        x, y = float(s.points.x[row[0]]), float(s.points.y[row[0]])
        (x0, x1), (y0, y1), _, _ = self.view()
        if x0 <= x <= x1 and y0 <= y <= y1:
            return self.redraw()
        hx, hy = (x1 - x0) / 2, (y1 - y0) / 2
        s.param.update(x_range=(x - hx, x + hx), y_range=(y - hy, y + hy))

    def color_key(self, color_by: str) -> dict:
        """Category -> colour for a categorical colouring (the generators get a palette; the reals,
        which have none, are grey)."""
        if color_by in CATEGORY_COLORS:
            return CATEGORY_COLORS[color_by]
        fakes = [g for g in self.store.points.generators if g != "real"]
        keys = {g: PALETTE[i % len(PALETTE)] for i, g in enumerate(fakes)}
        if "real" in self.store.points.generators:
            keys["real"] = REAL_GREY
        return keys

    def legend(self) -> str:
        if self.store.color_by == "p_fake":
            return (
                "<b>p(fake)</b> 0 <span style='display:inline-block;width:120px;height:10px;"
                "background:linear-gradient(90deg,#3b4cc0,#dddddd,#b40426)'></span> 1"
            )
        keys = self.color_key(self.store.color_by)
        return " ".join(
            f"<span style='color:{c};font-size:18px'>●</span>{k}" for k, c in keys.items()
        )

    def __panel__(self):
        legend = pn.pane.HTML(pn.bind(lambda _: self.legend(), self.store.param.color_by))
        key = pn.pane.HTML(glyph_key(), visible=self.store.param.show_glyphs,
                           sizing_mode="stretch_width")  # fmt: skip
        return pn.Column(
            pn.pane.Bokeh(self.figure(), sizing_mode="stretch_both", min_height=480),
            legend,
            key,
            sizing_mode="stretch_both",
        )
