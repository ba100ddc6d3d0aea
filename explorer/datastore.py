"""The explorer's per-session state: one run's points, the filters, the colouring, the viewport and
the selection, as ``param`` parameters that every view watches (Panel's DataStore pattern). Holds
no rendering code; the views in ``overview.py`` and ``views.py`` only read it."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pandas as pd
import panel as pn
import param

from pipeline.schema import LABEL_NAMES, MAP_NAMES

from .patterns import DIMENSION_MAPS_METHOD, load_faithfulness, load_patterns
from .render import ImageSource
from .store import Filters, box_select, channel_maps, filter_mask, lasso_select, load_points

COLOR_BY = ["label", "p_fake", "generator", "error"]
SORT_BY = ["p(fake) high first", "p(fake) low first", "label", "generator", "errors first"]
CMAPS = ["inferno", "magma", "viridis", "plasma", "turbo", "gray"]
MISCLASSIFIED = ["all", "errors only", "correct only"]
MAP_SCALES = ["each image", "shared"]
SHARED_SCALE_SAMPLE = 512  # images whose map maxima set a run's shared heat-map scale
SHARED_SCALE_QUANTILE = 0.99


@dataclass(frozen=True)
class SharedRun:
    """What every session of one run reads and nobody writes: loaded once per process."""

    points: object  # explorer.store.Points
    run: object  # pipeline.schema.Run (lean)
    frame: pd.DataFrame  # the overview's columns
    dims: np.ndarray  # (n, 16) distilled values, row-aligned with points
    images: ImageSource
    patterns: object  # explorer.patterns.PatternTables or None


@lru_cache(maxsize=4)
def shared_run(run_dir: str, image_roots: tuple[str, ...] = ()) -> SharedRun:
    points, run = load_points(run_dir)
    run.relevance.random_access()  # the explorer reads maps a few scattered rows at a time
    dims = points.dims
    frame = pd.DataFrame(
        {
            "x": points.x,
            "y": points.y,
            "label": pd.Categorical.from_codes(points.label, [LABEL_NAMES[0], LABEL_NAMES[1]]),
            "p_fake": points.p_fake,
            "generator": pd.Categorical.from_codes(points.generator, list(points.generators)),
            "error": pd.Categorical.from_codes(points.error.astype(np.int8), ["correct", "error"]),
        }
    )
    images = ImageSource(run.images, run.source, image_roots)
    return SharedRun(points, run, frame, dims, images, load_patterns(run))


_VMAX: dict = {}  # (run_dir, channel, method) -> shared scale; the maps of a run never change


def shared_vmax(run_dir: str, points, run, channel: int, method: str | None) -> float:
    """A run-wide scale for one map channel: the SHARED_SCALE_QUANTILE quantile of the maxima of
    SHARED_SCALE_SAMPLE images drawn with a fixed seed (the same for every session), so that a
    map is hot only where it is more relevant than the run's maps typically get."""
    key = (run_dir, channel, method)
    if key not in _VMAX:
        n = len(points)
        rows = np.random.default_rng(0).choice(n, min(n, SHARED_SCALE_SAMPLE), replace=False)
        rows.sort()
        maps = channel_maps(run, points.part[rows], points.row[rows], channel, method)
        peaks = np.nan_to_num(maps.reshape(len(rows), -1), nan=0.0).max(axis=1, initial=0.0)
        top = float(np.quantile(peaks, SHARED_SCALE_QUANTILE)) if len(peaks) else 0.0
        _VMAX[key] = top if top > 0 else 1.0
    return _VMAX[key]


class DataStore(pn.viewable.Viewer):
    """Data, filters and selection of one run, for one browser session."""

    labels = param.ListSelector(default=["real", "fake"], objects=["real", "fake"])
    generators = param.ListSelector(default=[], objects=[], doc="generators shown")
    predicted = param.ListSelector(default=["real", "fake"], objects=["real", "fake"])
    misclassified = param.Selector(default="all", objects=MISCLASSIFIED)
    score_range = param.Range(default=(0.0, 1.0), bounds=(0.0, 1.0), doc="p(fake) range")
    color_by = param.Selector(default="label", objects=COLOR_BY, doc="overview colouring")
    map_name = param.Selector(default="fake", objects=MAP_NAMES, doc="relevance map shown")
    # the other maps (real, d00..d15) are always the run's own
    map_method = param.Selector(
        default=None, objects=[], doc="explanation method of the fake map shown (run's own first)"
    )
    cmap = param.Selector(default="inferno", objects=CMAPS, doc="relevance colour map")
    opacity = param.Number(default=0.6, bounds=(0.0, 1.0), step=0.05, doc="overlay opacity")
    map_scale = param.Selector(
        default=MAP_SCALES[0], objects=MAP_SCALES,
        doc="heat-map colour scale: each image to its own maximum (every image shows a hot spot), "
        "or one scale shared by all images of the run (hot = more relevance than most images)",
    )  # fmt: skip
    sort_by = param.Selector(default=SORT_BY[0], objects=SORT_BY)
    show_glyphs = param.Boolean(default=True, doc="draw cell glyphs over the overview")
    grid = param.Integer(default=5, bounds=(2, 12), doc="glyph cells across the view")
    x_range = param.Range(default=None, doc="overview viewport (kept in the URL)")
    y_range = param.Range(default=None)
    pattern = param.Integer(default=None, allow_None=True, doc="pattern highlighted")
    located = param.Integer(default=None, allow_None=True, precedence=-1,
                            doc="image id ringed in the overview (clicked in a view)")  # fmt: skip
    # the selection as its geometry, so that a shared link reselects the same images:
    # {"box": [x0, y0, x1, y1]}, {"lasso": [[x, y], ...]} or {"tap": image id}; None: no selection
    selection = param.Dict(default=None, allow_None=True, doc="selection geometry (in the URL)")
    # what a shared link asked for that could not be shown (out of range, unknown), said in words
    notices = param.List(default=[], precedence=-1)

    # derived; views depend on these counters rather than on arrays
    filter_version = param.Integer(default=0, precedence=-1)
    selection_version = param.Integer(default=0, precedence=-1)
    selection_kind = param.String(default="none", precedence=-1)

    def __init__(self, run_dir: str, image_roots: tuple[str, ...] = (), **params):
        shared = shared_run(str(run_dir), tuple(image_roots))
        self.points, self.run, self.frame = shared.points, shared.run, shared.frame
        self.dims, self.images, self.patterns = shared.dims, shared.images, shared.patterns
        # the fakes' generators: reals are chosen with the Label filter ("real" is no generator)
        gens = [g for g in self.points.generators if g != "real"]
        self.param.generators.objects = gens
        params.setdefault("generators", gens)
        methods = list(self.run.relevance.methods)  # the run's own method first
        self.param.map_method.objects = methods
        params.setdefault("map_method", methods[0])
        super().__init__(**params)
        self.run_dir = str(run_dir)
        # per session, keyed by the table's mtime: a reload after `asap patterns` shows it
        self.faithfulness = load_faithfulness(self.run)
        self.detector = self.run.detector  # does the detector beat chance? (pipeline.trust)
        self.mask = np.ones(len(self.points), bool)
        self._selection: np.ndarray | None = None
        self._own_geometry = False
        self._update_mask()
        if self.selection is not None:
            self._apply_selection()

    # ----- state from a link ---------------------------------------------------------------------
    def valid_range(self, axis: str, value) -> str | None:
        """Why a viewport range cannot be shown (None when it can): two finite numbers, low below
        high, neither a speck nor far beyond the data."""
        if value is None:
            return None
        coords = self.points.x if axis == "x" else self.points.y
        lo_d, hi_d = (float(coords.min()), float(coords.max())) if len(coords) else (0.0, 1.0)
        extent = max(hi_d - lo_d, 1e-9)
        try:
            lo, hi = (float(v) for v in value)
        except (TypeError, ValueError):
            return "not two numbers"
        if not (np.isfinite(lo) and np.isfinite(hi)) or not lo < hi:
            return "empty or reversed"
        if hi - lo < extent * 1e-9 or hi - lo > extent * 1e6:
            return "too small or too large for the data"
        if hi < lo_d - 10 * extent or lo > hi_d + 10 * extent:
            return "far outside the data"
        return None

    def _notice(self, text: str) -> None:
        if text not in self.notices:
            self.notices = [*self.notices, text]

    def apply_link_state(self, values: dict) -> None:
        """Set what a shared link asks for, one parameter at a time: a value that param refuses
        is left out and named in ``notices`` (the rest of the link still applies)."""
        for name, value in values.items():
            if name == "generators" and isinstance(value, list):  # links from before "real" left
                value = [g for g in value if g != "real"]
            try:
                self.param.update(**{name: value})
            except Exception as e:  # param says why a value does not fit
                self._notice(f"{name}={value!r} was ignored: {str(e).split('. ')[0]}")

    @param.depends("x_range", "y_range", "pattern", watch=True)
    def _drop_unshowable(self) -> None:
        """A viewport that is empty, reversed, a speck or far off the data, and a pattern the run
        does not have, fall back to the default view with a notice."""
        for axis in ("x", "y"):
            value = getattr(self, f"{axis}_range")
            why = self.valid_range(axis, value)
            if why:
                self._notice(f"{axis}_range={list(value)!r} was ignored: {why}")
                setattr(self, f"{axis}_range", None)
        if self.pattern is not None:
            known = set() if self.patterns is None else set(self.patterns.patterns["pattern"])
            if int(self.pattern) not in known:
                self._notice(f"pattern={self.pattern} was ignored: no such pattern in this run")
                self.pattern = None

    # ----- relevance maps -----------------------------------------------------------------------
    def maps(self, rows: np.ndarray, channel: int) -> np.ndarray:
        """(n, gh, gw) maps of one channel (MAP_NAMES index) for point rows; the fake channel by
        ``map_method``, every other channel the run's own."""
        rows = np.asarray(rows, np.int64)
        p = self.points
        return channel_maps(self.run, p.part[rows], p.row[rows], channel, self.map_method)

    def map_vmax(self, channel: int) -> float | None:
        """The top of the heat-map colour scale for ``channel``: None (each image to its own
        maximum) or, with ``map_scale`` "shared", one value for every image of the run."""
        if self.map_scale != "shared":
            return None
        method = self.map_method if channel == 0 else None
        return shared_vmax(self.run_dir, self.points, self.run, channel, method)

    def map_method_of(self, map_name: str) -> str:
        """The explanation method that produced map ``map_name`` as shown."""
        if map_name == MAP_NAMES[0]:
            return self.map_method
        if map_name == MAP_NAMES[1]:
            return self.run.relevance.methods[0]
        return DIMENSION_MAPS_METHOD

    @property
    def filters(self) -> Filters:
        names = {v: k for k, v in LABEL_NAMES.items()}
        mis = {"all": None, "errors only": True, "correct only": False}[self.misclassified]
        return Filters(
            labels=tuple(names[x] for x in self.labels),
            generators=tuple(self.generators)
            + (("real",) if "real" in self.points.generators else ()),
            predicted=tuple(names[x] for x in self.predicted),
            misclassified=mis,
            score_range=tuple(self.score_range),
        )

    @param.depends("labels", "generators", "predicted", "misclassified", "score_range", watch=True)
    def _update_mask(self):
        self.mask = filter_mask(self.points, self.filters)
        self.filter_version += 1

    # ----- selection --------------------------------------------------------------------------
    def select_rows(self, rows: np.ndarray | None, kind: str) -> None:
        self._selection = None if rows is None else np.asarray(rows, np.int64)
        self.selection_kind = kind if rows is not None else "none"
        self.selection_version += 1

    def _geometry(self, geometry: dict | None) -> None:
        """Record the selection's geometry (for the link) without selecting again."""
        self._own_geometry = True
        try:
            self.selection = geometry
        finally:
            self._own_geometry = False

    def select_box(self, x0, y0, x1, y1) -> None:
        self.select_rows(box_select(self.points, x0, x1, y0, y1, self.mask), "box")
        self._geometry({"box": [float(v) for v in (x0, y0, x1, y1)]})

    def select_lasso(self, polygon) -> None:
        polygon = np.asarray(polygon, np.float64)
        self.select_rows(lasso_select(self.points, polygon, self.mask), "lasso")
        self._geometry({"lasso": polygon.round(6).tolist()})

    def select_nearest(self, x: float, y: float) -> None:
        idx = np.flatnonzero(self.mask)
        if len(idx) == 0:
            return
        d = (self.points.x[idx] - x) ** 2 + (self.points.y[idx] - y) ** 2
        row = idx[int(np.argmin(d))]
        self.select_rows(np.array([row]), "tap")
        self._geometry({"tap": int(self.points.id[row])})

    def locate(self, image_id: int) -> None:
        """Ring image ``image_id`` in the overview (an image clicked in any view); unknown ids
        are ignored."""
        if np.any(self.points.id == int(image_id)):
            self.located = int(image_id)

    def clear_selection(self) -> None:
        self.select_rows(None, "none")
        self._geometry(None)

    @param.depends("selection", watch=True)
    def _apply_selection(self) -> None:
        """A selection set from outside (a shared link): select what it describes, or drop it
        with a notice when it describes nothing this run can select."""
        if self._own_geometry:
            return
        g = self.selection
        if g is None:
            self.select_rows(None, "none")
            return
        try:
            ((kind, value),) = g.items()
            if kind == "box":
                x0, y0, x1, y1 = (float(v) for v in value)
                if not all(np.isfinite([x0, y0, x1, y1])):
                    raise ValueError
                self.select_box(x0, y0, x1, y1)
            elif kind == "lasso":
                poly = np.asarray(value, np.float64)
                if poly.ndim != 2 or poly.shape[1] != 2 or len(poly) < 3:
                    raise ValueError
                if not np.isfinite(poly).all():
                    raise ValueError
                self.select_lasso(poly)
            elif kind == "tap":
                rows = np.flatnonzero(self.points.id == int(value))
                if len(rows) != 1:
                    raise ValueError
                self.select_rows(rows, "tap")
            else:
                raise ValueError
        except (ValueError, TypeError):
            self._notice(f"selection={g!r} was ignored: not a box, lasso or image id of this run")
            self._geometry(None)

    @property
    def selected(self) -> np.ndarray:
        """Row indices every view shows: the selection within the filters, or all filtered rows."""
        if self._selection is None:
            return np.flatnonzero(self.mask)
        return self._selection[self.mask[self._selection]]

    def sorted_rows(self, rows: np.ndarray, limit: int | None = None) -> np.ndarray:
        """``rows`` in the chosen order (ties keep their order); with ``limit``, only the first
        ``limit`` of them, found without sorting them all (a full sort of 10 M rows took 2 s of
        every new page; issue 11)."""
        p = self.points
        key = {
            SORT_BY[0]: lambda: -p.p_fake[rows],
            SORT_BY[1]: lambda: p.p_fake[rows],
            SORT_BY[2]: lambda: -p.label[rows].astype(np.float32),
            SORT_BY[3]: lambda: p.generator[rows].astype(np.float32),
            SORT_BY[4]: lambda: -p.error[rows].astype(np.float32),
        }[self.sort_by]()
        if limit is None or limit >= len(rows):
            return rows[np.argsort(key, kind="stable")]
        if limit <= 0:
            return rows[:0]
        kth = np.partition(key, limit - 1)[limit - 1]  # the limit-th smallest key
        below = np.flatnonzero(key < kth)
        ties = np.flatnonzero(key == kth)[: limit - len(below)]  # the first ones, as a stable sort
        pick = np.sort(np.concatenate([below, ties]))
        return rows[pick[np.argsort(key[pick], kind="stable")]]

    def summary(self) -> str:
        rows = self.selected
        n_fake = int((self.points.label[rows] == 1).sum())
        what = "all filtered images" if self._selection is None else f"{self.selection_kind}"
        return (
            f"**{len(rows):,}** images ({what}) · {n_fake:,} fake · {len(rows) - n_fake:,} real"
            f" · {int(self.points.error[rows].sum()):,} misclassified · of {len(self.points):,}"
        )

    def __panel__(self):
        return pn.Param(self.param, widgets=filter_widgets(), show_name=False)


def filter_widgets() -> dict:
    return {
        "labels": pn.widgets.CheckButtonGroup,
        "predicted": pn.widgets.CheckButtonGroup,
        "generators": pn.widgets.MultiChoice,
        "misclassified": pn.widgets.RadioButtonGroup,
        "score_range": pn.widgets.RangeSlider,
    }
