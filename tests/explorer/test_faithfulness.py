"""How much to trust the maps (issue 9, item 5), server side: the explorer names the method of
every map and shows the run's measured faithfulness next to them, the fake map switches among the
methods the run stored (every fake overlay follows, and the share link keeps it), and patterns
whose impact is not significant are marked."""

import base64
import io
import re
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline.metrics import faithfulness_summary
from pipeline.schema import (
    FAITHFULNESS_COLUMNS,
    PATTERN_COLUMNS,
    PATTERN_MEMBER_COLUMNS,
    RANDOM_ORDER,
    open_run,
    read_table,
    write_table,
)

MINUS = "\u2212"


@pytest.fixture(scope="module")
def make_app():
    from explorer.app import App, load_extensions

    load_extensions()
    return lambda run_dir: App(str(run_dir), sync_url=False)


def png_pixels(pane) -> np.ndarray:
    png = pane.pixels() if hasattr(pane, "pixels") else pane.object  # the what-if picker
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def gallery_pixels(pane, i: int = 0) -> np.ndarray:
    """The ``i``-th image of an HTML gallery (PNG data URLs)."""
    src = re.findall(r"src='data:image/png;base64,([^']+)'", pane.html)[i]
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(src))).convert("RGB"))


def number(text: str) -> float:
    return float(text.replace(MINUS, "-"))


def write_faithfulness(run_dir, n: int = 40, seed: int = 0) -> pd.DataFrame:
    """Write a long faithfulness table over n of the run's images, one row per (image, order):
    each stored method's order a different amount better than random, paired per image. Returns
    the table as stored."""
    run = open_run(run_dir, lean=True)
    ids = run.images["id"].to_numpy()[:n]
    rng = np.random.default_rng(seed)
    base = rng.uniform(0.4, 0.7, n)  # how hard each image is, shared by all orders
    p_fake = rng.uniform(0.5, 1.0, n)  # each image's score, the same in every order's rows
    orders = [*run.relevance.methods, RANDOM_ORDER]
    shift = {m: -0.25 + 0.08 * i for i, m in enumerate(run.relevance.methods)}
    shift[RANDOM_ORDER] = 0.0
    faith = pd.concat(
        pd.DataFrame(
            {
                "id": ids,
                "method": m,
                "p_fake": p_fake,
                "deletion_auc": base + shift[m] + rng.normal(0, 0.05, n),
                "insertion_auc": 1 - base - shift[m] + rng.normal(0, 0.05, n),
            }
        )
        for m in orders
    )
    write_table(run.paths.faithfulness, faith, FAITHFULNESS_COLUMNS)
    return read_table(run.paths.faithfulness, FAITHFULNESS_COLUMNS)  # as stored: float32


def versus(text: str, what: str) -> tuple[float, float, float, float]:
    """(other's deletion area, Δ, CI low, CI high) as printed after 'vs {what}'."""
    num = rf"([+{MINUS}]?[\d.]+)"
    m = re.search(rf"vs {what} {num} \(Δ {num}, 95% CI {num}…{num}", text)
    assert m, text
    return tuple(number(g) for g in m.groups())


def test_faithfulness_is_shown_next_to_the_maps(small_run, tmp_path, make_app):
    app = make_app(small_run)  # the fixture's run has no pattern stage: say how to measure it
    own = app.store.run.relevance.methods[0]
    text = app.images.trust().object
    assert f"Fake map by {own}" in text and "chefer_last" in text
    assert "no faithfulness table" in text and f"`asap patterns {small_run}`" in text

    run_dir = tmp_path / "run"
    shutil.copytree(small_run, run_dir)
    faith = write_faithfulness(run_dir)
    summary = faithfulness_summary(faith, own)
    app = make_app(run_dir)
    s = app.store
    assert "attention" in s.run.relevance.methods[1:]  # the default comparison methods
    text = app.images.trust().object
    assert (
        f"Shown: **fake** map by **{own}**" in text and "d00–d15 always by **chefer_last**" in text
    )
    want = summary[own]
    assert f"**Fake map by {own}** — deletion area {want['deletion']:.2f} " in text
    assert f"measured on {want['images']} images" in text
    for what, key, other in (
        ("random", "vs_random", RANDOM_ORDER),
        ("plain attention", "vs_attention", "attention"),
    ):
        area, delta, lo, hi = versus(text, what)
        d = want[key]
        assert area == round(summary[other]["deletion"], 2)
        assert (delta, lo, hi) == tuple(round(d[k], 2) for k in ("mean", "lo", "hi"))
        assert d["hi"] < 0 and "more faithful" in text  # the planted maps beat both
    # split by the detector's confidence, with each band's number of images
    for band, label in (("sure", "p(fake) \u2265 0.9"), ("unsure", "p(fake) < 0.9")):
        d = want["vs_random_by_confidence"][band]
        assert (
            f"{label}, {d['images']} images: \u0394 {d['mean']:+.2f}".replace("-", MINUS) in text
        ), (band, text)
    n_sure = int((faith.groupby("id")["p_fake"].first() >= 0.9).sum())
    assert want["vs_random_by_confidence"]["sure"]["images"] == n_sure
    assert want["vs_random_by_confidence"]["unsure"]["images"] == 40 - n_sure
    # the typed accessor carries faithfulness_summary's numbers unchanged
    from explorer.patterns import load_faithfulness

    acc = load_faithfulness(s.run)
    assert acc.run_method == own and list(acc.methods) == list(summary)
    assert acc.of(own).vs_random.se == want["vs_random"]["se"]

    s.map_method = "attention"  # the note follows the fake map shown
    text = app.images.trust().object
    att = summary["attention"]
    assert f"**Fake map by attention** — deletion area {att['deletion']:.2f} " in text
    assert "(this is plain attention)" in text and f"by **{own}**" in text
    s.map_name = "d03"
    assert "Shown: **d03** map by **chefer_last**" in app.images.trust().object


def test_method_switch_changes_every_fake_overlay(small_run, make_app):
    from explorer.render import overlay
    from explorer.store import cell_patterns, cell_stats

    app = make_app(small_run)
    s, rel = app.store, app.store.run.relevance
    assert s.param.map_method.objects == rel.methods and s.map_method == rel.methods[0]
    other = rel.methods[-1]
    assert other != rel.methods[0]
    row = int(np.argmax(s.points.p_fake))
    part, prow, img_id = s.points.part[[row]], s.points.row[[row]], int(s.points.id[row])
    s.select_rows(np.array([row]), "tap")

    def card() -> np.ndarray:
        return gallery_pixels(app.images.cards())

    def expected(method, size=128, channel=0) -> np.ndarray:
        heat = rel.fake_maps(part, prow, method)[0] if channel == 0 else rel.take(part, prow)[0, 1]
        return overlay(s.images.thumbnail(img_id, size), heat, s.opacity, s.cmap)

    assert not np.array_equal(expected(rel.methods[0]), expected(other))  # a visible switch
    assert np.array_equal(card(), expected(rel.methods[0]))
    s.map_method = other
    assert np.array_equal(card(), expected(other))
    assert np.array_equal(png_pixels(app.whatif.image()[0]), expected(other, 256))
    assert f"fake map by {other}" in app.whatif.image()[1].object
    s.map_name = "real"  # the other channels stay the run's own
    assert np.array_equal(card(), expected(None, channel=1))
    s.map_name = "fake"
    # the cell glyphs' mean maps are those of the chosen method
    o = app.overview
    stats = cell_stats(s.points, (*o.full_x, *o.full_y), 3, 2, s.mask)
    pats, _ = cell_patterns(s.run, s.points, stats, 0, other)
    for c, members in enumerate(stats.members):
        if len(members):
            maps = rel.fake_maps(s.points.part[members], s.points.row[members], other)
            np.testing.assert_allclose(pats[c], maps.mean(axis=0), rtol=1e-5, atol=1e-7)
    own_pats, _ = cell_patterns(s.run, s.points, stats, 0, None)
    assert not np.allclose(pats, own_pats)
    # the share link keeps the method
    assert f"map_method={other}" in app.share_url()


def write_patterns(run_dir) -> pd.DataFrame:
    """Three patterns over the run's images: 0 and 2 significant, 1 not (its interval holds 0);
    2 unstable."""
    run = open_run(run_dir, lean=True)
    gh, gw = run.relevance.map_shape[1:]
    ids = run.images["id"].to_numpy()
    table = pd.DataFrame(
        {
            "pattern": [0, 1, 2],
            "n_patches": 12,
            "n_images": 6,
            "n_fake_images": 5,
            "fake_share": 5 / 6,
            "impact": [0.30, 0.20, 0.10],
            "impact_lo": [0.22, -0.04, 0.06],
            "impact_hi": [0.38, 0.41, 0.14],
            "random_impact": 0.01,
            "random_lo": -0.01,
            "random_hi": 0.03,
            "local_impact": [0.25, 0.01, 0.02],  # pattern 0 local, 2 spread
            "local_lo": [0.18, -0.02, 0.00],
            "local_hi": [0.31, 0.04, 0.05],
            "local_random_impact": 0.01,
            "local_random_hi": 0.03,
            "top_dims": "d01,d02",
            "mean_gy": 1.0,
            "mean_gx": 1.0,
            "significant": [True, False, True],
            "stability": [0.92, 0.81, 0.41],  # pattern 2: an unstable grouping
        }
    )
    rng = np.random.default_rng(0)
    members = pd.DataFrame(
        {
            "pattern": np.repeat([0, 1, 2], 12),
            "id": np.tile(np.repeat(ids[:6], 2), 3),
            "gy": rng.integers(0, gh, 36),
            "gx": rng.integers(0, gw, 36),
            "relevance": rng.uniform(0, 1, 36),
            "distance": rng.uniform(0, 1, 36),
            "exemplar": np.tile([1, 2, 0, 0, 0, 0], 6),
        }
    )
    write_table(run.paths.pattern_members, members, PATTERN_MEMBER_COLUMNS)
    write_table(run.paths.patterns, table, PATTERN_COLUMNS)
    return table


def test_non_significant_patterns_are_marked(small_run, tmp_path, make_app):
    run_dir = tmp_path / "run"
    shutil.copytree(small_run, run_dir)
    write_patterns(run_dir)
    app = make_app(run_dir)
    table = app.patterns.table().value
    assert list(table["pattern"]) == [0, 1, 2] and table["impact"].is_monotonic_decreasing
    assert list(table["significant"]) == ["yes", "not significant", "yes"]
    app.store.pattern = 1
    head = app.patterns.detail()[0].object
    assert "**Pattern 1**" in head and "impact not significant" in head
    assert f"(95% CI {MINUS}0.04…0.41)" in head
    app.store.pattern = 0
    head = app.patterns.detail()[0].object
    assert "**Pattern 0**" in head and "not significant" not in head
    assert "unstable" not in head
    assert "its own patches only: 0.25 (95% CI 0.18…0.31)" in head and "**local evidence**" in head
    assert np.allclose(table["stability"], [0.92, 0.81, 0.41])
    app.store.pattern = 2
    head = app.patterns.detail()[0].object
    assert "not significant" not in head and "**unstable grouping** (stability 0.41 < 0.75)" in head
    assert "**spread evidence**" in head and "local evidence" not in head


def test_patterns_of_a_run_made_before_stability_still_open(small_run, tmp_path, make_app):
    run_dir = tmp_path / "run"
    shutil.copytree(small_run, run_dir)
    write_patterns(run_dir)
    write_faithfulness(run_dir)
    path = run_dir / "patterns.parquet"
    local = ["local_impact", "local_lo", "local_hi", "local_random_impact", "local_random_hi"]
    pd.read_parquet(path).drop(columns=["stability", *local]).to_parquet(path)
    app = make_app(run_dir)
    assert app.patterns.table().value["stability"].isna().all()
    app.store.pattern = 2
    head = app.patterns.detail()[0].object
    assert "**Pattern 2**" in head and "unstable" not in head  # unknown, so no verdict
    assert "own patches" not in head and "evidence" not in head
    from pipeline.cli import _info

    assert all(p["stability"] is None for p in _info(str(run_dir))["patterns"])


def test_a_detector_at_chance_is_said_above_its_maps(small_run, tmp_path, make_app):
    import json

    from pipeline.trust import detector_check

    run_dir = tmp_path / "run"
    shutil.copytree(small_run, run_dir)
    metrics_file = run_dir / "model" / "metrics.json"
    metrics = json.loads(metrics_file.read_text())
    labels = np.r_[np.zeros(40), np.ones(40)]
    for scores, alerted in ((np.full(80, 0.5), True), (np.linspace(0, 1, 80), False)):
        metrics["detector"] = detector_check(labels, scores)
        metrics_file.write_text(json.dumps(metrics))
        app = make_app(run_dir)
        trust = app.images.trust().object
        alerts = [o for o in app.sidebar()
                  if "asap-detector-alert" in getattr(o, "css_classes", [])]  # fmt: skip
        assert ("**Not evidence:** the detector is at chance" in trust) is alerted
        assert len(alerts) == int(alerted)
        assert f"Fake map by {app.store.map_method}" in trust  # the faithfulness note stays
        if alerted:
            assert "AUC 0.500, 95% CI 0.3" in trust and "cannot tell" in alerts[0].object
