"""Entry point for ``panel serve explorer/serve.py --args RUN_DIR [--image-root DIR ...]``; each
browser session gets its own App. `asap serve RUN_DIR` does the same with one command."""

import argparse
import sys

from explorer.app import create_app

ap = argparse.ArgumentParser(prog="explorer/serve.py")
ap.add_argument("run", nargs="?", help="run directory")
ap.add_argument("--image-root", action="append", default=[])
args = ap.parse_args(sys.argv[1:])
if args.run is None:
    from explorer.app import error_page

    error_page(
        "no run directory given: `panel serve explorer/serve.py --args runs/demo`"
    ).servable()
else:
    create_app(args.run, tuple(args.image_root)).servable()
