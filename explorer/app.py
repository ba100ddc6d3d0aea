"""Assembles the explorer for one run directory: a DataStore per session, the four linked views and
the filters in a template, the view state kept in the URL. ``create_app`` is what `asap serve`,
``panel serve explorer/serve.py`` and the notebook all call."""

from __future__ import annotations

import json
from urllib.parse import urlencode

import holoviews as hv
import panel as pn

from pipeline.schema import RunDirectoryError

from .assets import offline_notebook
from .datastore import DataStore, filter_widgets
from .overview import OverviewView
from .patterns import DIMENSION_MAPS_METHOD
from .views import DimensionView, ExportView, ImageView, PatternView
from .whatif import WhatIfView

# parameters of the DataStore mirrored in the page's URL, so that a view can be shared
URL_STATE = ("labels", "generators", "predicted", "misclassified", "score_range", "color_by",
             "map_name", "map_method", "map_scale", "x_range", "y_range", "pattern",
             "selection")  # fmt: skip
FILTERS = ("labels", "predicted", "generators", "misclassified", "score_range")


_EXTENSIONS_GLOBAL = False  # loaded for the whole process (`asap serve` does it before serving)


def load_extensions() -> None:
    """Panel's and HoloViews' extensions with the explorer's settings. Loaded once for the
    process when called outside a session (`asap serve`'s warm-up, a notebook): a session then
    skips them (calling them in every session cost a tenth of the server's time per new page;
    issue 11). ``panel serve explorer/serve.py`` loads them in each session."""
    global _EXTENSIONS_GLOBAL
    doc = pn.state.curdoc
    in_session = doc is not None and doc.session_context is not None
    if in_session and _EXTENSIONS_GLOBAL:
        return
    # sliders send their value on release, not at every step of a drag (issue 11: one drag of
    # the p(fake) slider kept the page recomputing for 15 s); a view that recomputes shows a
    # spinner over its old content until the new one is ready
    # inline: in a notebook, Panel's and Bokeh's scripts and stylesheets come with the output,
    # not from a CDN (offline, the notebook rendered blank; issue 11), including the three
    # files Panel's loader still names by CDN address (assets.py); served pages are not
    # affected (the server serves its own)
    offline_notebook()
    pn.extension("tabulator", notifications=False, throttled=True, loading_indicator=True,
                 inline=True)  # fmt: skip
    hv.extension("bokeh", logo=False)
    if not in_session:
        _EXTENSIONS_GLOBAL = True


def error_page(message: str) -> pn.template.BootstrapTemplate:
    return pn.template.BootstrapTemplate(
        title="ASAP explorer",
        main=[pn.pane.Alert(f"**Cannot open this run.** {message}", alert_type="danger")],
    )


def detector_alert(check: dict | None) -> list:
    """A red alert above everything else when the detector does not beat chance on the held-out
    images (pipeline.trust): its maps then show no evidence, whatever they look like."""
    if not check or check.get("verdict") not in ("chance", "below chance"):
        return []
    text = f"**Detector at {check['verdict']}:** {check['message']}."
    return [pn.pane.Alert(text, alert_type="danger", css_classes=["asap-detector-alert"],
                          sizing_mode="stretch_width")]  # fmt: skip


class App:
    """The explorer's page for one session."""

    def __init__(self, run_dir: str, image_roots: tuple[str, ...] = (), sync_url: bool = True,
                 thumb_url: str | None = None):  # fmt: skip
        self.store = DataStore(run_dir, image_roots)
        loc = pn.state.location if sync_url else None
        if loc is not None:
            # a link's values that param refuses (an unknown colour) are retried one by one and
            # dropped with a notice (DataStore.apply_link_state); degenerate viewports and unknown
            # patterns are dropped by the store itself: a bad link never gives a blank page
            params = {k: k for k in URL_STATE}
            loc.sync(self.store, params, on_error=self.store.apply_link_state)

        self.overview = OverviewView(self.store, thumb_url=thumb_url)
        self.images = ImageView(self.store)
        self.patterns = PatternView(self.store)
        self.dimensions = DimensionView(self.store)
        self.export = ExportView(self.store)
        self.whatif = WhatIfView(self.store)

    def share_url(self, *_) -> str:
        """A link that reopens this view: filters, colouring, map and its method, viewport and
        pattern. Built here rather than read from the address bar, which Panel updates one event
        late."""
        query = {}
        for k in URL_STATE:
            v = getattr(self.store, k)
            if v is None:
                continue
            v = self.store.param[k].serialize(v)
            query[k] = v if isinstance(v, str) else json.dumps(v)
        loc = pn.state.location
        base = ""
        if loc is not None and loc.hostname:
            port = f":{loc.port}" if loc.port else ""
            base = f"{loc.protocol}//{loc.hostname}{port}{loc.pathname}"
        return f"{base}?{urlencode(query)}"

    def sidebar(self) -> list:
        s = self.store
        widgets = filter_widgets()

        def labelled(name: str, title: str, help_text: str) -> pn.Column:
            shown = {"score_range": "range"}.get(name, "")
            widget = widgets[name].from_param(
                s.param[name], name=shown, sizing_mode="stretch_width"
            )
            return pn.Column(pn.pane.Markdown(f"**{title}** · {help_text}",
                                              styles={"font-size": "12px"}, margin=(0, 10)),
                             widget, sizing_mode="stretch_width")  # fmt: skip

        filters = pn.Column(
            labelled("labels", "Label", "what the image is"),
            labelled("generators", "Generators", "the fakes' generators (reals: Label)"),
            labelled("predicted", "Predicted", "what the detector says"),
            labelled("misclassified", "Errors", "detector right or wrong"),
            labelled("score_range", "p(fake)", "calibrated probability of fake"),
            sizing_mode="stretch_width",
        )
        clear = pn.widgets.Button(name="Clear selection", button_type="light")
        clear.on_click(lambda _: s.clear_selection())
        metrics = s.run.test_metrics
        shown = [k for k in ("accuracy", "ap", "auc") if k in metrics]
        facts = ", ".join(f"{k} {metrics[k]:.2f}" for k in shown)
        notice = pn.pane.Alert(
            pn.bind(lambda n: "**Not shown from the link:**  \n" + "  \n".join(n), s.param.notices),
            alert_type="warning",
            visible=pn.bind(bool, s.param.notices),
            css_classes=["asap-link-notice"],
            sizing_mode="stretch_width",
        )
        return [
            notice,
            pn.pane.Markdown(f"**Run** `{s.run_dir}`  \n{len(s.points):,} images  \n{facts}"),
            *detector_alert(s.detector),
            pn.pane.Markdown("### Filters"),
            filters,
            pn.pane.Markdown("### Overview"),
            pn.widgets.RadioButtonGroup.from_param(s.param.color_by),
            pn.widgets.Checkbox.from_param(s.param.show_glyphs, name="cell glyphs"),
            pn.widgets.IntSlider.from_param(s.param.grid, name="glyph cells across"),
            pn.pane.Markdown("### Relevance maps"),
            pn.widgets.Select.from_param(s.param.map_method, name="fake map by", width=240),
            pn.pane.Markdown(
                "The fake map of the images, the what-if view and the cell glyphs, by any "
                f"method this run stored; real: {s.run.relevance.methods[0]}, "
                f"d00–d15: {DIMENSION_MAPS_METHOD}. Faithfulness: the Images tab.",
                styles={"font-size": "12px"},
                width=250,
            ),
            pn.pane.Markdown("### Selection"),
            clear,
            self.export,
            pn.pane.Markdown("### Share this view"),
            pn.widgets.TextInput(
                value=pn.bind(self.share_url, *[s.param[k] for k in URL_STATE]),
                disabled=True,
                css_classes=["asap-share"],
                sizing_mode="stretch_width",
            ),
        ]

    def main(self) -> list:
        summary = pn.pane.Markdown(
            pn.bind(
                lambda *_: self.store.summary(),
                self.store.param.selection_version,
                self.store.param.filter_version,
            ),  # fmt: skip
            css_classes=["asap-summary"],
        )
        views = [self.images, self.patterns, self.dimensions, self.whatif]
        # Only the tab on screen exists in the page and recomputes (TabView); the others catch
        # up when shown. A tab's components are built the first time it is shown: building all
        # four cost about a second of the server's one loop per new session (issue 11).
        holders = [pn.Column(sizing_mode="stretch_width") for _ in views]
        tabs = pn.Tabs(*zip(("Images", "Patterns", "Dimensions", "What-if"), holders),
                       dynamic=True)  # fmt: skip

        def show(active: int) -> None:
            for i, view in enumerate(views):
                view.shown = i == active
            if not holders[active].objects:
                holders[active].objects = [views[active]]

        show(tabs.active)
        tabs.param.watch(lambda e: show(e.new), "active")
        return [
            summary,
            # both panes share the width (at 1280 px the side pane used to overflow the page);
            # the side pane's galleries wrap, its tables scroll and its images scale
            pn.Row(
                pn.Column(self.overview, sizing_mode="stretch_both", min_width=380),
                pn.Column(tabs, sizing_mode="stretch_both", min_width=440, max_width=620),
                sizing_mode="stretch_both",
            ),
        ]

    def template(self) -> pn.template.BootstrapTemplate:
        tpl = pn.template.BootstrapTemplate(
            title="ASAP explorer",
            sidebar=self.sidebar(),
            main=self.main(),
            sidebar_width=300,
            # no busy spinner in the header: Panel's busy state is one for the whole process and
            # the template's default spinner is one object shown in every session, so each
            # event of any session sent a patch to every open page (issue 11: 20 sessions);
            # every view has its own loading indicator instead
            busy_indicator=None,
        )
        tpl.server_doc = _batched(tpl.server_doc)
        return tpl


def _batched(server_doc):
    """``server_doc`` with the document's model graph recomputed once, not once per root: the
    template adds about twenty roots, and each addition walked every model already there (0.6 s
    of each new session on the server's one loop; issue 11)."""

    def wrapped(doc=None, title=None, location=True):
        if doc is None:
            return server_doc(doc, title, location)
        with doc.models.freeze():
            return server_doc(doc, title, location)

    return wrapped


def create_app(run_dir: str, image_roots: tuple[str, ...] = (), sync_url: bool = True,
               thumb_url: str | None = None):  # fmt: skip
    """The page for one session, or a page that says why the run cannot be opened.
    ``thumb_url``: where the server answers thumbnails by id (`asap serve`), for the overview's
    hover; None: the hover shows no image."""
    load_extensions()
    try:
        return App(run_dir, image_roots, sync_url, thumb_url).template()
    except RunDirectoryError as e:
        return error_page(str(e))
