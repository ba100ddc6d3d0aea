"""Make docs/explorer.png, the README's picture of the explorer: `asap serve` on a run (default
runs/demo, as `make demo SERVE=0` makes it), opened in Debian's chromium at 1500x1000, captured
once the page has settled (the overview unchanged for 3 s, every image loaded).

    .venv/bin/python docs/screenshot.py [--run runs/demo] [--out docs/explorer.png]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from browser import CHROMIUM, CHROMIUM_ARGS, VIEWPORT, Server, Timer  # noqa: E402

QUIET_MS = 3000  # the overview unchanged this long (the browser benchmark's watcher) = settled


def images_loaded(page) -> bool:
    """Every <img> of the page (Playwright's locators pierce Bokeh's shadow roots) has loaded."""
    return page.locator("img").evaluate_all(
        "(imgs) => imgs.length > 0 && imgs.every((i) => i.complete && i.naturalWidth > 0)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", default="runs/demo")
    ap.add_argument("--out", default=str(REPO / "docs" / "explorer.png"))
    a = ap.parse_args()
    if not Path(a.run).is_dir():
        sys.exit(f"run {a.run} does not exist: `make demo SERVE=0` makes runs/demo")
    from playwright.sync_api import sync_playwright

    server = Server(a.run)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            t0 = time.perf_counter()
            page = Timer(browser, server.url, QUIET_MS, 120).page  # loaded, overview settled
            end = time.monotonic() + 120
            while not images_loaded(page):
                if time.monotonic() > end:
                    sys.exit("the page's images did not load within 120 s")
                page.wait_for_timeout(250)
            page.wait_for_timeout(QUIET_MS)  # the gallery lays its images out
            page.screenshot(path=a.out)
            browser.close()
        print(f"{a.out}: {VIEWPORT['width']}x{VIEWPORT['height']}, page settled in "
              f"{time.perf_counter() - t0:.1f} s")  # fmt: skip
    finally:
        server.close()


if __name__ == "__main__":
    main()
