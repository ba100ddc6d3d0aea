"""The explorer as a person uses it: `asap serve` on a run, Debian's chromium driven by Playwright,
and every figure timed from the action to changed pixels on the page (never a server function).

How a time is taken. A script injected into the page (``WATCH_JS``) samples, every 25 ms, the
pixels of every canvas inside the overview's rectangle (scaled to 300 x 200 and hashed) and the
sources of the images in the side views. For an action, Python marks the page's clock, performs the
action with Playwright's mouse and keyboard, and waits until the overview has been still for
``--quiet`` ms. Times count from the end of the action's input: the page records its last
mouse-up or wheel event (a drag is timed from the release of the button, not from its start; a
click from its release; a first change during a drag counts as negative). The figure is the
page-clock time of the *last* change (``settled``: the new Datashader frame drawn, not Bokeh's
instant client-side stretch of the old one; the first change is printed too). Image views count
when their images' sources changed. Tabs count when the tab's
content is visible. Page load is navigation start to the first overview with drawn points (at
least ``MIN_COLOURS`` distinct colours in the sample; the empty frame has a handful).

Actions: page load, zoom (mouse wheel), pan (drag), box select, lasso, tap, a label filter, a
colouring change, switching to the Dimensions and Patterns tabs; then 20 pages opened at once in
separate browser contexts, each timed to its first overview (p50/p95).

Runs: the demo (``--run runs/demo``) and generated contract run directories of 1 M and 10 M points
(``benchmarks/explorer.py``'s generator, no image files: image views show placeholder tiles).
The last line is ``load_ms= zoom_ms= select_ms= filter_ms= sessions20_p95_ms=`` for the 1 M run
(or the largest run measured).

    python benchmarks/browser.py                        # demo (if built), 1 M, 10 M
    python benchmarks/browser.py --sizes 1000000 --run ""  # 1 M only
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

try:  # must come before the package imports: see benchmarks/_isolate.py
    import _isolate  # noqa: F401
except ModuleNotFoundError:
    pass

HERE = Path(__file__).resolve().parent
CHROMIUM = "/usr/bin/chromium"
# the arguments the project requires, plus: no timer throttling in pages that are not in front
# (the 20 concurrent sessions), which would otherwise quantise their clocks to a second
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-background-timer-throttling",
                 "--disable-renderer-backgrounding",
                 "--disable-backgrounding-occluded-windows"]  # fmt: skip
VIEWPORT = {"width": 1500, "height": 1000}
MIN_COLOURS = 12

WATCH_JS = r"""
(() => {
  const A = window.__asap = {mark: null, first: null, last: null, changes: 0, sig: null,
                             drawn: null, imgs: null, imgsChanged: null, sent: 0, replies: 0,
                             net: 0};
  // Bokeh's websocket: every message the page sends is a request the server answers (a reply
  // header carries "reqid") once its callbacks ran; requests in flight mean "not settled yet"
  const WS = window.WebSocket;
  const Wrapped = function (...args) {
    const ws = new WS(...args);
    ws.addEventListener('message', (e) => {
      A.net = performance.now();
      if (typeof e.data === 'string' && /"reqid"\s*:/.test(e.data)) A.replies++;
    });
    const send = ws.send.bind(ws);
    ws.send = (d) => {
      if (typeof d === 'string' && /"msgtype"\s*:/.test(d)) { A.sent++; A.net = performance.now(); }
      return send(d);
    };
    return ws;
  };
  Wrapped.prototype = WS.prototype;
  for (const k of ['CONNECTING', 'OPEN', 'CLOSING', 'CLOSED']) Wrapped[k] = WS[k];
  window.WebSocket = Wrapped;
  // still: no request in flight, and neither pixels nor messages for `quiet` ms
  A.still = (quiet) => A.sent === A.replies
    && performance.now() - Math.max(A.last ?? A.mark, A.net) > quiet;
  function deep(root, out) {
    for (const el of root.querySelectorAll('*')) {
      if (el.tagName === 'CANVAS' || el.tagName === 'IMG') out.push(el);
      if (el.shadowRoot) deep(el.shadowRoot, out);
    }
    return out;
  }
  A.deep = () => deep(document, []);
  A.deepText = (sel, re) => {  // an element matching sel (any shadow depth) whose text matches
    const rx = new RegExp(re);
    const walk = (root) => {
      for (const el of root.querySelectorAll('*')) {
        if (el.matches(sel)) {
          const text = (el.shadowRoot ? el.shadowRoot.textContent : '') + el.textContent;
          if (rx.test(text)) return true;
        }
        if (el.shadowRoot && walk(el.shadowRoot)) return true;
      }
      return false;
    };
    return walk(document);
  };
  A.visible = (sel) => {
    const walk = (root) => {
      for (const el of root.querySelectorAll('*')) {
        if (el.matches(sel)) {
          const r = el.getBoundingClientRect();
          if (r.width > 0 && r.height > 0) return true;
        }
        if (el.shadowRoot && walk(el.shadowRoot)) return true;
      }
      return false;
    };
    return walk(document);
  };
  const small = document.createElement('canvas');
  small.width = 300; small.height = 200;
  const ctx = small.getContext('2d', {willReadFrequently: true});
  A.rect = (els) => {
    let best = null, area = 0;
    for (const c of els) {
      if (c.tagName !== 'CANVAS') continue;
      const r = c.getBoundingClientRect();
      if (r.width * r.height > area) { area = r.width * r.height; best = r; }
    }
    return best;
  };
  A.sample = () => {
    const els = A.deep();
    const R = A.rect(els);
    let imgs = '';
    for (const e of els) if (e.tagName === 'IMG' && e.src && e.src.startsWith('data:'))
      imgs += (e.closest('figure')?.dataset.id ?? '') + e.src.length + e.src.slice(-24) + ';';
    if (!R || R.width < 100) return {h: null, colours: 0, imgs};
    ctx.clearRect(0, 0, 300, 200);
    const sx = 300 / R.width, sy = 200 / R.height;
    for (const c of els) {
      if (c.tagName !== 'CANVAS') continue;
      const r = c.getBoundingClientRect();
      const cx = r.left + r.width / 2, cy = r.top + r.height / 2;
      if (r.width === 0 || cx < R.left || cx > R.right || cy < R.top || cy > R.bottom) continue;
      try {
        ctx.drawImage(c, (r.left - R.left) * sx, (r.top - R.top) * sy, r.width * sx,
                      r.height * sy);
      } catch (e) {}
    }
    const d = ctx.getImageData(0, 0, 300, 200).data;
    let h = 2166136261 >>> 0;
    const colours = new Set();
    for (let i = 0; i < d.length; i += 4) {
      h = Math.imul(h ^ (d[i] | (d[i + 1] << 8) | (d[i + 2] << 16)), 16777619) >>> 0;
      if ((i & 31) === 0) colours.add((d[i] << 16) | (d[i + 1] << 8) | d[i + 2]);
    }
    return {h, colours: colours.size, imgs};
  };
  A.tick = () => {
    const s = A.sample(), now = performance.now();
    if (s.h !== null) {
      if (A.drawn === null && s.colours >= MIN_COLOURS) A.drawn = now;
      if (A.sig !== null && s.h !== A.sig) {
        if (A.mark !== null && A.first === null) A.first = now;
        A.last = now; A.changes++;
      }
      A.sig = s.h;
    }
    if (A.imgs !== null && s.imgs !== A.imgs && A.mark !== null && A.imgsChanged === null)
      A.imgsChanged = now;
    A.imgs = s.imgs;
    if (A.textRe !== null && A.textAt === null) {
      const text = A.summary();
      if (text !== A.textStart && new RegExp(A.textRe).test(text)) A.textAt = now;
    }
    setTimeout(A.tick, 25);
  };
  // the summary line's text (at any shadow depth)
  A.summary = () => {
    const walk = (root) => {
      for (const el of root.querySelectorAll('*')) {
        if (el.matches('.asap-summary'))
          return (el.shadowRoot ? el.shadowRoot.textContent : '') + el.textContent;
        if (el.shadowRoot) { const t = walk(el.shadowRoot); if (t !== null) return t; }
      }
      return null;
    };
    return walk(document) ?? '';
  };
  // textRe: a pattern a changed summary should come to match; textAt: when the sampler saw it
  A.textRe = null; A.textAt = null; A.textStart = '';
  // the end of the action's input: its last mouse-up or wheel event
  A.input = null;
  for (const type of ['mouseup', 'wheel'])
    window.addEventListener(type, () => { if (A.mark !== null) A.input = performance.now(); },
                            {capture: true, passive: true});
  A.start = (re = null) => { A.mark = performance.now(); A.first = null; A.last = null;
                             A.changes = 0; A.imgsChanged = null; A.textRe = re; A.textAt = null;
                             A.textStart = re === null ? '' : A.summary(); A.input = null;
                             return A.mark; };
  setTimeout(A.tick, 25);
})();
""".replace("MIN_COLOURS", str(MIN_COLOURS))


def _bench_explorer():
    """benchmarks/explorer.py's run generator (the file's name shadows the package)."""
    spec = importlib.util.spec_from_file_location("asap_bench_explorer", HERE / "explorer.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`asap serve RUN` in its own process, on a free loopback port."""

    def __init__(self, run_dir: str, procs: int = 1):
        self.port = free_port()
        cmd = [sys.executable, "-m", "pipeline.cli", "serve", run_dir, "--port", str(self.port),
               "--procs", str(procs)]  # fmt: skip
        self.log = tempfile.TemporaryFile("w+")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT,
                                     cwd=HERE.parent)  # fmt: skip
        end = time.time() + 120
        while time.time() < end:
            if self.proc.poll() is not None:
                self.log.seek(0)
                sys.exit(f"`asap serve {run_dir}` exited:\n{self.log.read()[-3000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                break
            except OSError:
                time.sleep(0.2)
        self.url = f"http://127.0.0.1:{self.port}/asap"

    def cpu_s(self) -> float:
        """CPU seconds used so far by the server's processes (all of them with --procs)."""
        import psutil

        root = psutil.Process(self.proc.pid)
        total = 0.0
        for p in [root, *root.children(recursive=True)]:
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.NoSuchProcess:
                continue
        return total

    def close(self):
        import psutil

        kids = psutil.Process(self.proc.pid).children(recursive=True)
        self.proc.terminate()
        self.proc.wait(20)
        for k in kids:  # forked server processes (--procs)
            if k.is_running():
                k.terminate()


class Timer:
    """One explorer page with the pixel watcher."""

    def __init__(self, browser, url: str, quiet_ms: int, timeout_s: float):
        self.ctx = browser.new_context(viewport=VIEWPORT)
        self.ctx.add_init_script(WATCH_JS)
        self.page = self.ctx.new_page()
        self.quiet, self.timeout = quiet_ms, timeout_s * 1000
        self.page.goto(url, timeout=self.timeout)
        self.load_ms = self.page.wait_for_function(
            "() => window.__asap && __asap.drawn", timeout=self.timeout, polling=100
        ).json_value()
        self.settle()
        box = self.page.evaluate(
            "() => { const r = __asap.rect(__asap.deep()); "
            "return {x: r.left, y: r.top, w: r.width, h: r.height}; }"
        )
        self.box = box

    def settle(self) -> None:
        """Wait until the overview has been still for ``quiet`` ms (at most the timeout: a page
        that never settles is reported and measured anyway)."""
        from playwright.sync_api import TimeoutError as PlaywrightTimeout

        self.page.evaluate("() => __asap.start()")
        self.page.wait_for_timeout(self.quiet)
        try:
            self.page.wait_for_function(
                f"() => __asap.still({self.quiet})",
                timeout=self.timeout, polling=50,
            )  # fmt: skip
        except PlaywrightTimeout:
            n = self.page.evaluate("() => __asap.changes")
            shot = Path(tempfile.gettempdir()) / "asap-browser-unsettled.png"
            self.page.screenshot(path=str(shot))
            print(f"  the overview never settled ({n} changes); the page: {shot}",
                  file=sys.stderr, flush=True)  # fmt: skip

    def act(self, action, *, wait_images: bool = False, wait_text: str | None = None) -> dict:
        """Perform ``action()``; the page-clock ms to the overview's first and settled change,
        and to changed images / a matching text when asked. A wait that times out gives inf
        (printed as such: the page never showed the change)."""
        from playwright.sync_api import TimeoutError as PlaywrightTimeout

        self.settle()
        t0 = self.page.evaluate("(re) => __asap.start(re)", wait_text)
        action()
        t0 = self.page.evaluate("() => __asap.input") or t0  # the input's end (see the top)
        out = {"first": math.inf, "settled": math.inf}
        out.update({"images": math.inf} if wait_images else {})
        out.update({"text": math.inf} if wait_text else {})
        try:
            self.page.wait_for_function(
                f"() => __asap.changes > 0 && __asap.still({self.quiet})",
                timeout=self.timeout, polling=50,
            )  # fmt: skip
            r = self.page.evaluate("() => ({first: __asap.first, last: __asap.last})")
            out.update(first=r["first"] - t0, settled=r["last"] - t0)
            if wait_images:
                # a selection whose first images are those shown already changes nothing: wait
                # at most 20 s (inf, left out of the median)
                out["images"] = (
                    self.page.wait_for_function(
                        "() => __asap.imgsChanged", timeout=min(self.timeout, 20_000), polling=50
                    ).json_value()
                    - t0
                )
            if wait_text:  # the time the page's sampler first saw the text (every 25 ms)
                out["text"] = (
                    self.page.wait_for_function(
                        "() => __asap.textAt", timeout=self.timeout, polling=50
                    ).json_value()
                    - t0
                )
        except PlaywrightTimeout:
            shot = Path(tempfile.gettempdir()) / f"asap-browser-timeout-{int(t0)}.png"
            self.page.screenshot(path=str(shot))
            print(f"  timed out; the page: {shot}", file=sys.stderr, flush=True)
        return out

    def tab(self, name: str, selector: str) -> float:
        """Click a tab; ms until its content (``selector``, at any shadow depth) is visible."""
        from playwright.sync_api import TimeoutError as PlaywrightTimeout

        self.settle()
        t0 = self.page.evaluate("() => __asap.start()")
        self.page.locator(".bk-tab").filter(has_text=name).first.click()
        try:
            self.page.wait_for_function(
                f"() => __asap.visible({selector!r})", timeout=self.timeout, polling="raf"
            )
        except PlaywrightTimeout:
            return math.inf
        return self.page.evaluate("() => performance.now()") - t0

    def tool(self, title: str) -> None:
        self.page.locator(f"[title='{title}']").first.click()

    def at(self, fx: float, fy: float) -> tuple[float, float]:
        b = self.box
        return b["x"] + b["w"] * fx, b["y"] + b["h"] * fy

    def drag(self, points: list[tuple[float, float]]) -> None:
        m = self.page.mouse
        m.move(*self.at(*points[0]))
        m.down()
        for p in points[1:]:
            m.move(*self.at(*p), steps=4)
        m.up()

    def close(self):
        self.ctx.close()


def finite_median(values: list[float]) -> float:
    """The median of the repeats that saw a change (inf when none did)."""
    ok = [v for v in values if math.isfinite(v)]
    return statistics.median(ok) if ok else math.inf


def measure_run(browser, url: str, repeats: int, quiet: int, timeout: float) -> dict:
    loads, res = [], {}
    for _ in range(repeats):
        t = Timer(browser, url, quiet, timeout)
        loads.append(t.load_ms)
        t.close()
    res["load"] = statistics.median(loads)
    t = Timer(browser, url, quiet, timeout)
    page = t.page

    def rec(name, fn, **kw):
        print(f"  {name} ...", file=sys.stderr, flush=True)
        runs = [t.act(fn, **kw) for _ in range(repeats)]
        res[name] = {k: finite_median([r[k] for r in runs]) for k in runs[0]}

    def zoom():
        page.mouse.move(*t.at(0.5, 0.5))
        page.mouse.wheel(0, -240)

    def zoom_out():
        page.mouse.move(*t.at(0.5, 0.5))
        page.mouse.wheel(0, 240)

    print(f"  page load {res['load']:.0f} ms; zoom ...", file=sys.stderr, flush=True)
    runs = []
    for _ in range(repeats):  # zoom in, then back out (not timed), so that each zoom sees points
        runs.append(t.act(zoom))
        t.act(zoom_out)
    res["zoom"] = {k: finite_median([r[k] for r in runs]) for k in runs[0]}
    rec("pan", lambda: t.drag([(0.5, 0.5), (0.6, 0.55)]))
    t.act(lambda: t.tool("Reset"))  # back to the whole layout (not timed): selections hit points
    t.tool("Box Select")
    boxes = iter([(0.1, 0.1, 0.5, 0.6), (0.3, 0.2, 0.8, 0.9), (0.2, 0.3, 0.6, 0.8)] * repeats)

    def box_select():
        x0, y0, x1, y1 = next(boxes)
        t.drag([(x0, y0), (x1, y1)])

    rec("box_select", box_select, wait_images=True, wait_text=r"\(box\)")
    t.tool("Lasso Select")
    lassos = iter([(0.3, 0.3), (0.5, 0.4), (0.6, 0.6)] * repeats)

    def lasso():
        cx, cy = next(lassos)
        t.drag([(cx - 0.15, cy - 0.1), (cx + 0.15, cy - 0.12), (cx + 0.1, cy + 0.15),
                (cx - 0.12, cy + 0.1), (cx - 0.15, cy - 0.1)])  # fmt: skip

    rec("lasso", lasso, wait_images=True, wait_text=r"\(lasso\)")
    t.tool("Tap")
    taps = iter([(0.45, 0.5), (0.55, 0.45), (0.5, 0.55)] * repeats)
    rec("tap", lambda: page.mouse.click(*t.at(*next(taps))), wait_images=True)
    label_fake = page.get_by_role("button", name="fake", exact=True).first
    print("  filter ...", file=sys.stderr, flush=True)
    runs = []
    for _ in range(repeats):  # fakes off (timed), then on again (not timed)
        runs.append(t.act(label_fake.click))
        t.act(label_fake.click)
    res["filter"] = {k: finite_median([r[k] for r in runs]) for k in runs[0]}
    colours = iter(["p_fake", "label"] * repeats)
    rec("colour", lambda: page.get_by_role("button", name=next(colours), exact=True).click())
    res["tab_dimensions"] = statistics.median(
        [t.tab("Dimensions", ".asap-histograms") for _ in range(1)]
    )
    res["tab_patterns"] = t.tab("Patterns", ".asap-patterns")
    t.close()
    return res


def sessions(browser, url: str, n: int, timeout: float) -> list[float]:
    """``n`` pages opened at once, each in its own context: navigation start to first overview."""
    ctxs = [browser.new_context(viewport=VIEWPORT) for _ in range(n)]
    pages = []
    for c in ctxs:
        c.add_init_script(WATCH_JS)
        p = c.new_page()
        p.goto(url, wait_until="commit", timeout=timeout * 1000)
        pages.append(p)
    end, times = time.time() + timeout, [None] * n
    while time.time() < end and any(v is None for v in times):
        for i, p in enumerate(pages):
            if times[i] is None:
                times[i] = p.evaluate("() => window.__asap ? __asap.drawn : null")
        time.sleep(0.2)
    for c in ctxs:
        c.close()
    return [v if v is not None else float("inf") for v in times]


def pct(values: list[float], q: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, int(round(q * (len(v) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", default="runs/demo", help="an existing run to measure too ('' none)")
    ap.add_argument("--sizes", default="1000000,10000000", help="generated runs ('' none)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--quiet", type=int, default=1000, help="ms without change = settled")
    ap.add_argument("--timeout", type=float, default=90, help="s per wait")
    ap.add_argument("--procs", type=int, default=1, help="`asap serve --procs`")
    a = ap.parse_args()
    if not os.path.exists(CHROMIUM):
        sys.exit("Debian's chromium is missing: `apt-get install chromium` (`make browser`)")
    from playwright.sync_api import sync_playwright

    targets = []
    if a.run:
        if not Path(a.run).is_dir():
            sys.exit(f"run {a.run} does not exist: `make demo SERVE=0` builds it, or --run ''")
        targets.append((a.run, None))
    targets += [(None, int(s)) for s in a.sizes.split(",") if s]
    rows, last = [], None
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        for run, n in targets:
            tmp = None
            if n:
                bx = _bench_explorer()
                tmp = Path(tempfile.mkdtemp(prefix="asap-browser-"))
                t0 = time.perf_counter()
                run = str(bx.write_run(tmp / "run", bx.make_points(n)))
                print(f"n={n:,}: wrote a run directory in {time.perf_counter() - t0:.0f} s",
                      flush=True)  # fmt: skip
            server = Server(run, a.procs)
            try:
                res = measure_run(browser, server.url, a.repeats, a.quiet, a.timeout)
                cpu0 = server.cpu_s()
                s = sessions(browser, server.url, a.sessions, a.timeout)
                # the server's share of the page loads (the rest is the browser's, on the same
                # cores here; on a real deployment each user's browser has its own machine)
                res["server_cpu_per_load"] = (server.cpu_s() - cpu0) * 1000 / max(a.sessions, 1)
            finally:
                server.close()
                if tmp:
                    shutil.rmtree(tmp, ignore_errors=True)
            res["sessions_p50"], res["sessions_p95"] = pct(s, 0.5), pct(s, 0.95)
            label = f"{n:,} generated" if n else run
            rows.append((label, res))
            print(f"{label}: " + ", ".join(
                f"{k} {v:.0f}" if not isinstance(v, dict)
                else f"{k} " + "/".join(f"{kk} {vv:.0f}" for kk, vv in v.items())
                for k, v in res.items()) + " (ms)", flush=True)  # fmt: skip
            if n == 1_000_000 or last is None or last[0] != 1_000_000:
                last = (n, res)  # the 1 M run's figures, else the last run measured
        browser.close()
    cols = ["load", "zoom", "pan", "box_select", "lasso", "tap", "filter", "colour",
            "tab_dimensions", "tab_patterns", "sessions_p50", "sessions_p95",
            "server_cpu_per_load"]  # fmt: skip
    print("\nms from the action to changed pixels (settled overview; images / text where shown)")
    print("| run | " + " | ".join(cols) + " |")
    print("|" + " --- |" * (len(cols) + 1))
    for label, res in rows:
        cells = []
        for c in cols:
            v = res[c]
            if isinstance(v, dict):
                extra = [f"{v[k]:.0f}" for k in ("images", "text") if k in v]
                cells.append(f"{v['settled']:.0f}" + (f" ({' / '.join(extra)})" if extra else ""))
            else:
                cells.append(f"{v:.0f}")
        print(f"| {label} | " + " | ".join(cells) + " |")
    r = last[1]
    print(f"load_ms={r['load']:.0f} zoom_ms={r['zoom']['settled']:.0f} "
          f"select_ms={r['box_select']['settled']:.0f} filter_ms={r['filter']['settled']:.0f} "
          f"sessions20_p95_ms={r['sessions_p95']:.0f}")  # fmt: skip


if __name__ == "__main__":
    main()
