"""`asap serve RUN_DIR`: validate the run, then serve the explorer with one App per session.

Safe by default: the server listens on 127.0.0.1 only, unless ``--address`` says otherwise, and
answers only requests whose Host header names this server (loopback names, the ``--address``
given, and the hosts of ``--allow-websocket-origin``): a web page elsewhere cannot reach it
through DNS rebinding."""

from __future__ import annotations

from pipeline.schema import open_run

LOOPBACK = "127.0.0.1"


def allowed_hosts(port: int, address: str | None, origins: tuple[str, ...]) -> set[str]:
    """Host header values (lower case, with and without the port) this server answers."""
    names = {"localhost", "127.0.0.1", "[::1]"}
    if address and address not in ("0.0.0.0", "::", ""):
        names.add(f"[{address}]" if ":" in address else address)
    hosts = {f"{n}:{port}" for n in names}
    if port == 80:
        hosts |= names
    for o in origins:
        o = o.lower().split("://")[-1].rstrip("/")
        hosts |= {o} if ":" in o.rsplit("]", 1)[-1] else {o, f"{o}:{port}"}
    return {h.lower() for h in hosts}


def _host_guard(app, hosts: set[str]) -> None:
    """Put a rule before every route of the Tornado application: a request whose Host header
    is not one of ``hosts`` gets 403 and never reaches the app."""
    from tornado.routing import Matcher, Rule
    from tornado.web import RequestHandler

    class BadHost(Matcher):
        def match(self, request):
            return None if (request.host or "").lower() in hosts else {}

    class Forbidden(RequestHandler):
        def prepare(self):
            self.set_status(403)
            self.finish(
                "ASAP explorer: this Host is not allowed. Open it as http://localhost:PORT, or "
                "start `asap serve` with --address and --allow-websocket-origin HOST:PORT.\n"
            )

    app.wildcard_router.rules.insert(0, Rule(BadHost(), Forbidden))


THUMB_ROUTE = "/asap-thumb/"  # + image id: the overview's hover thumbnails
THUMB_SIZE = 96


def thumbnail_handler(run_dir: str, image_roots: tuple[str, ...]):
    """A Tornado handler that answers ``THUMB_ROUTE<id>`` with that image's thumbnail as PNG.
    Images are named by id only and read through the run's ImageSource (inside its image roots);
    an unknown id or an unreadable file gets 404 with the reason."""
    from tornado.web import RequestHandler

    from .datastore import shared_run
    from .render import ImageAccessError, to_png

    class Thumbnail(RequestHandler):
        def get(self, image_id: str):
            try:
                rgb = shared_run(run_dir, image_roots).images.thumbnail(int(image_id), THUMB_SIZE)
            except (ImageAccessError, ValueError) as e:
                self.set_status(404)
                self.finish(f"ASAP explorer: {e}\n")
                return
            self.set_header("Content-Type", "image/png")
            self.set_header("Cache-Control", "private, max-age=3600")  # images do not change
            self.finish(to_png(rgb))

    return Thumbnail


def warm_up(run_dir: str, image_roots: tuple[str, ...] = ()) -> None:
    """Load the run into the process (shared by every session) and compile Datashader's kernels
    for every colouring and the overview's own (kernels.py), before the first page: about 3 s
    that the first user's first frame and first colour change used to wait for (issue 11)."""
    from .app import App, create_app, load_extensions
    from .datastore import COLOR_BY

    load_extensions()
    overview = App(run_dir, image_roots, sync_url=False).overview
    for color_by in COLOR_BY:
        overview.points_layer(None, None, 64, 64, color_by)
    # the compiled loops of the glyph cells and the compositing (kernels.py): loaded from
    # numba's cache, or compiled on a machine's first start
    overview.glyph_layer(None, None, 64, 64, 2)
    overview.frame()
    # one whole page into a throwaway document: the first page of a process paid about 0.5 s
    # more than the next (Panel's and Bokeh's first template, models and stylesheets); with
    # --procs every process would pay it
    from bokeh.document import Document

    create_app(run_dir, image_roots, sync_url=False).server_doc(Document())


def lighter_pages() -> None:
    """Leave MathJax out of the served page. Panel adds Bokeh's MathJax bundle (1.7 MB of the
    page's 5.5 MB of scripts) to every page that holds a Markdown or HTML pane, in case one
    holds TeX; the explorer shows none (its Markdown panes render TeX delimiters as text). Each
    new page parsed it, on the machine that runs the browser (issue 11: 20 page loads at once).
    Applies to this server process only; a notebook's resources are not touched."""
    import panel as pn
    from panel.io import resources

    for cls in (pn.pane.Markdown, pn.pane.Alert):
        cls.param.disable_math.default = True
    if not hasattr(resources, "_panel_use_mathjax"):  # a Panel that decides it elsewhere
        return
    resources._panel_use_mathjax = lambda roots: False


def serve(run_dir: str, port: int = 5006, address: str | None = None, show: bool = False,
          image_roots: tuple[str, ...] = (), origins: tuple[str, ...] = (),
          procs: int = 1):  # fmt: skip
    """Blocks until interrupted. Raises RunDirectoryError before serving if the run is unusable.

    ``procs`` > 1 forks that many server processes after the run is loaded (its arrays are then
    shared by all, copy-on-write); they share the port, so that new pages are built in parallel
    (building one costs the server's loop about 0.3 s: issue 11, many sessions). A browser
    session stays with the process that served its page. 0: one per core."""
    import os

    import panel as pn

    from .app import create_app

    if procs < 0:
        raise ValueError(f"--procs must be 0 (one process per core) or more, got {procs}")
    procs = procs or os.cpu_count() or 1
    open_run(run_dir)  # fail on the command line, not only in the page
    lighter_pages()
    warm_up(str(run_dir), tuple(image_roots))
    address = address or LOOPBACK
    shown = "localhost" if address == LOOPBACK else address
    many = f" ({procs} server processes)" if procs > 1 else ""
    print(f"ASAP explorer for {run_dir}: http://{shown}:{port}/asap{many}", flush=True)

    def session():  # a plain function: Panel calls it once per browser session
        return create_app(str(run_dir), tuple(image_roots), thumb_url=THUMB_ROUTE)

    server = pn.serve(
        {"asap": session},
        port=port,
        address=address,
        show=False,
        start=False,
        title="ASAP explorer",
        # Bokeh accepts only localhost:PORT by default; 127.0.0.1 is the same machine
        websocket_origin=list(origins) or [f"localhost:{port}", f"127.0.0.1:{port}"],
        threaded=False,
        num_procs=procs,
        extra_patterns=[
            (THUMB_ROUTE + r"([0-9]{1,18})", thumbnail_handler(str(run_dir), tuple(image_roots)))
        ],  # fmt: skip
    )
    _host_guard(server._tornado, allowed_hosts(port, address, origins))
    server.start()
    if show:
        server.show("/asap")
    server.io_loop.start()
