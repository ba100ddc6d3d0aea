"""The representation overview: the 2-D layout rasterised by Datashader on the server, the
cell-glyph layer, and on top a layer for the selection (or the highlighted pattern's images) that
dims every other point and rings an image clicked in a view. Each layer is its
own DynamicMap with its own dependencies, so that a colour change never recomputes the glyphs and a
glyph setting never re-aggregates the points. Box, lasso and tap selections write to the
DataStore."""

from __future__ import annotations

import datashader as ds
import datashader.transfer_functions as tf
import holoviews as hv
import numpy as np
import panel as pn
import param
from holoviews import streams

from .datastore import DataStore
from .render import glyph_raster, overlay
from .store import cell_patterns, cell_stats

CATEGORY_COLORS = {
    "label": {"real": "#3b4cc0", "fake": "#b40426"},
    "error": {"correct": "#9e9e9e", "error": "#ff7f00"},
}
REAL_GREY = "#a0a0a0"  # reals in the colouring by generator
PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf"]
DEFAULT_SIZE = (900, 600)
DIM_VEIL = (255, 255, 255, 170)  # RGBA over the points outside a selection
LOCATED_RING = (255, 0, 170, 255)  # the ring around an image clicked in a view
HOVER_MAX = 5000  # points in view up to which each shows its card on hover
HOVER_THUMB = 96


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


def _rgb(img, x_range, y_range) -> hv.RGB:
    """A shaded datashader image -> hv.RGB over the given extent (row 0 at the top)."""
    arr = np.asarray(img.data)
    h, w = arr.shape
    rgba = np.flipud(arr.view(np.uint8).reshape(h, w, 4))
    (x0, x1), (y0, y1) = x_range, y_range
    return hv.RGB(rgba, bounds=(x0, y0, x1, y1), vdims=list("RGBA"))


class OverviewView(pn.viewable.Viewer):
    """Datashader overview with cell glyphs; selection tools feed the DataStore."""

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

    # ----- layers -------------------------------------------------------------------------------
    def points_layer(self, x_range, y_range, width, height, scale, filter_version, color_by):
        x_range, y_range = self._ranges(x_range, y_range)
        cvs = self._canvas(x_range, y_range, width, height)
        df = self.filtered_frame()
        if color_by == "p_fake":
            agg = cvs.points(df, "x", "y", ds.mean("p_fake"))
            img = tf.shade(agg, cmap=["#3b4cc0", "#dddddd", "#b40426"], span=(0, 1), how="linear")
        else:
            agg = cvs.points(df, "x", "y", ds.count_cat(color_by))
            img = tf.shade(agg, color_key=self.color_key(color_by), how="eq_hist", min_alpha=60)
        img = tf.dynspread(img, threshold=0.8, max_px=4)
        return _rgb(img, x_range, y_range)

    def selection_layer(self, x_range, y_range, width, height, scale, selection_version,
                        filter_version, pattern, located=None):  # fmt: skip
        x_range, y_range = self._ranges(x_range, y_range)
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
        cvs = self._canvas(x_range, y_range, width, height)
        agg = cvs.points(store.frame.iloc[rows], "x", "y", ds.count())
        img = tf.spread(tf.shade(agg, cmap=[color, color], how="linear", min_alpha=255), px=1)
        arr = np.asarray(img.data).view(np.uint8).reshape(*img.shape, 4).copy()
        if store.selection_kind != "none" or pattern is not None:
            # a selection (or a highlighted pattern) dims the rest: a white veil over every
            # point that is not in it, the chosen points drawn on top
            arr[arr[..., 3] == 0] = DIM_VEIL
        if located is not None:  # an image clicked in a view: a ring around its point
            at = np.flatnonzero(store.points.id == located)[:1]
            dot = tf.shade(cvs.points(store.frame.iloc[at], "x", "y", ds.count()),
                           cmap=["#000000", "#000000"], how="linear", min_alpha=255)  # fmt: skip

            def disc(px):
                return np.asarray(tf.spread(dot, px=px).data).view(np.uint8)[..., 3::4] > 0

            outer, inner = disc(9), disc(6)
            arr.reshape(-1, 4)[(outer & ~inner).ravel()] = LOCATED_RING
        return _rgb(img.copy(data=arr.view(np.uint32).reshape(img.shape)), x_range, y_range)

    def hover_layer(self, x_range=None, y_range=None, filter_version=0):
        """The filtered points in view as invisible markers that carry what the hover shows
        (id, label, generator, p(fake)), when at most HOVER_MAX are in view (zoom in for more)."""
        x_range, y_range = self._ranges(x_range, y_range)
        p, mask = self.store.points, self.store.mask
        (x0, x1), (y0, y1) = x_range, y_range
        inside = mask & (p.x >= x0) & (p.x <= x1) & (p.y >= y0) & (p.y <= y1)
        rows = np.flatnonzero(inside)
        if len(rows) > HOVER_MAX:
            rows = rows[:0]
        data = {
            "x": p.x[rows],
            "y": p.y[rows],
            "id": p.id[rows],
            "label": np.array(["real", "fake"])[p.label[rows].astype(int)],
            "generator": np.asarray(p.generators, dtype=object)[p.generator[rows]],
            "p_fake": p.p_fake[rows],
        }
        return hv.Points(data, ["x", "y"], ["id", "label", "generator", "p_fake"])

    def hover_tool(self):
        from bokeh.models import HoverTool

        image = (f"<img src='{self.thumb_url}@id' width='{HOVER_THUMB}' height='{HOVER_THUMB}' "
                 "style='display:block'>" if self.thumb_url else "")  # fmt: skip
        return HoverTool(
            tooltips=f"<div style='font-size:11px'>{image}#@id · @label · @generator<br>"
            "p(fake) @p_fake{0.000}</div>",
            point_policy="snap_to_data",
        )

    def glyph_layer(self, x_range, y_range, width, height, scale, filter_version, show_glyphs,
                    grid, map_method=None):  # fmt: skip
        x_range, y_range = self._ranges(x_range, y_range)
        w, h = int(width or DEFAULT_SIZE[0]), int(height or DEFAULT_SIZE[1])
        if not show_glyphs:
            return hv.RGB(np.zeros((2, 2, 4), np.uint8), bounds=(x_range[0], y_range[0],
                          x_range[1], y_range[1]), vdims=list("RGBA"))  # fmt: skip
        stats, thumbs, pats, coh = self.glyph_data(x_range, y_range, w, h, grid, map_method)
        raster = glyph_raster(stats, thumbs, pats, coh, w, h)
        (x0, x1), (y0, y1) = x_range, y_range
        return hv.RGB(raster, bounds=(x0, y0, x1, y1), vdims=list("RGBA"))

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

    # ----- assembly -----------------------------------------------------------------------------
    def plot(self):
        store = self.store
        x0, y0 = self._ranges(None, None)
        rng, size = streams.RangeXY(), streams.PlotSize()
        filt = streams.Params(store, ["filter_version", "color_by"])
        base = hv.DynamicMap(self.points_layer, streams=[rng, size, filt])
        sel = hv.DynamicMap(
            self.selection_layer,
            streams=[streams.RangeXY(), streams.PlotSize(),
                     streams.Params(store, ["selection_version", "filter_version", "pattern",
                                            "located"])],
        )  # fmt: skip
        glyphs = hv.DynamicMap(
            self.glyph_layer,
            streams=[streams.RangeXY(), streams.PlotSize(),
                     streams.Params(store, ["filter_version", "show_glyphs", "grid",
                                            "map_method"])],
        )  # fmt: skip
        # a run small enough to hover everywhere sends its points once per filter, not at every
        # zoom and pan
        follow = [streams.RangeXY()] if len(store.points) > HOVER_MAX else []
        hover = hv.DynamicMap(
            self.hover_layer, streams=[*follow, streams.Params(store, ["filter_version"])]
        ).opts(
            hv.opts.Points(
                size=9,
                alpha=0,
                selection_alpha=0,
                nonselection_alpha=0,
                tools=[self.hover_tool()],
                default_tools=[],
            )  # fmt: skip
        )
        box = streams.BoundsXY(source=base)
        lasso = streams.Lasso(source=base)
        tap = streams.Tap(source=base)
        box.add_subscriber(lambda bounds: bounds and store.select_box(*bounds))
        lasso.add_subscriber(
            lambda geometry: geometry is not None and len(geometry) > 2
            and store.select_lasso(geometry)
        )  # fmt: skip
        tap.add_subscriber(lambda x, y: x is not None and store.select_nearest(x, y))
        rng.add_subscriber(self._remember_viewport)
        return (base * glyphs * sel * hover).opts(  # the selection, its veil and ring on top
            hv.opts.RGB(
                tools=["box_select", "lasso_select", "tap"],
                active_tools=["wheel_zoom", "pan"],
                responsive=True,
                min_height=480,
                xlim=x0,
                ylim=y0,
                xaxis=None,
                yaxis=None,
            )
        )

    def _remember_viewport(self, x_range, y_range):
        if x_range and y_range:
            self.store.param.update(x_range=tuple(x_range), y_range=tuple(y_range))

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
            pn.pane.HoloViews(self.plot(), sizing_mode="stretch_both", min_height=480),
            legend,
            key,
            sizing_mode="stretch_both",
        )
