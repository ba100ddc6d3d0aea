"""`asap serve RUN_DIR`: validate the run, then serve the explorer with one App per session."""

from __future__ import annotations

from pipeline.schema import open_run


def serve(run_dir: str, port: int = 5006, address: str | None = None, show: bool = False,
          image_roots: tuple[str, ...] = (), origins: tuple[str, ...] = ()):  # fmt: skip
    """Blocks until interrupted. Raises RunDirectoryError before serving if the run is unusable."""
    import panel as pn

    from .app import create_app

    open_run(run_dir)  # fail on the command line, not only in the page
    print(f"ASAP explorer for {run_dir}: http://{address or 'localhost'}:{port}/asap", flush=True)

    def session():  # a plain function: Panel calls it once per browser session
        return create_app(str(run_dir), tuple(image_roots))

    pn.serve(
        {"asap": session},
        port=port,
        address=address,
        show=show,
        title="ASAP explorer",
        # Bokeh accepts only localhost:PORT by default; 127.0.0.1 is the same machine
        websocket_origin=list(origins) or [f"localhost:{port}", f"127.0.0.1:{port}"],
        threaded=False,
    )
