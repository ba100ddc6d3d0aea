"""notebooks/explore.ipynb in JupyterLab, in a real browser, offline: JupyterLab serves it, chromium
runs every cell with every request to another host refused, and the overview, the image gallery
and the pattern table render from this machine alone (issue 11: offline, the notebook rendered
blank: Panel's loader fetched files from a CDN)."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest

from tests.explorer.test_browser import CHROMIUM, CHROMIUM_ARGS, free_port, wait_for_port

pytestmark = [pytest.mark.browser, pytest.mark.slow]
REPO = Path(__file__).parents[2]
KERNEL = "() => window.jupyterapp?.shell.currentWidget?.sessionContext?.session?.kernel"


@pytest.fixture(scope="module")
def lab(patterned_run, tmp_path_factory):
    home = tmp_path_factory.mktemp("jupyter")
    root = home / "lab"  # a copy: the notebook writes selection.csv and checkpoints beside it
    (root / "notebooks").mkdir(parents=True)
    shutil.copy(REPO / "notebooks" / "explore.ipynb", root / "notebooks")
    port = free_port()
    env = dict(os.environ, ASAP_RUN=str(patterned_run[0]),
               JUPYTER_CONFIG_DIR=str(home / "config"), JUPYTER_RUNTIME_DIR=str(home / "runtime"),
               IPYTHONDIR=str(home / "ipython"))  # fmt: skip
    cmd = [str(Path(sys.executable).parent / "jupyter"), "lab", "--no-browser", f"--port={port}",
           "--ServerApp.ip=127.0.0.1", "--allow-root", "--IdentityProvider.token=",
           "--ServerApp.password=", "--LabApp.expose_app_in_browser=True",
           "--LabApp.news_url=None", f"--ServerApp.root_dir={root}",
           "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)  # fmt: skip
    try:
        wait_for_port(port, proc, timeout=120)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(30)


def test_notebook_renders_offline_in_jupyterlab(lab):
    from PIL import Image
    from playwright.sync_api import sync_playwright

    if not os.path.exists(CHROMIUM):
        pytest.fail("Debian's chromium is missing: `apt-get install chromium` (make test does it)")
    refused, errors = [], []

    def only_local(route):
        url = route.request.url
        if url.startswith(("data:", "blob:")) or urlsplit(url).hostname in (
            "127.0.0.1",
            "localhost",
        ):
            return route.continue_()
        refused.append(url)
        return route.abort()

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            ctx = browser.new_context(viewport={"width": 1500, "height": 1000})
            ctx.route("**/*", only_local)
            page = ctx.new_page()
            page.on("console", lambda m: m.type == "error" and errors.append(m.text))
            page.goto(f"{lab}/lab/tree/notebooks/explore.ipynb", timeout=120_000)
            page.wait_for_function(f"() => ({KERNEL})()?.status === 'idle'", timeout=180_000)
            page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
            # every cell has run once the last one printed the exported manifest's rows
            page.get_by_text("rows", exact=False).last.wait_for(timeout=300_000)
            page.wait_for_function(f"() => ({KERNEL})()?.status === 'idle'", timeout=300_000)
            page.wait_for_timeout(3000)
            cell_errors = page.locator(".jp-OutputArea-output[data-mime-type*='error']").count()
            canvases = page.locator(".jp-OutputArea canvas")
            biggest = max((canvases.nth(i) for i in range(canvases.count())),
                          key=lambda c: (lambda b: b["width"] * b["height"] if b else 0)(
                              c.bounding_box()))  # fmt: skip
            biggest.scroll_into_view_if_needed()
            px = np.asarray(Image.open(io.BytesIO(biggest.screenshot())).convert("RGB"))
            colours = len(np.unique(px.reshape(-1, 3)[::7], axis=0))
            cards = page.locator(".jp-OutputArea figure.asap-card img[src^='data:image/png']")
            n_cards = cards.count()
            table_rows = page.locator(".jp-OutputArea .tabulator-row").count()
        finally:
            browser.close()
    assert refused == [], f"the notebook asked other hosts for {refused}"
    assert cell_errors == 0
    assert not [e for e in errors if "Failed to load" in e or "failed to load" in e], errors
    assert colours > 12, "the overview drew no points"
    assert n_cards > 0, "the image gallery is empty"
    assert table_rows > 0, "the pattern table did not render"
