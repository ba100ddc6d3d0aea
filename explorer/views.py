"""The linked detail views: images with relevance overlays, patterns, distilled dimensions, and
the export of the selection. Each view only reads the DataStore and renders."""

from __future__ import annotations

import base64
import html
import io
import tempfile
from pathlib import Path

import holoviews as hv
import numpy as np
import pandas as pd
import panel as pn
import param
from panel.custom import JSComponent

from pipeline.metrics import SURE_P_FAKE
from pipeline.schema import DISTILLED_COLUMNS, LABEL_NAMES, MAP_NAMES, STABLE_PATTERN

from . import patterns as pat
from .datastore import SHARED_SCALE_QUANTILE, DataStore
from .patterns import ATTENTION_METHOD, DIMENSION_MAPS_METHOD, Difference, MethodFaithfulness
from .render import (
    ByteBoundedCache,
    ImageAccessError,
    colour_bar,
    heat_rgba,
    histogram_grid,
    overlay,
    to_png,
)
from .store import export_manifest

SELECTION_DEPS = ("selection_version", "filter_version")


def later(fn) -> None:
    """Run ``fn`` on the server's next tick, after the page has been sent what the current event
    changed (the overview's frame first: issue 11, a box selection's frame waited for 24 image
    cards); at once outside a served page (a notebook, a test)."""
    doc = pn.state.curdoc
    if doc is not None and doc.session_context is not None:
        doc.add_next_tick_callback(fn)
    else:
        fn()


class TabView(pn.viewable.Viewer):
    """A view that lives in a tab and recomputes only while it is shown (issue 11: hidden tabs
    rebuilt their plots on every filter change). A change of the store parameters in
    ``STORE_DEPS`` bumps ``version`` while ``shown``, and marks the view stale otherwise; showing a
    stale view bumps it then. The view's expensive renders depend on ``version``. Views outside
    tabs (a notebook cell) keep ``shown`` True and follow every change."""

    STORE_DEPS: tuple[str, ...] = SELECTION_DEPS

    store = param.ClassSelector(class_=DataStore, constant=True)
    shown = param.Boolean(default=True, doc="whether the view is on screen")
    version = param.Integer(default=0, doc="bumped when the shown view must recompute")

    def __init__(self, store: DataStore, **params):
        super().__init__(store=store, **params)
        self._stale = self._pending = False
        store.param.watch(self._store_changed, list(self.STORE_DEPS))
        self.param.watch(self._shown_changed, "shown")

    def _store_changed(self, *_):
        if not self.shown:
            self._stale = True
        elif not self._pending:  # several changes in one event: one recompute
            self._pending = True
            later(self._bump)

    def _bump(self) -> None:
        self._pending = False
        self.version += 1

    def _shown_changed(self, event):
        if event.new and self._stale:
            self._stale = False
            self.version += 1


def image_card(store: DataStore, row: int, channel: int, size: int = 128,
               vmax: float | None = None) -> str:  # fmt: skip
    """One image with its relevance overlay and a caption, as an HTML figure (the image inline
    as a PNG data URL; the page never names a file). Cards are shared by every session of the
    process (most sessions open on the same images)."""
    p = store.points
    img_id = int(p.id[row])
    method = store.map_method if channel == 0 else None
    key = (store.run_dir, img_id, channel, method, size, vmax, store.opacity, store.cmap)
    card = _CARDS.get(key)
    if card is None:
        card = _image_card(store, row, channel, size, vmax)
        if "asap-unavailable" not in card:  # a file that could not be read may come back
            _CARDS.put(key, card)
    return card


CARD_CACHE_BYTES = 64 * 2**20  # image cards (PNG data URLs) of every session together
_CARDS = ByteBoundedCache(CARD_CACHE_BYTES)


def _image_card(store: DataStore, row: int, channel: int, size: int, vmax: float | None) -> str:
    p = store.points
    img_id = int(p.id[row])
    try:
        rgb = store.images.thumbnail(img_id, size)
        heat = store.maps([row], channel)[0]
        png = base64.b64encode(to_png(overlay(rgb, heat, store.opacity, store.cmap, vmax))).decode()
        body = (f"<img src='data:image/png;base64,{png}' width='{size}' height='{size}' "
                f"alt='image #{img_id}'>")  # fmt: skip
    except ImageAccessError as e:
        body = f"<div class='asap-unavailable' style='width:{size}px'>{html.escape(str(e))}</div>"
    label = LABEL_NAMES[int(p.label[row])]
    wrong = " ✗" if p.error[row] else ""
    gen = html.escape(p.generators[p.generator[row]])
    caption = f"#{img_id} · {label} · {gen}<br>p(fake) {p.p_fake[row]:.2f}{wrong}"
    style = f"margin:0;width:{size + 10}px"
    return (f"<figure class='asap-card' data-id='{img_id}' style='{style}'>{body}"
            f"<figcaption style='font-size:11px'>{caption}</figcaption></figure>")  # fmt: skip


class Gallery(JSComponent):
    """Image cards as one element (one model for the page to replace, where a pane per image and
    caption made a selection change rebuild dozens of models; issue 11). Clicking a card sends
    its image id back (``clicks`` counts, so that the same image clicked twice still counts)."""

    html = param.String(default="")
    clicked = param.Integer(default=-1, doc="id of the image clicked last")
    clicks = param.Integer(default=0)

    _esm = """
    export function render({ model }) {
      const root = document.createElement('div');
      root.innerHTML = model.html;
      root.addEventListener('click', (event) => {
        const card = event.target.closest('figure[data-id]');
        if (!card) return;
        model.clicked = parseInt(card.dataset.id, 10);
        model.clicks = model.clicks + 1;
      });
      model.on('html', () => { root.innerHTML = model.html; });
      return root;
    }
    """


def gallery_html(store: DataStore, rows, channel: int, size: int = 128) -> str:
    vmax = store.map_vmax(channel)
    cards = "".join(image_card(store, int(r), channel, size, vmax) for r in rows)
    return (
        "<div class='asap-gallery' style='display:flex;flex-wrap:wrap;gap:6px;cursor:pointer' "
        f"title='click an image to locate it in the overview'>{cards}</div>"
    )


def gallery(store: DataStore, rows, channel: int, size: int = 128,
            view: Gallery | None = None) -> Gallery:  # fmt: skip
    """The images of ``rows`` as one clickable element: a click locates that image in the
    overview (``DataStore.locate``). Given ``view``, its content is replaced instead: the page
    keeps its element and only receives the new HTML."""
    html = gallery_html(store, rows, channel, size)
    if view is not None:
        view.html = html
        return view
    view = Gallery(html=html, sizing_mode="stretch_width")
    view.param.watch(lambda _: store.locate(view.clicked), "clicks")
    return view


def _num(v: float, sign: str = "") -> str:
    return f"{v:{sign}.2f}".replace("-", "\u2212")  # a real minus sign, as in print


def _versus(d: Difference | None, other: MethodFaithfulness | None, what: str) -> str:
    """'vs random 0.60 (Δ −0.19, 95% CI −0.22…−0.16: more faithful)', or why it is missing."""
    if d is None or other is None:
        return f"vs {what}: not measured"
    verdict = (
        "more faithful" if d.hi < 0 else "less faithful" if d.lo > 0 else "no clear difference"
    )
    return (
        f"vs {what} {_num(other.deletion)} (Δ {_num(d.mean, '+')}, 95% CI "
        f"{_num(d.lo)}…{_num(d.hi)}: {verdict})"
    )


def faithfulness_note(store: DataStore) -> str:
    """How faithful the fake map shown measured on this run (deletion area of its patch order
    vs random patches and vs plain attention), or the command that measures it."""
    return _detector_warning(store.detector) + _faithfulness_text(store)


def _detector_warning(check: dict | None) -> str:
    """A first paragraph when the detector does not beat chance (pipeline.trust), else ''."""
    if not check or check.get("verdict") not in ("chance", "below chance"):
        return ""
    return (
        f"**Not evidence:** the detector is at {check['verdict']} on the held-out images (AUC "
        f"{check['auc']:.3f}, 95% CI {check['auc_lo']:.3f}…{check['auc_hi']:.3f}), so no "
        "map of it shows why an image is fake, however faithful to the model it measures.  \n"
    )


def _faithfulness_text(store: DataStore) -> str:
    method, faith = store.map_method, store.faithfulness
    if faith is None:
        return (
            f"**Fake map by {method}** — faithfulness not measured: this run has no faithfulness "
            f"table (the pattern stage has not run). Compute it with `asap patterns "
            f"{store.run_dir}`, then reload this page."
        )
    m = faith.of(method)
    if m is None:
        return f"**Fake map by {method}** — faithfulness not measured for this method."
    if method == ATTENTION_METHOD:
        attention = "(this is plain attention)"
    else:
        attention = _versus(m.vs_attention, faith.attention, "plain attention")
    return (
        f"**Fake map by {method}** — deletion area {_num(m.deletion)} "
        f"{_versus(m.vs_random, faith.random, 'random')} and {attention}; lower = more "
        f"faithful (removing the map's top patches lowers p(fake) sooner); measured on "
        f"{m.images:,} images of the run (not only the selection).{_by_confidence(m)}"
    )


def _by_confidence(m: MethodFaithfulness) -> str:
    """' By confidence: p(fake) ≥ 0.9, 96 images: Δ −0.44 [−0.47…−0.41] vs random; …'."""
    bands = {"sure": f"p(fake) \u2265 {SURE_P_FAKE:g}", "unsure": f"p(fake) < {SURE_P_FAKE:g}"}
    parts = [
        f"{label}, {d.images:,} images: \u0394 {_num(d.mean, '+')} [{_num(d.lo)}\u2026{_num(d.hi)}]"
        for band, label in bands.items()
        if (d := m.vs_random_by_confidence.get(band)) is not None
    ]
    if not parts:
        return ""
    return (
        f" By the detector's confidence, vs random: {'; '.join(parts)} — a map explains an "
        "unsure detection less well when its \u0394 is closer to 0."
    )


def maps_note(store: DataStore) -> str:
    """Which explanation method produced the map shown, and the run's other maps."""
    own = store.run.relevance.methods[0]
    shown = store.map_method_of(store.map_name)
    if store.map_name == "fake" and shown != own:
        whose = f"a comparison map; the run's fake/real maps are by **{own}**"
    else:
        whose = f"the run's fake/real maps are by **{own}**"
    return (
        f"Shown: **{store.map_name}** map by **{shown}** ({whose}; the dimension maps "
        f"d00–d15 always by **{DIMENSION_MAPS_METHOD}**)."
    )


class ImageView(TabView):
    """The selection's images, sorted, with the chosen relevance map over each."""

    STORE_DEPS = (*SELECTION_DEPS, "map_name", "map_method", "cmap", "opacity", "sort_by",
                  "map_scale")  # fmt: skip

    n_images = param.Integer(default=24, bounds=(1, 200))

    @param.depends("store.map_name", "store.map_method", "store.cmap", "store.map_scale")
    def scale(self):
        """The heat map's colour bar and what its top means."""
        s = self.store
        vmax = s.map_vmax(MAP_NAMES.index(s.map_name))
        if vmax is None:
            high = "each image's own maximum (every map shows a hot spot; 'shared' compares them)"
        else:
            high = (
                f"{vmax:.3g}, shared by all images (the {SHARED_SCALE_QUANTILE:.0%} quantile of "
                "the run's map maxima): brighter = more relevant than most images"
            )
        return pn.pane.HTML(colour_bar(s.cmap, "0", high), sizing_mode="stretch_width",
                            margin=(0, 5))  # fmt: skip

    @param.depends("store.map_name", "store.map_method")
    def trust(self):
        """Which method made the map shown, and how faithful the fake map measured."""
        text = f"{maps_note(self.store)}  \n{faithfulness_note(self.store)}"
        return pn.pane.Markdown(text, css_classes=["asap-maps"], sizing_mode="stretch_width")

    @param.depends("version", "n_images")
    def cards(self):
        store = self.store
        rows = store.sorted_rows(store.selected, self.n_images)
        if len(rows) == 0:
            return pn.pane.Markdown("No images match the filters and selection.")
        channel = MAP_NAMES.index(store.map_name)
        self._gallery = gallery(store, rows, channel, view=getattr(self, "_gallery", None))
        return self._gallery

    def __panel__(self):
        s = self.store
        controls = pn.FlexBox(
            pn.widgets.Select.from_param(s.param.map_name, name="map", width=80),
            pn.widgets.Select.from_param(s.param.map_method, name="fake map by", width=110),
            pn.widgets.Select.from_param(s.param.cmap, name="colour map", width=90),
            pn.widgets.FloatSlider.from_param(s.param.opacity, width=120),
            pn.widgets.Select.from_param(s.param.map_scale, name="scale", width=110),
            pn.widgets.Select.from_param(s.param.sort_by, name="sort", width=160),
        )
        return pn.Column(controls, self.scale, self.trust, self.cards,
                         sizing_mode="stretch_width")  # fmt: skip


class DimensionView(TabView):
    """The 16 distilled dimensions: real vs fake distributions in the selection, how well each
    separates them (AUC), and the images that drive a chosen dimension most."""

    STORE_DEPS = (*SELECTION_DEPS, "opacity", "cmap", "map_scale")

    dimension = param.Selector(default=DISTILLED_COLUMNS[0], objects=DISTILLED_COLUMNS)

    def __init__(self, store: DataStore, **params):
        super().__init__(store=store, **params)
        self.values = store.dims  # shared, read-only

    @param.depends("version")
    def histograms(self):
        """Real (blue) and fake (red) distributions of each dimension in the selection, with
        its separation AUC: one image of 16 small multiples."""
        rows = self.store.selected
        label = self.store.points.label[rows]
        panels = []
        for j, name in enumerate(DISTILLED_COLUMNS):
            v = self.values[rows, j]
            lo, hi = (float(v.min()), float(v.max())) if len(v) else (0.0, 1.0)
            edges = np.linspace(lo, hi if hi > lo else lo + 1, 25)
            real, fake = (density(v[label == k], edges) for k in (0, 1))
            auc = separation_auc(v[label == 0], v[label == 1])
            panels.append((f"{name}  AUC {auc:.2f}" if np.isfinite(auc) else name, real, fake))
        grid = histogram_grid(panels)
        return pn.Column(
            pn.pane.HTML("<span style='color:#3b4cc0'>■</span> real "
                         "<span style='color:#b40426'>■</span> fake · each panel scaled to its "
                         "own peak", styles={"font-size": "11px"}, margin=(0, 5)),
            pn.pane.PNG(to_png(grid), sizing_mode="scale_width", max_width=grid.shape[1],
                        css_classes=["asap-histograms"]),
        )  # fmt: skip

    @param.depends("version")
    def ranking(self):
        """The dimensions ranked by how well they separate real from fake in the selection."""
        rows = self.store.selected
        label = self.store.points.label[rows]
        v = self.values[rows]
        df = pd.DataFrame({
            "dimension": DISTILLED_COLUMNS,
            "AUC": [separation_auc(v[label == 0, j], v[label == 1, j]) for j in range(v.shape[1])],
            "mean real": v[label == 0].mean(axis=0) if (label == 0).any() else np.nan,
            "mean fake": v[label == 1].mean(axis=0) if (label == 1).any() else np.nan,
        })  # fmt: skip
        df["|AUC-0.5|"] = (df["AUC"] - 0.5).abs()
        df = df.sort_values("|AUC-0.5|", ascending=False).head(6).round(3)
        tables = self.store.patterns
        if tables is not None:  # which patterns drive each dimension
            assoc = tables.patterns[["pattern", "top_dims"]]
            df["patterns"] = [
                ", ".join(str(k) for k, d in assoc.itertuples(index=False) if name in d.split(","))
                for name in df["dimension"]
            ]
        return pn.pane.DataFrame(df, index=False, css_classes=["asap-dimensions"])

    @param.depends("version", "dimension")
    def drivers(self):
        rows = self.store.selected
        j = DISTILLED_COLUMNS.index(self.dimension)
        top = rows[np.argsort(-self.values[rows, j], kind="stable")[:8]]
        channel = MAP_NAMES.index(self.dimension)
        text = (
            f"Images with the highest **{self.dimension}**, with that dimension's map (by "
            f"{DIMENSION_MAPS_METHOD}):"
        )
        return pn.Column(pn.pane.Markdown(text), gallery(self.store, top, channel, 96))

    def __panel__(self):
        pick = pn.widgets.Select.from_param(self.param.dimension, name="dimension", width=120)
        return pn.Column(self.ranking, self.histograms, pick, self.drivers,
                         sizing_mode="stretch_width")  # fmt: skip


def separation_auc(real: np.ndarray, fake: np.ndarray) -> float:
    """ROC AUC of a dimension's value as a fake score (Mann-Whitney U); NaN if a class is empty."""
    if len(real) == 0 or len(fake) == 0:
        return float("nan")
    both = np.concatenate([real, fake])
    ranks = pd.Series(both).rank().to_numpy()
    return float((ranks[len(real):].sum() - len(fake) * (len(fake) + 1) / 2)
                 / (len(real) * len(fake)))  # fmt: skip


SIGNIFICANT, NOT_SIGNIFICANT = "yes", "not significant"
PATTERN_COLUMN_WIDTHS = {"pattern": 102, "impact": 86, "significant": 130, "stability": 104,
                         "impact 95% CI": 140, "random_impact": 96, "images": 90, "fake": 70,
                         "real": 70, "top_dims": 150}  # fmt: skip
# no sort arrows: they took a third of each narrow header (the table is ranked by impact already)
NO_HEADER_SORT = {"columnDefaults": {"headerSort": False}}
PATTERN_COLUMN_HELP = {
    "impact": "mean drop in p(fake) when the pattern's patches (and their neighbours) are masked",
    "significant": "impact interval above 0 and above the random control's interval",
    "stability": "how well k-means on other samples of the patches finds this pattern again "
    "(best Jaccard overlap, mean; below 0.75: an unstable grouping)",
    "random_impact": "drop when as many random patches of the same images are masked",
    "images": "selected images with the pattern",
}


def _grey_if_not_significant(row: pd.Series) -> list[str]:
    style = "color: #9e9e9e; font-style: italic" if row["significant"] != SIGNIFICANT else ""
    return [style] * len(row)


def density(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """A histogram normalised to unit area; zeros (not NaN) when there are no values, so that an
    empty class draws nothing instead of warning on every redraw."""
    counts = np.histogram(values, edges)[0].astype(np.float64)
    total = counts.sum() * np.diff(edges)
    return np.divide(counts, counts.sum() * np.diff(edges), out=np.zeros_like(counts),
                     where=total > 0)  # fmt: skip


def local_evidence(r) -> bool:
    """A pattern's own patches (without neighbours) carry at least half its impact, and their
    interval lies above 0 and above as many random patches' (pipeline.patterns.pattern_impact)."""
    lo = float(r.local_lo)
    return lo > 0 and lo > float(r.local_random_hi) and r.local_impact >= 0.5 * r.impact


def pattern_header(patterns: pd.DataFrame, k: int) -> str:
    """A pattern's title, its measured impact against random patches, and whether to trust it."""
    head = f"**Pattern {k}**: central (first 5) and extreme (last 5) patches"
    match = patterns[patterns["pattern"] == k]
    if match.empty:
        return head
    r = match.iloc[0]
    impact = (
        f"impact on p(fake) {_num(r.impact)} (95% CI {_num(r.impact_lo)}…{_num(r.impact_hi)}) "
        f"vs random patches {_num(r.random_impact)} ({_num(r.random_lo)}…{_num(r.random_hi)})"
    )
    lines = [head, impact]
    local = float(r.get("local_lo", np.nan))
    if np.isfinite(local):  # runs made before the own-patches measure lack it
        lines.append(
            f"its own patches only: {_num(r.local_impact)} (95% CI {_num(r.local_lo)}…"
            f"{_num(r.local_hi)}) vs random {_num(r.local_random_impact)} — "
            + ("**local evidence**: most of its impact is in these patches"
               if local_evidence(r)
               else "**spread evidence**: masking these patches alone removes less than half "
               "its impact, or no more than random ones; the trace is over the image, so any "
               "large mask removes some of it")
        )  # fmt: skip
    if not bool(r.significant):
        lines.append("⚠ **impact not significant**: its interval includes 0 or does not beat "
                     "random patches (or too few images were re-scored)")  # fmt: skip
    stab = float(r.get("stability", np.nan))
    if np.isfinite(stab) and stab < STABLE_PATTERN:
        lines.append(f"⚠ **unstable grouping** (stability {_num(stab)} < {STABLE_PATTERN}): "
                     "k-means on other samples of the patches splits them differently; read it "
                     "as part of a broader pattern")  # fmt: skip
    return "  \n".join(lines)


class PatternView(TabView):
    """Discovered patterns within the selection, ranked by measured impact."""

    def empty(self):
        return pn.pane.Alert(
            "This run has no patterns yet. Compute them with "
            f"`asap patterns {self.store.run_dir}`, then reload this page.",
            alert_type="info",
        )

    @param.depends("version")
    def table(self):
        tables = self.store.patterns
        if tables is None:
            return self.empty()
        ids = self.store.points.id[self.store.selected]
        df = pat.patterns_in(tables, ids)
        if df.empty:
            return pn.pane.Markdown("No discovered pattern occurs in the selected images.")
        # the verdict first (a narrow page shows the first few columns without scrolling)
        df["significant"] = np.where(df["significant"], SIGNIFICANT, NOT_SIGNIFICANT)
        df["impact 95% CI"] = [f"{_num(lo)}…{_num(hi)}"
                               for lo, hi in zip(df["impact_lo"], df["impact_hi"])]  # fmt: skip
        df = df[["pattern", "impact", "significant", "stability", "impact 95% CI",
                 "random_impact", "images", "fake", "real", "top_dims"]].round(3)  # fmt: skip
        tab = pn.widgets.Tabulator(df, show_index=False, disabled=True, height=220,
                                   selectable=1, sizing_mode="stretch_width",
                                   frozen_columns=["pattern"],
                                   titles={"random_impact": "random", "top_dims": "top dims"},
                                   header_tooltips=PATTERN_COLUMN_HELP,
                                   widths=PATTERN_COLUMN_WIDTHS,
                                   configuration=NO_HEADER_SORT)  # fmt: skip
        tab.style.apply(_grey_if_not_significant, axis=1)

        def pick(event):  # a click on the highlighted row again clears the highlight
            self.store.pattern = int(df.iloc[event.new[0]]["pattern"]) if event.new else None

        tab.param.watch(pick, "selection")
        return tab

    @param.depends("store.pattern", "version")
    def detail(self):
        tables, k = self.store.patterns, self.store.pattern
        if tables is None or k is None:
            return pn.pane.Markdown("Click a pattern to see its exemplars; its images turn green "
                                    "in the overview.")  # fmt: skip
        ids = self.store.points.id[self.store.selected]
        gens = pat.generator_counts(tables, k, ids)
        bars = hv.Bars(list(gens.items()), "generator", "images").opts(
            width=260, height=160, toolbar=None, title="images per generator (selection)"
        )
        grid = self.store.run.relevance.map_shape[1:]
        loc = pat.location_map(tables, k, grid)
        loc_png = to_png((heat_rgba(loc, 96, "viridis")[..., :3] * 255).astype(np.uint8))
        crops = [self.patch_card(r) for kind in (1, 2)
                 for r in pat.exemplars(tables, k, kind, 5).itertuples()]  # fmt: skip
        clear = pn.widgets.Button(name="Clear pattern highlight", button_type="light",
                                  css_classes=["asap-clear-pattern"])  # fmt: skip
        clear.on_click(lambda _: setattr(self.store, "pattern", None))
        return pn.Column(
            pn.pane.Markdown(pattern_header(tables.patterns, k), css_classes=["asap-pattern"]),
            pn.FlexBox(*crops),
            pn.Row(pn.pane.HoloViews(bars), pn.Column("location", pn.pane.PNG(loc_png, width=96))),
            clear,
        )

    def patch_card(self, r) -> pn.pane.PNG:
        size, grid = 96, self.store.run.relevance.map_shape[1:]
        try:
            rgb = self.store.images.thumbnail(int(r.id), size).copy()
        except ImageAccessError:
            return pn.pane.Markdown(f"#{r.id} unavailable")
        ph, pw = size / grid[0], size / grid[1]
        y0, x0 = int(r.gy * ph), int(r.gx * pw)
        y1, x1 = int((r.gy + 1) * ph), int((r.gx + 1) * pw)
        rgb[y0:y1, [x0, max(x1 - 1, x0)]] = (0, 200, 83)
        rgb[[y0, max(y1 - 1, y0)], x0:x1] = (0, 200, 83)
        return pn.pane.PNG(to_png(rgb), width=size, height=size)

    def __panel__(self):
        return pn.Column(self.table, self.detail, sizing_mode="stretch_width",
                         css_classes=["asap-patterns"])  # fmt: skip


class ExportView(pn.viewable.Viewer):
    """Download the selection as a manifest that `asap run` reads."""

    fmt = param.Selector(default="csv", objects=["csv", "parquet"])

    store = param.ClassSelector(class_=DataStore, constant=True)

    def __init__(self, store: DataStore, **params):
        super().__init__(store=store, **params)

    def payload(self) -> io.BytesIO:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"selection.{self.fmt}"
            export_manifest(self.store.points, self.store.run, self.store.selected, path)
            return io.BytesIO(path.read_bytes())

    def __panel__(self):
        button = pn.widgets.FileDownload(
            callback=self.payload, filename="selection.csv", button_type="primary",
            label="Export selection", embed=False,
        )  # fmt: skip
        self.param.watch(lambda e: setattr(button, "filename", f"selection.{e.new}"), "fmt")
        return pn.Row(pn.widgets.RadioButtonGroup.from_param(self.param.fmt), button)
