"""The explorer's server side without a browser: image access stays inside the run's roots, the
DataStore's filters and selections drive the views, and the app builds for good and bad runs."""

import io
import json
import os
import re
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from explorer.render import ImageAccessError, ImageSource, check_inside, glyph_raster, overlay


def test_image_access_stays_inside_roots(tmp_path):
    root = tmp_path / "imgs"
    root.mkdir()
    (tmp_path / "secret.png").write_bytes(b"x")
    (root / "link.png").symlink_to(tmp_path / "secret.png")  # a symlink escaping the root
    odd = os.fsencode(root) + b"/caf\xe9 \xff name.png"  # not UTF-8, with spaces
    from PIL import Image

    Image.new("RGB", (20, 30), (10, 200, 30)).save(os.fsdecode(odd), format="PNG")
    images = pd.DataFrame({
        "id": [0, 1, 2, 3],
        "path_bytes": [odd, os.fsencode(root / "link.png"),
                       os.fsencode(root / ".." / "secret.png"), os.fsencode(root / "gone.png")],
    })  # fmt: skip
    src = ImageSource(images, str(root))
    thumb = src.thumbnail(0, 32)
    assert thumb.shape == (32, 32, 3) and tuple(thumb[16, 16]) == (10, 200, 30)
    for bad in (1, 2):  # symlink out of the root, and ../
        with pytest.raises(ImageAccessError, match="outside the run's image roots"):
            src.thumbnail(bad)
    for unknown in (99, "../../etc/passwd", None):
        with pytest.raises(ImageAccessError, match="no image with id"):
            src.path(unknown)
    missing = src.thumbnail(3, 16)  # deleted since the run: a placeholder, not an error
    assert missing.shape == (16, 16, 3)
    # an explicit extra root allows the outside file
    assert check_inside(os.fsencode(tmp_path / "secret.png"), (str(tmp_path),))
    # a sibling whose name merely starts with the root's name is outside
    (tmp_path / "imgs2").mkdir()
    with pytest.raises(ImageAccessError):
        check_inside(os.fsencode(tmp_path / "imgs2" / "a.png"), (str(root),))


def test_overlay_and_glyphs_render():
    rgb = np.full((32, 32, 3), 128, np.uint8)
    heat = np.zeros((4, 4), np.float32)
    heat[0, 0] = 1.0
    out = overlay(rgb, heat, 1.0, "inferno")
    assert out.shape == rgb.shape and not np.array_equal(out[:4, :4], rgb[:4, :4])
    assert np.array_equal(out[-2:, -2:], rgb[-2:, -2:])  # zero relevance leaves the image visible
    from explorer.store import CellStats

    stats = CellStats((0, 1, 0, 1), np.array([[3, 0]]), np.array([[2, 0]]),
                      np.array([[0.7, np.nan]]), np.array([[0.1, np.nan]]),
                      np.array([[0, -1]]), [np.array([0]), np.array([], int)])  # fmt: skip
    r = glyph_raster(stats, {0: rgb}, np.ones((2, 4, 4)), np.array([0.9, np.nan]), 200, 100)
    assert r.shape == (100, 200, 4)
    assert r[:, :100, 3].max() > 0 and r[:, 100:, 3].max() == 0  # empty cell draws nothing


def test_datastore_filters_selection_and_views(small_run, tmp_path):
    from explorer.app import App, load_extensions

    load_extensions()
    app = App(str(small_run), sync_url=False)
    s = app.store
    n = len(s.points)
    assert len(s.selected) == n and "of 120" in s.summary()
    # views read the run through the contract's typed accessors
    assert {"accuracy", "ap", "auc"} <= set(s.run.test_metrics) and s.run.source
    assert all(isinstance(v, float) for v in s.run.test_metrics.values())
    s.labels = ["fake"]
    assert (s.points.label[s.selected] == 1).all() and len(s.selected) == 60
    s.labels = ["real", "fake"]
    x0, x1 = np.percentile(s.points.x, [0, 50])
    y0, y1 = s.points.y.min(), s.points.y.max()
    s.select_box(x0, y0, x1, y1)
    want = np.flatnonzero((s.points.x >= x0) & (s.points.x <= x1))
    assert np.array_equal(np.sort(s.selected), want) and "(box)" in s.summary()
    s.score_range = (0.0, float(np.median(s.points.p_fake)))  # filters narrow a selection
    assert set(s.selected) <= set(want) and (s.points.p_fake[s.selected] <= s.score_range[1]).all()
    s.select_nearest(float(s.points.x[5]), float(s.points.y[5]))
    assert "(tap)" in s.summary()
    s.score_range = (0.0, 1.0)
    s.select_nearest(float(s.points.x[5]), float(s.points.y[5]))
    assert list(s.selected) == [5]
    # every view renders for the selection
    cards = app.images.cards()
    assert cards.html.count("<figure class='asap-card' data-id='5'") == 1
    assert cards.html.count("<figure") == 1
    table = app.dimensions.ranking()
    assert list(table.object.columns[:2]) == ["dimension", "AUC"]
    assert app.patterns.table().alert_type == "info"  # no pattern table: a clear empty state
    s.clear_selection()
    s.color_by = "p_fake"
    assert "color_by=p_fake" in app.share_url() and "score_range" in app.share_url()
    layer = app.overview.points_layer(None, None, 300, 200, "p_fake")
    assert layer.shape == (200, 300, 4) and layer[..., 3].max() > 0  # points were drawn
    g = app.overview.glyph_layer(None, None, 300, 200, 3)
    assert g.shape == (200, 300, 4) and g[..., 3].max() > 0
    data = app.export.payload().getvalue()
    assert len(pd.read_csv(pd.io.common.BytesIO(data))) == n


def test_shared_heat_scale_colour_bar_dimmed_selection_and_glyph_key(small_run):
    """Issue 11, readable: heat maps on one scale shared by the run's images (not each to its
    own maximum) on request, with a colour bar saying which; a selection dims the other points;
    the cell glyph has an on-screen key."""
    import base64

    from explorer.app import App, load_extensions
    from explorer.datastore import SHARED_SCALE_QUANTILE
    from explorer.views import image_card

    load_extensions()
    app = App(str(small_run), sync_url=False)
    s = app.store
    assert s.map_vmax(0) is None and "own maximum" in app.images.scale().object
    s.map_scale = "shared"
    vmax = s.map_vmax(0)
    peaks = s.maps(np.arange(len(s.points)), 0).reshape(len(s.points), -1).max(axis=1)
    assert vmax == pytest.approx(np.quantile(peaks, SHARED_SCALE_QUANTILE))  # 120 < sample size
    assert "shared by all images" in app.images.scale().object and "linear-gradient" in (
        app.images.scale().object)  # fmt: skip
    assert "map_scale=shared" in app.share_url()

    def heat_of(html_card):  # the card's PNG: how far it departs from the bare thumbnail
        png = base64.b64decode(html_card.split("base64,")[1].split("'")[0])
        return np.asarray(Image.open(io.BytesIO(png)), np.float32)

    weakest = int(np.argmin(peaks))  # its own maximum is far below the shared scale's top
    bare = s.images.thumbnail(int(s.points.id[weakest]), 128).astype(np.float32)
    shared = np.abs(heat_of(image_card(s, weakest, 0, 128, vmax)) - bare).mean()
    own = np.abs(heat_of(image_card(s, weakest, 0, 128, None)) - bare).mean()
    assert shared < own  # on the shared scale a weak map is drawn faint, not as a hot spot

    before = app.overview.selection_layer(None, None, 300, 200, None)
    assert before[..., 3].max() == 0  # nothing selected: nothing drawn
    s.select_nearest(float(s.points.x[5]), float(s.points.y[5]))
    after = app.overview.selection_layer(None, None, 300, 200, None)
    veiled = (after[..., 3] == 170).mean()
    assert veiled > 0.95 and (after[..., 3] == 255).any()  # the rest dimmed, the image on top
    # an image clicked in a gallery is ringed in the overview, wherever the selection is
    from explorer.overview import LOCATED_RING
    from explorer.views import Gallery

    cards = app.images.cards()
    assert isinstance(cards, Gallery) and "data-id='5'" in cards.html
    cards.param.update(clicked=int(s.points.id[7]), clicks=cards.clicks + 1)  # as the page does
    assert s.located == int(s.points.id[7])
    ringed = app.overview.selection_layer(None, None, 300, 200, None, s.located)
    ring = np.all(ringed == LOCATED_RING, axis=-1)
    ys, xs = np.nonzero(ring)
    assert 20 < ring.sum() < 400 and np.ptp(xs) <= 20 and np.ptp(ys) <= 20  # one ring, 19 px
    s.locate(10**9)  # an id the run does not have: ignored
    assert s.located == int(s.points.id[7])
    key = app.overview.__panel__()[2]
    assert "frame colour = mean p(fake)" in key.object and key.visible
    s.show_glyphs = False
    assert not key.visible


def test_bad_runs_give_a_clear_page(tmp_path, small_run):
    from explorer.app import create_app

    page = create_app(str(tmp_path / "missing"), sync_url=False)
    assert "does not exist" in page.main[0].object
    partial = tmp_path / "partial"
    shutil.copytree(small_run, partial)
    (partial / "features.parquet").unlink()
    assert "is partial" in create_app(str(partial), sync_url=False).main[0].object
    other = tmp_path / "other"
    shutil.copytree(small_run, other)
    meta = json.loads((other / "run.json").read_text())
    (other / "run.json").write_text(json.dumps({**meta, "schema_version": 99}))
    assert "schema version 99" in create_app(str(other), sync_url=False).main[0].object


def test_serve_command_rejects_a_bad_run(tmp_path, capsys):
    from pipeline.cli import main

    assert main(["serve", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_pattern_view_and_whatif_masking(patterned_run):
    from explorer.app import App, load_extensions

    load_extensions()
    app = App(str(patterned_run[0]), sync_url=False)
    s = app.store
    table = app.patterns.table()
    assert len(table.value) >= 2 and table.value["impact"].is_monotonic_decreasing
    top = int(table.value["pattern"].iloc[0])
    s.pattern = top
    detail = app.patterns.detail()
    assert f"Pattern {top}" in detail[0].object and len(detail[1].objects) > 0
    clear = detail[-1]
    assert clear.name == "Clear pattern highlight"
    clear.clicks += 1  # what a click does
    assert s.pattern is None
    s.pattern = top
    # what-if: masking the most relevant patches of a confidently detected fake lowers p(fake)
    fakes = np.flatnonzero((s.points.label == 1) & (s.points.p_fake > 0.9))
    s.select_rows(fakes[:1], "tap")
    # patches are picked by clicking the image (the page sends the patch's flat index)
    picker = app.whatif.image()[0]
    gh, gw = picker.grid
    picker.param.update(clicked=1 * gw + 2, clicks=picker.clicks + 1)
    assert app.whatif.cells == [(1, 2)] and "1 of 64 patches masked" in app.whatif.image()[1].object
    picker = app.whatif.image()[0]  # redrawn with the patch greyed out
    picker.param.update(clicked=1 * gw + 2, clicks=picker.clicks + 1)  # again: unmasked
    assert app.whatif.cells == []
    app.whatif.mask_top(3)
    assert len(app.whatif.cells) == 3
    app.whatif.run_rescore()
    before, after = (float(v) for v in re.findall(r"\*\*([\d.]+)\*\*", app.whatif.result))
    assert before > 0.9 and after < before, app.whatif.result
    # the random-patch baseline: as many random patches, 8 draws, reproducible
    from explorer.whatif import RANDOM_DRAWS, rescore

    image_id = int(s.points.id[app.whatif.current_row()])
    b2, a2, rand = rescore(s, image_id, list(app.whatif.cells))
    assert abs(b2 - before) < 1e-3 and abs(a2 - after) < 1e-3  # the shown figures, rounded
    assert len(rand) == RANDOM_DRAWS and rand == rescore(s, image_id, list(app.whatif.cells))[2]
    assert f"over {RANDOM_DRAWS} draws" in app.whatif.result
    # the golden model's map points at the evidence: its 3 patches matter far more than random
    # ones (measured 0.018 vs 0.930-0.977)
    assert a2 < min(rand) - 0.3


def test_whatif_checks_the_shown_map_against_occlusion(patterned_run):
    """On demand, occlusion (the causal reference) is computed for the selected image and the
    shown map's top patch is ranked in it; the check is the pipeline's masking, and it is dropped
    when the selection or the map's method changes."""
    import panel as pn
    import torch

    from explorer.app import App, load_extensions
    from explorer.whatif import _model_and_pixels, occlusion_check
    from pipeline.perturb import blurred, masked

    load_extensions()
    app = App(str(patterned_run[0]), sync_url=False)
    s, view = app.store, app.whatif
    fakes = np.flatnonzero((s.points.label == 1) & (s.points.p_fake > 0.9))
    s.select_rows(fakes[:1], "tap")
    view.run_check()
    image_id, method, occ = view.occlusion
    assert image_id == int(s.points.id[view.current_row()]) and method == s.map_method
    assert occ.shape == s.run.relevance.map_shape[1:] and occ.min() >= 0 and occ.max() > 0
    # its top value is the fake logit's drop when that patch and its neighbours are masked
    model, x = _model_and_pixels(s, image_id)
    y, c = np.unravel_index(int(occ.argmax()), occ.shape)
    cells = torch.zeros(1, *occ.shape, dtype=torch.bool)
    cells[:, max(y - 1, 0) : y + 2, max(c - 1, 0) : c + 2] = True
    with torch.no_grad():
        drop = float(model(x)[2][0] - model(masked(x, blurred(model, x), cells))[2][0])
    assert abs(drop - occ[y, c]) < 1e-3 * max(1.0, abs(drop))
    # the reported rank is the shown map's top patch's place in occlusion's order
    shown = s.maps([view.current_row()], 0)[0]
    rank = 1 + int((occ.ravel() > occ.ravel()[int(np.argmax(shown))]).sum())
    assert f"#{rank} of {occ.size}" in view.check, view.check
    # a map ordered as occlusion's ranks first and correlates fully; its reverse does not
    _, rho, first = occlusion_check(s, image_id, occ)
    assert first == 1 and rho == pytest.approx(1.0)
    _, rho_rev, last = occlusion_check(s, image_id, -occ)
    assert last > 1 and rho_rev == pytest.approx(-1.0)
    assert isinstance(view.occlusion_image()[0], pn.pane.PNG)
    s.select_rows(fakes[1:2], "tap")  # another image: the check no longer applies
    assert view.occlusion is None and view.check == ""
    assert isinstance(view.occlusion_image(), pn.pane.Markdown)


def test_a_bad_link_is_dropped_value_by_value_with_notices(patterned_run):
    """Degenerate viewports, an unknown pattern and a bad colour name are ignored and named; the
    link's other values still apply; good values pass untouched."""
    from explorer.datastore import DataStore

    s = DataStore(str(patterned_run[0]))
    s.x_range, s.y_range, s.pattern = (1.0, 0.0), (1e308, -1e308), 999
    s.apply_link_state({"color_by": "purple", "labels": ["real"]})
    assert (s.x_range, s.y_range, s.pattern, s.color_by) == (None, None, None, "label")
    assert s.labels == ["real"]
    text = "\n".join(s.notices)
    for words in ("x_range=[1.0, 0.0] was ignored: empty or reversed",
                  "y_range=[1e+308, -1e+308] was ignored", "pattern=999 was ignored",
                  "color_by='purple' was ignored"):  # fmt: skip
        assert words in text
    assert len(s.notices) == 4
    s.apply_link_state({"color_by": "purple"})  # the same notice is not repeated
    assert len(s.notices) == 4
    x = s.points.x
    s.x_range = (float(x.min()), float(x.max()))
    s.x_range = (float(x.min()), float(x.min()) + 1e-30)  # a speck
    s.pattern = int(s.patterns.patterns["pattern"].iloc[0])
    assert s.x_range is None and s.pattern is not None and len(s.notices) == 5
    s.x_range = (float(x.min()), float(x.max()))
    assert s.x_range == (float(x.min()), float(x.max()))


def test_dimension_histograms_of_one_class_do_not_warn(patterned_run):
    """Only reals shown: the fake histograms are empty, drawn as nothing, with no NaN warnings
    (one per histogram per redraw filled the server log)."""
    import warnings

    from explorer.app import load_extensions
    from explorer.datastore import DataStore
    from explorer.views import DimensionView, density

    load_extensions()
    assert density(np.array([]), np.linspace(0, 1, 5)).tolist() == [0.0] * 4
    v = np.array([0.1, 0.2, 0.9])
    edges = np.linspace(0, 1, 5)
    assert np.allclose(density(v, edges), np.histogram(v, edges, density=True)[0])
    s = DataStore(str(patterned_run[0]), labels=["real"])
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        png = DimensionView(s).histograms()[1]  # what the page draws: one image
    grid = np.asarray(Image.open(io.BytesIO(png.object)).convert("RGB"))
    assert grid.shape == (4 * 84, 4 * 140, 3)
    blue, red = np.array([59, 76, 192]), np.array([180, 4, 38])
    bar = lambda colour: (np.abs(grid.astype(int) - (255 + colour) // 2).sum(-1) < 6).any()  # noqa: E731
    assert bar(blue) and not bar(red)  # real bars drawn; the empty fake class draws nothing


def test_real_is_a_label_not_a_generator(patterned_run):
    """The generator filter lists the fakes' generators only; reals follow the label filter; the
    colouring by generator draws reals grey, not in a generator's colour."""
    from explorer.datastore import DataStore
    from explorer.overview import PALETTE, REAL_GREY, OverviewView

    s = DataStore(str(patterned_run[0]))
    real = s.points.label == 0
    assert "real" not in s.param.generators.objects and s.generators == ["gen_a", "gen_b"]
    s.generators = []
    assert np.array_equal(s.mask, real)  # no generator chosen: the reals only
    s.generators = ["gen_a"]
    gen_a = s.points.generator == list(s.points.generators).index("gen_a")
    assert np.array_equal(s.mask, real | gen_a)
    s.labels = ["fake"]
    assert np.array_equal(s.mask, gen_a)
    keys = OverviewView(s).color_key("generator")
    assert keys["real"] == REAL_GREY and keys["gen_a"] in PALETTE and REAL_GREY not in PALETTE
    s.apply_link_state({"generators": ["real", "gen_b"]})  # a link from before
    assert s.generators == ["gen_b"] and not s.notices


def test_only_the_tab_on_screen_recomputes(patterned_run):
    """A filter change recomputes the tab shown and only marks the hidden ones; a hidden tab
    catches up once, when it is shown (issue 11: hidden tabs rebuilt on every change); a tab's
    components are built the first time it is shown, not with every session."""
    from explorer.app import App, load_extensions

    load_extensions()
    app = App(str(patterned_run[0]), sync_url=False)
    tabs = app.main()[1][1][0]
    views = [app.images, app.patterns, app.dimensions, app.whatif]
    assert [v.shown for v in views] == [True, False, False, False]
    assert [len(holder) for holder in tabs] == [1, 0, 0, 0]
    before = [v.version for v in views]
    app.store.labels = ["real"]
    app.store.opacity = 0.3
    assert [v.version - b for v, b in zip(views, before)] == [2, 0, 0, 0]
    tabs.active = 2  # Dimensions
    assert [v.shown for v in views] == [False, False, True, False]
    assert [len(holder) for holder in tabs] == [1, 0, 1, 0]
    assert [v.version - b for v, b in zip(views, before)] == [2, 0, 1, 0]
    assert "AUC" in app.dimensions.ranking().object.columns
    tabs.active = 2  # shown again, nothing changed: no recompute
    app.store.cmap = "viridis"  # the Images tab is hidden now: not recomputed
    assert [v.version - b for v, b in zip(views, before)] == [2, 0, 2, 0]
    tabs.active = 0
    assert [v.version - b for v, b in zip(views, before)] == [3, 0, 2, 0]


def test_the_selection_travels_in_the_share_link(patterned_run):
    """Box, lasso and tap selections are in the share link as geometry; opening the link selects
    the same images; a selection the run cannot make is dropped with a notice."""
    from urllib.parse import parse_qs, urlparse

    from explorer.app import App, load_extensions
    from explorer.datastore import DataStore

    load_extensions()
    app = App(str(patterned_run[0]), sync_url=False)
    s, p = app.store, app.store.points
    qx, qy = np.quantile(p.x, [0, 0.5]), (float(p.y.min()), float(p.y.max()))
    x, y, big = float(p.x[3]), float(p.y[3]), float(np.ptp(p.x) + np.ptp(p.y))
    lasso = [[x - big, y - 0.01], [x + big, y - 0.01], [x, y + big]]  # point 3 and others
    selections = {
        "box": lambda: s.select_box(qx[0], qy[0], qx[1], qy[1]),
        "lasso": lambda: s.select_lasso(lasso),
        "tap": lambda: s.select_nearest(float(p.x[7]), float(p.y[7])),
    }
    for kind, select in selections.items():
        select()
        want = s.selected.copy()
        assert 0 < len(want) < len(p)
        link = parse_qs(urlparse(app.share_url()).query)
        geometry = json.loads(link["selection"][0])
        assert list(geometry) == [kind]
        other = DataStore(str(patterned_run[0]))
        other.apply_link_state({"selection": geometry})
        assert np.array_equal(other.selected, want) and f"({kind})" in other.summary()
        assert other.notices == []
    s.clear_selection()
    assert "selection" not in app.share_url()
    for bad in ({"box": [0, "a", 1, 2]}, {"tap": -5}, {"lasso": [[0, 0]]}, {"circle": 1}):
        other = DataStore(str(patterned_run[0]))
        other.apply_link_state({"selection": bad})
        assert other.selection is None and len(other.selected) == len(p)
        assert any("selection=" in n for n in other.notices), bad


def test_thumbnail_cache_is_bounded_in_bytes():
    from explorer.render import ByteBoundedCache

    cache = ByteBoundedCache(max_bytes=10_000)
    tiles = [np.full((30, 30, 3), i, np.uint8) for i in range(6)]  # 2,700 bytes each
    for i, t in enumerate(tiles[:3]):
        cache.put(i, t)
    assert cache.get(0) is tiles[0]  # 0 is now the most recently used
    cache.put(3, tiles[3])  # 10,800 bytes > 10,000: the least recently used (1) goes
    assert cache.get(1) is None and cache.get(0) is tiles[0] and cache.get(3) is tiles[3]
    assert cache.bytes == 3 * 2_700 <= cache.max_bytes and len(cache) == 3
    cache.put(9, np.zeros(20_000, np.uint8))  # larger than the whole cache: not kept
    assert cache.get(9) is None and cache.bytes == 8_100


def test_overview_shading_and_compositing_match_references():
    """The overview's own shading (issue 11: tf.shade took 90 ms a frame, dynspread's kernels 6 s
    to compile) gives datashader's colours and eq_hist opacities within one level and
    dynspread's footprint exactly, on dense and sparse points; compositing equals the
    straight-alpha "over" operator."""
    import datashader as ds
    import datashader.transfer_functions as tf

    from explorer.overview import (
        P_FAKE_COLORS,
        composite,
        dynspread,
        shade_categories,
        shade_mean,
    )

    rng = np.random.default_rng(0)
    for n in (300, 200_000):
        df = pd.DataFrame({"x": rng.normal(size=n), "y": rng.normal(size=n), "v": rng.random(n),
                           "c": pd.Categorical(rng.choice(["a", "b", "c"], n))})  # fmt: skip
        cvs = ds.Canvas(240, 160, (-3, 3), (-3, 3))
        agg = cvs.points(df, "x", "y", ds.count_cat("c"))
        key = {"a": "#ff0000", "b": "#00aa00", "c": "#2040ff"}
        ours = shade_categories(agg, [key[c] for c in agg.coords["c"].values])
        ref = tf.shade(agg, color_key=key, how="eq_hist", min_alpha=60)
        a, b = (np.asarray(i.data).view(np.uint8).reshape(160, 240, 4).astype(int)
                for i in (ours, ref))  # fmt: skip
        drawn = b[..., 3] > 0
        assert np.array_equal(a[..., 3] > 0, drawn) and drawn.sum() > 100
        assert np.abs(a - b)[drawn].max() <= 1
        spread = dynspread(np.asarray(ours.data), threshold=0.8, max_px=4)
        ref = np.asarray(tf.dynspread(ours, threshold=0.8, max_px=4).data)
        assert np.array_equal(spread >> 24 > 0, ref >> 24 > 0)
        assert (spread >> 24 > 0).sum() > drawn.sum() or n > 1000  # sparse points grew
        wider = dynspread(np.asarray(ours.data), threshold=0.8, max_px=4, min_px=1)
        assert ((wider >> 24 > 0) >= (spread >> 24 > 0)).all()  # a floor only ever adds
        assert (wider >> 24 > 0).sum() > (spread >> 24 > 0).sum() or n < 1000
        agg = cvs.points(df, "x", "y", ds.mean("v"))
        ours, ref = shade_mean(agg, P_FAKE_COLORS), tf.shade(agg, cmap=P_FAKE_COLORS,
                                                             span=(0, 1), how="linear")  # fmt: skip
        a, b = (np.asarray(i.data).view(np.uint8).reshape(160, 240, 4).astype(int)
                for i in (ours, ref))  # fmt: skip
        assert np.array_equal(a[..., 3] > 0, b[..., 3] > 0)
        assert np.abs(a - b)[b[..., 3] > 0].max() <= 1
    layers = [rng.integers(0, 256, (30, 40, 4), dtype=np.uint8) for _ in range(3)]
    layers[1][..., 3] = 0  # nothing drawn
    layers[2][5:, :, 3] = 0  # a few pixels drawn
    out = np.full((30, 40, 3), 255.0)
    for layer in layers:
        alpha = layer[..., 3:4] / 255
        out = layer[..., :3] * alpha + out * (1 - alpha)
    got = composite(layers)
    # each layer rounds to whole levels once: at most half a level per layer drawn
    assert (got[..., 3] == 255).all() and np.abs(got[..., :3] - out).max() <= 0.5 * 3


def test_overview_figure_follows_the_page(small_run):
    """The overview is one Bokeh figure per session: the page's size, zoom and pan, box, lasso
    and tap reach the DataStore, and every change draws one frame at the size shown. An image
    located outside the viewport pans the overview to it."""
    from bokeh.events import RangesUpdate, SelectionGeometry

    from explorer.app import App, load_extensions
    from explorer.store import box_select, lasso_select

    load_extensions()
    app = App(str(small_run), sync_url=False)
    s, ov = app.store, app.overview
    fig = ov.figure()
    image = fig.renderers[0].data_source
    assert image.data["image"][0].shape == (600, 900)  # before the page reports its size
    frames = ov.frames
    fig.tags = [320, 240]  # what the page reports (SIZE_JS)
    assert image.data["image"][0].shape == (240, 320) and ov.frames == frames + 1
    p = s.points
    x0, x1 = float(np.percentile(p.x, 20)), float(np.percentile(p.x, 70))
    y0, y1 = float(p.y.min()), float(np.percentile(p.y, 60))
    fig._trigger_event(RangesUpdate(fig, x0=x0, x1=x1, y0=y0, y1=y1))  # a zoom
    assert s.x_range == (x0, x1) and s.y_range == (y0, y1)
    assert image.data["x"] == [x0] and image.data["dw"] == [pytest.approx(x1 - x0)]
    assert ov.frames == frames + 2
    fig._trigger_event(SelectionGeometry(fig, final=False, geometry={"type": "rect", "x0": x0,
                       "x1": x1, "y0": y0, "y1": y1}))  # fmt: skip
    assert s.selection_kind == "none"  # only the final geometry selects
    fig._trigger_event(SelectionGeometry(fig, final=True, geometry={"type": "rect", "x0": x0,
                       "x1": x1, "y0": y0, "y1": y1}))  # fmt: skip
    assert s.selection_kind == "box"
    assert np.array_equal(np.sort(s.selected), np.sort(box_select(p, x0, x1, y0, y1, s.mask)))
    poly = np.array([[x0, y0], [x1, y0], [x0, y1]])
    fig._trigger_event(SelectionGeometry(fig, final=True, geometry={"type": "poly",
                       "x": list(poly[:, 0]), "y": list(poly[:, 1])}))  # fmt: skip
    assert s.selection_kind == "lasso"
    assert np.array_equal(np.sort(s.selected), np.sort(lasso_select(p, poly, s.mask)))
    fig._trigger_event(SelectionGeometry(fig, final=True, geometry={"type": "point",
                       "x": float(p.x[7]), "y": float(p.y[7])}))  # fmt: skip
    assert s.selection_kind == "tap" and list(s.selected) == [7]
    frame = image.data["image"][0].copy()
    s.labels = ["fake"]  # a filter: a new frame
    assert not np.array_equal(image.data["image"][0], frame)
    s.labels = ["real", "fake"]
    outside = int(np.argmax(p.x))  # right of the zoomed viewport
    assert p.x[outside] > x1
    s.locate(int(p.id[outside]))
    lo, hi = fig.x_range.start, fig.x_range.end
    assert lo <= p.x[outside] <= hi and hi - lo == pytest.approx(x1 - x0)
    assert s.x_range == pytest.approx((lo, hi))


def test_sessions_share_layers_and_cards(small_run):
    """A second session on the same view reuses the first one's overview layers and image
    cards (issue 11: most sessions open on the same view), and its own changes do not leak."""
    from explorer.app import App, load_extensions

    load_extensions()
    a, b = App(str(small_run), sync_url=False), App(str(small_run), sync_url=False)
    fa, fb = a.overview.frame(), b.overview.frame()
    assert np.array_equal(fa, fb)
    assert a.overview._layers["points"][1] is b.overview._layers["points"][1]
    assert not a.overview._layers["points"][1].flags.writeable  # shared: read-only
    assert a.images.cards().html == b.images.cards().html
    b.store.color_by = "p_fake"
    assert not np.array_equal(b.overview.frame(), fa)
    assert np.array_equal(a.overview.frame(), fa)
