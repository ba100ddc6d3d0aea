"""The notebook's loader gets Panel's own files inline instead of CDN addresses (assets.py)."""

from __future__ import annotations

from bokeh.embed.bundle import URL, Bundle
from panel.io.resources import CDN_DIST


def test_cdn_files_panel_ships_are_inlined_and_nothing_else():
    from explorer.assets import inline_cdn_files, local_dist_file

    shims = CDN_DIST + "bundled/reactiveesm/es-module-shims@%5E1.10.0/dist/es-module-shims.min.js"
    css = CDN_DIST + "bundled/datatabulator/tabulator-tables@6.4.0/dist/css/tabulator.min.css"
    other = "https://example.org/lib.js"
    assert local_dist_file(shims) is not None and local_dist_file(other) is None
    assert local_dist_file(CDN_DIST + "../../../../etc/passwd") is None  # never outside dist
    assert local_dist_file(CDN_DIST + "bundled/no-such-file.js") is None
    b = inline_cdn_files(Bundle(js_files=[URL(shims), URL(other)], js_raw=["x=1"],
                                css_files=[URL(css)], css_raw=[]))  # fmt: skip
    assert [str(u) for u in b.js_files] == [other] and b.css_files == []
    assert b.js_raw[0] == "x=1" and "importShim" in b.js_raw[1]
    assert ".tabulator" in b.css_raw[0]
