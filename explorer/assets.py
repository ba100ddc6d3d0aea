"""Every script and stylesheet of the notebook's output from this machine, never a CDN.

In a notebook, Panel (1.9) inlines its own bundles with ``pn.extension(inline=True)`` but still
names three files by CDN address in the loader it sends: es-module-shims (for ESM components),
luxon and the Tabulator theme's stylesheet. Offline they fail, and the loader waits for them
(issue 11: the notebook rendered blank without network). Those files ship with Panel (its
``dist`` folder), so the loader gets their text inline instead of their address."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit


def local_dist_file(url: str) -> Path | None:
    """The file of Panel's ``dist`` folder that a CDN address of Panel names, or None."""
    from panel.io.resources import CDN_DIST, DIST_DIR

    url = str(url)
    if not url.startswith(CDN_DIST):
        return None
    rel = unquote(urlsplit(url[len(CDN_DIST) :]).path)
    path = (Path(DIST_DIR) / rel).resolve()
    if Path(DIST_DIR).resolve() not in path.parents or not path.is_file():
        return None
    return path


def _split(urls) -> tuple[list, list[str]]:
    """(addresses kept, texts of the files Panel ships) of a list of resource addresses."""
    kept, texts = [], []
    for url in urls:
        path = local_dist_file(url)
        if path is None:
            kept.append(url)
        else:
            texts.append(path.read_text(encoding="utf-8"))
    return kept, texts


def inline_cdn_files(bundle):
    """``bundle`` (a Bokeh/Panel resource Bundle) with every CDN file that Panel ships moved
    from its address lists to its inline lists; other addresses stay as they are."""
    bundle.js_files, js = _split(bundle.js_files)
    bundle.css_files, css = _split(bundle.css_files)
    bundle.js_raw.extend(js)
    bundle.css_raw.extend(css)
    return bundle


def offline_notebook() -> None:
    """Make Panel's notebook loader inline the CDN files it ships (idempotent; the server's
    pages are not affected: they are served with their own resources)."""
    from panel.io import notebook

    original = notebook.bundle_resources
    if getattr(original, "asap_offline", False):
        return

    def bundle_resources(*args, **kwargs):
        return inline_cdn_files(original(*args, **kwargs))

    bundle_resources.asap_offline = True
    notebook.bundle_resources = bundle_resources
