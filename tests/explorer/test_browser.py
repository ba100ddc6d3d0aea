"""The served explorer in a real browser: Debian's chromium driven by Playwright (never
`playwright install`). The page loads without console errors, the overview draws, a box selection
changes the image, pattern and dimension views, a filter changes the overview, export returns the
selected rows, the view state survives in the URL, and so does the fake map's method."""

import io
import os
import re
import socket
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc, timeout: float = 60) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stdout.read()}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"nothing listens on port {port} after {timeout} s")


@pytest.fixture(scope="module")
def server(patterned_run):
    port = free_port()
    run_dir = str(patterned_run[0])
    cmd = [sys.executable, "-m", "pipeline.cli", "serve", run_dir, "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for_port(port, proc)
        yield f"http://127.0.0.1:{port}/asap"
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.fail("Debian's chromium is missing: `apt-get install chromium` (make test does it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


class Page:
    """A loaded explorer page that records console errors."""

    def __init__(self, browser, url, size=(1500, 1000)):
        self.page = browser.new_page(viewport={"width": size[0], "height": size[1]},
                                     accept_downloads=True)  # fmt: skip
        self.errors = []
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.goto(url)
        self.summary()  # waits for the session to render

    def summary(self) -> str:
        loc = self.page.get_by_text(re.compile(r"images \(.*\) ·"))
        loc.wait_for(timeout=90_000)
        return loc.inner_text()

    def wait_summary(self, pattern: str, timeout=30) -> str:
        end = time.time() + timeout
        while time.time() < end:
            text = self.summary()
            if re.search(pattern, text):
                return text
            time.sleep(0.3)
        raise AssertionError(f"summary never matched {pattern!r}; last: {text!r}")

    def overview(self):
        """The largest canvas on the page: the overview plot."""
        canvases = self.page.locator("canvas")
        best, area = None, 0
        for i in range(canvases.count()):
            box = canvases.nth(i).bounding_box()
            if box and box["width"] * box["height"] > area:
                best, area = canvases.nth(i), box["width"] * box["height"]
        return best

    def overview_pixels(self) -> np.ndarray:
        from PIL import Image

        png = self.overview().screenshot()
        return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), np.int16)

    def first_image(self) -> str:
        return self.page.locator("img[src^='data:image/png']").first.get_attribute("src")


def open_tab(page, name: str) -> None:
    page.locator(".bk-tab").filter(has_text=name).first.click()


def settle(page, check, timeout=30):
    end = time.time() + timeout
    while time.time() < end:
        if check():
            return True
        time.sleep(0.3)
    return False


def test_page_loads_and_overview_draws(server, browser):
    p = Page(browser, server)
    assert "800 images (all filtered images)" in p.summary()
    assert settle(p, lambda: p.overview_pixels().std() > 10), "the overview stayed blank"
    assert p.errors == []


def test_every_asset_comes_from_the_server_itself(server, browser):
    """No CDN: every request the page makes, on load and on every tab, goes to ASAP's server."""
    page = browser.new_page(viewport={"width": 1500, "height": 1000})
    requests = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(server)
    page.get_by_text(re.compile(r"images \(.*\) ·")).wait_for(timeout=90_000)
    for i in range(page.locator(".bk-tab").count()):
        page.locator(".bk-tab").nth(i).click()
        page.wait_for_timeout(500)
    page.close()
    own = server.split("/asap")[0]
    foreign = [u for u in requests if not (u.startswith(own) or u.startswith(("data:", "blob:")))]
    assert len(requests) > 5 and foreign == []


def test_a_bad_link_gives_a_page_with_a_notice(server, browser):
    bad = ('?x_range=[1,0]&y_range=[1e308,-1e308]&pattern=999&color_by="purple"'
           '&labels=["real"]')  # fmt: skip
    p = Page(browser, server + bad)
    assert p.wait_summary(r"^400 images").startswith("400 images")  # the good part applied
    notice = p.page.get_by_text("Not shown from the link")
    notice.wait_for(timeout=30_000)
    assert settle(p, lambda: p.overview_pixels().std() > 10), "the overview stayed blank"
    for words in ("x_range=[1, 0] was ignored", "pattern=999 was ignored", "purple"):
        assert p.page.get_by_text(words).count() >= 1, words
    assert p.errors == []


def test_box_selection_drives_every_view(server, browser):
    p = Page(browser, server)
    page = p.page
    before_img = p.first_image()
    open_tab(page, "Dimensions")
    dims_before = page.locator(".asap-dimensions table").first.inner_text()
    open_tab(page, "Patterns")
    pats_before = page.locator(".tabulator").first.inner_text()
    open_tab(page, "Images")
    page.locator("[title='Box Select']").first.click()
    box = p.overview().bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.02, box["y"] + box["height"] * 0.02)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.98, steps=8)
    page.mouse.up()
    text = p.wait_summary(r"\(box\)")
    n = int(re.search(r"([\d,]+) images", text).group(1).replace(",", ""))
    assert 0 < n < 800
    assert settle(p, lambda: p.first_image() != before_img), "image view did not change"
    open_tab(page, "Dimensions")
    assert settle(
        p, lambda: page.locator(".asap-dimensions table").first.inner_text() != dims_before
    )
    open_tab(page, "Patterns")
    assert settle(p, lambda: page.locator(".tabulator").first.inner_text() != pats_before)
    # export returns exactly the selected rows
    with page.expect_download() as dl:
        page.get_by_role("button", name="Export selection").click()
    exported = pd.read_csv(dl.value.path())
    assert len(exported) == n and {"path", "label", "generator", "p_fake"} <= set(exported)
    # the share link carries the selection: opening it selects the same images
    share = page.locator(".asap-share input")
    assert settle(p, lambda: "selection=" in share.input_value()), share.input_value()
    q = Page(browser, share.input_value())
    assert q.wait_summary(r"\(box\)").startswith(f"{n:,} images (box)")
    assert p.errors == [] and q.errors == []


def test_filter_changes_overview_and_url(server, browser):
    p = Page(browser, server)
    page = p.page
    assert settle(p, lambda: p.overview_pixels().std() > 10)
    before = p.overview_pixels()
    page.get_by_role("button", name="fake", exact=True).first.click()  # label filter: real only
    p.wait_summary(r"^400 images")
    assert settle(p, lambda: np.abs(p.overview_pixels() - before).sum() > 0), "overview unchanged"
    page.get_by_role("button", name="p_fake", exact=True).click()
    share = page.locator(".asap-share input")
    assert settle(p, lambda: "color_by=p_fake" in share.input_value()), share.input_value()
    shared = share.input_value()
    assert shared.startswith(server)
    q = Page(browser, shared)  # the shared URL restores filters and colouring
    assert q.summary().startswith("400 images")
    restored = q.page.locator(".asap-share input").input_value()
    assert "color_by=p_fake" in restored and "labels=%5B%22real%22%5D" in restored
    assert p.errors == [] and q.errors == []


def test_error_page_for_a_bad_run(browser, tmp_path):
    port = free_port()
    cmd = [sys.executable, "-m", "panel", "serve", "explorer/serve.py", "--port", str(port),
           "--args", str(tmp_path / "missing")]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for_port(port, proc)
        page = browser.new_page()
        page.goto(f"http://127.0.0.1:{port}/serve")
        page.get_by_text("Cannot open this run").wait_for(timeout=60_000)
        assert "does not exist" in page.get_by_text("does not exist").inner_text()
    finally:
        proc.terminate()
        proc.wait(10)


def test_a_panel_option_after_args_gets_a_page_not_an_exit(browser, patterned_run):
    """`panel serve explorer/serve.py --args RUN --port 5098`: Panel hands --port to the app,
    which says where it belongs; the server keeps serving."""
    port = free_port()
    cmd = [sys.executable, "-m", "panel", "serve", "explorer/serve.py", "--port", str(port),
           "--args", str(patterned_run[0]), "--port", "5098"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for_port(port, proc)
        for _ in range(2):  # a second request still finds the server
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{port}/serve")
            page.get_by_text("put Panel's options").wait_for(timeout=60_000)
            assert "--port 5098" in page.get_by_text("put Panel's options").inner_text()
            page.close()
        assert proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(10)


def test_fake_map_method_switch_and_share_link(server, browser):
    """Switching the fake map's method redraws the images, names the method next to them, and the
    share link reopens the same method."""
    p = Page(browser, server)
    page = p.page
    note = page.locator(".asap-maps p").first
    note.wait_for(timeout=30_000)
    method = page.locator("select").filter(has_text="attention").first
    own = method.input_value()  # the run's own method
    assert own != "attention" and f"Fake map by {own}" in note.inner_text()
    assert "chefer_last" in note.inner_text()  # the dimension maps' method is named too
    before = p.first_image()
    method.select_option("attention")
    assert settle(p, lambda: p.first_image() != before), "images kept the old method's map"
    assert settle(p, lambda: "Fake map by attention" in note.inner_text()), note.inner_text()
    share = page.locator(".asap-share input")
    assert settle(p, lambda: "map_method=attention" in share.input_value()), share.input_value()
    q = Page(browser, share.input_value())
    restored = q.page.locator(".asap-maps p").first
    restored.wait_for(timeout=30_000)
    assert settle(q, lambda: "Fake map by attention" in restored.inner_text())
    assert p.errors == [] and q.errors == []


def test_clicking_an_image_rings_it_in_the_overview(server, browser):
    """Issue 11: an image clicked in a view is located in the overview (a magenta ring), in the
    real page: the click travels from the gallery element to the server and back as pixels."""
    from explorer.overview import LOCATED_RING

    p = Page(browser, server)
    assert settle(p, lambda: p.overview_pixels().std() > 10), "the overview stayed blank"

    def ring_pixels() -> int:
        px = p.overview_pixels()
        return int((np.abs(px - np.array(LOCATED_RING[:3])).sum(axis=-1) < 40).sum())

    assert ring_pixels() == 0
    p.page.locator("figure.asap-card").nth(2).click()
    assert settle(p, lambda: ring_pixels() > 20), "no ring appeared in the overview"
    assert p.errors == []


def test_whatif_patches_are_picked_on_the_image(server, browser):
    """Issue 11: the what-if view's patches are chosen by clicking the image, not from a list;
    a second click on the same patch unmasks it. Issue 9: occlusion checks the shown map."""
    p = Page(browser, server)
    open_tab(p.page, "What-if")
    picker = p.page.locator("img.asap-patch-picker")
    picker.wait_for(timeout=30_000)
    box = picker.bounding_box()
    for n in (1, 0):  # masked, then unmasked again
        p.page.mouse.click(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.6)
        caption = p.page.get_by_text(f"{n} of 64 patches masked")
        caption.wait_for(timeout=30_000)
        picker = p.page.locator("img.asap-patch-picker")
        picker.wait_for(timeout=30_000)
        box = picker.bounding_box()
    # the causal check on demand: occlusion's map of this image appears beside it
    p.page.get_by_role("button", name="Check the map with occlusion").click()
    p.page.get_by_text("re-scorings").first.wait_for(timeout=60_000)
    p.page.get_by_text("occlusion's fake map").first.wait_for(timeout=30_000)
    assert p.errors == []


def test_hover_shows_the_image_card(server, browser):
    """Issue 11: hovering a point of the overview shows its card: thumbnail (served by id), id,
    label, generator and p(fake)."""
    p = Page(browser, server)
    assert settle(p, lambda: p.overview_pixels().std() > 10), "the overview stayed blank"
    box = p.overview().bounding_box()
    tooltip = p.page.locator(".bk-Tooltip, .bk-tooltip").filter(has_text="p(fake)")
    shown = False
    for fx in np.linspace(0.1, 0.9, 9):  # sweep across the overview until a point is hit
        for fy in np.linspace(0.1, 0.9, 9):
            p.page.mouse.move(box["x"] + box["width"] * fx, box["y"] + box["height"] * fy)
            p.page.wait_for_timeout(60)
            if tooltip.count() and tooltip.first.is_visible():
                shown = True
                break
        if shown:
            break
    assert shown, "no hover card over any point of the overview"
    card = p.page.get_by_text(re.compile(r"#\d+ · (real|fake) · .*p\(fake\) [01]\.\d{3}"))
    assert card.count() >= 1 and card.first.is_visible()
    img = p.page.locator("img[src*='/asap-thumb/']")  # any shadow depth
    assert img.count() >= 1
    assert settle(p, lambda: img.first.evaluate("e => e.complete && e.naturalWidth") == 96)
    assert p.errors == []


def test_fits_a_1280x720_screen(server, browser):
    """Issue 11: at 1280x720 the side pane no longer runs off the page: every control of the
    Images tab (the sort order last), the Dimensions tab's histograms and the Patterns tab's
    first four columns (pattern, impact, significant, stability; untruncated) are inside it."""
    page = browser.new_page(viewport={"width": 1280, "height": 720})
    page.goto(server)
    page.get_by_text(re.compile(r"images \(.*\) ·")).wait_for(timeout=90_000)
    sort = page.locator("select").filter(has_text="p(fake) high first").first
    sort.wait_for(timeout=30_000)
    box = sort.bounding_box()
    assert box["x"] + box["width"] <= 1280, box
    open_tab(page, "Dimensions")
    hist = page.locator(".asap-histograms img").first
    hist.wait_for(timeout=30_000)
    box = hist.bounding_box()
    assert box["x"] + box["width"] <= 1280, box
    # the pattern table's verdict columns come first and are readable without scrolling
    open_tab(page, "Patterns")
    table = page.locator(".tabulator").first
    table.wait_for(timeout=30_000)
    right = table.bounding_box()
    right = right["x"] + right["width"]
    for name in ("pattern", "impact", "significant", "stability"):
        title = table.locator(".tabulator-col-title").filter(has_text=re.compile(f"^{name}$"))
        assert title.count() == 1, name
        box = title.first.bounding_box()
        assert box["x"] + box["width"] <= right, (name, box, right)
        full, shown = title.first.evaluate("e => [e.scrollWidth, e.clientWidth]")
        assert full <= shown, f"header {name!r} is truncated ({full} > {shown} px)"
    page.close()


def test_the_page_fits_1280_by_720(server, browser):
    """Issue 11: at 1280x720 nothing is cut off sideways: the page does not scroll horizontally,
    and the side pane's last tab and its sort control end inside the window."""
    p = Page(browser, server, size=(1280, 720))
    assert settle(p, lambda: p.overview_pixels().std() > 10), "the overview stayed blank"
    scroll, inner = p.page.evaluate(
        "() => [document.documentElement.scrollWidth, window.innerWidth]"
    )
    assert scroll <= inner
    tab = p.page.locator(".bk-tab").filter(has_text="What-if").first.bounding_box()
    sort = p.page.get_by_text("sort", exact=True).first.bounding_box()
    assert tab and sort, "tab or sort control not found"
    assert tab["x"] + tab["width"] <= 1280 and sort["x"] + sort["width"] <= 1280
    assert not p.errors, p.errors
