"""Entry point for ``panel serve explorer/serve.py [PANEL OPTIONS] --args RUN_DIR [--image-root
DIR ...]``, served at ``/serve``; each browser session gets its own App. `asap serve RUN_DIR` does
the same with one command (at ``/asap``).

Everything after ``--args`` reaches this script, not Panel: a misplaced Panel option (``--args
runs/demo --port 5098``) gets a page that says so instead of an exit that stops the server."""

import argparse
import sys

from explorer.app import create_app, error_page
from explorer.server import lighter_pages

lighter_pages()

USAGE = "panel serve explorer/serve.py --port 5006 --args RUN_DIR [--image-root DIR]"

ap = argparse.ArgumentParser(prog="explorer/serve.py", add_help=False, exit_on_error=False)
ap.add_argument("run", nargs="?", help="run directory")
ap.add_argument("--image-root", action="append", default=[])
try:
    args, unknown = ap.parse_known_args(sys.argv[1:])
except argparse.ArgumentError as e:
    args, unknown = None, [str(e)]
if args is None or unknown:
    error_page(
        f"explorer/serve.py was given {' '.join(unknown)!r}, which it does not know. Panel passes "
        f"everything after --args to the app: put Panel's options (--port, --address, ...) "
        f"before --args, e.g. `{USAGE}`."
    ).servable()
elif args.run is None:
    error_page(f"no run directory given: `{USAGE}`").servable()
else:
    create_app(args.run, tuple(args.image_root)).servable()
