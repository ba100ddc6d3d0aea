"""Explorer data-layer benchmark on generated points (1M and 10M; nothing written to disk).

Measures, per size, the median over repeats of:
- reaggregate_ms: Datashader re-rasterising the points (count by label) for a zoomed viewport into
  an 800x600 canvas, as on every zoom or pan (after one warm-up for numba compilation);
- glyphs_ms: the cell-glyph statistics for the same viewport (explorer.store.cell_stats, 12x8);
- select_1m_ms: a box selection that returns about one million points (explorer.store.box_select);
- rss_mb: the process's peak resident memory after the size is loaded and measured.

The Panel app is not built yet (issue 4), so its first frame is not measured here; the last line
is ``reaggregate_ms=B glyphs_ms=C select_1m_ms=D rss_mb=E`` for the largest size.

    python benchmarks/explorer.py            # 1M and 10M
    python benchmarks/explorer.py --sizes 1000000
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

try:  # must come before the package imports: see benchmarks/_isolate.py
    import _isolate  # noqa: F401
except ModuleNotFoundError:  # a Dask worker re-importing this script: the path is already clean
    pass
import numpy as np
import pandas as pd

from explorer.store import Points, box_select, cell_stats


def make_points(n: int, seed: int = 0) -> Points:
    """Clusters of real and fake points, as a layout of distilled representations looks."""
    rng = np.random.default_rng(seed)
    k = 40
    centres = rng.normal(0, 10, (k, 2)).astype(np.float32)
    which = rng.integers(0, k, n)
    xy = centres[which] + rng.normal(0, 1, (n, 2)).astype(np.float32)
    label = (which % 2).astype(np.int8)
    p = np.clip(0.25 + 0.5 * label + rng.normal(0, 0.15, n), 0, 1).astype(np.float32)
    return Points(
        id=np.arange(n, dtype=np.int64), x=xy[:, 0].copy(), y=xy[:, 1].copy(), label=label,
        p_fake=p, pred=(p >= 0.5).astype(np.int8), generator=(which % 5).astype(np.int16),
        generators=("a", "b", "c", "d", "real"),
    )  # fmt: skip


def median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def box_for(pts: Points, target: int) -> tuple[float, float, float, float]:
    """A centred square box holding about ``target`` points."""
    half = float(np.quantile(np.maximum(np.abs(pts.x), np.abs(pts.y)), min(1.0, target / len(pts))))
    return -half, half, -half, half


def measure(n: int, repeats: int) -> dict:
    import datashader as ds

    pts = make_points(n)
    df = pd.DataFrame({"x": pts.x, "y": pts.y, "label": pd.Categorical(pts.label)})
    zoom = (-8.0, 8.0, -6.0, 6.0)
    canvas = ds.Canvas(plot_width=800, plot_height=600, x_range=zoom[:2], y_range=zoom[2:])
    agg = median_ms(lambda: canvas.points(df, "x", "y", ds.count_cat("label")), repeats)
    glyphs = median_ms(lambda: cell_stats(pts, zoom, nx=12, ny=8), repeats)
    box = box_for(pts, 1_000_000)
    selected = len(box_select(pts, *box))
    select = median_ms(lambda: box_select(pts, *box), repeats)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return dict(n=n, reaggregate_ms=agg, glyphs_ms=glyphs, select_1m_ms=select,
                selected=selected, rss_mb=rss)  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1000000,10000000")
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    last = None
    for n in (int(s) for s in a.sizes.split(",")):
        last = measure(n, a.repeats)
        print(
            f"n={n:,}: reaggregate {last['reaggregate_ms']:.0f} ms, glyphs "
            f"{last['glyphs_ms']:.0f} ms, select {last['selected']:,} points "
            f"{last['select_1m_ms']:.0f} ms, peak rss {last['rss_mb']:.0f} MB",
            flush=True,
        )
    print(
        f"reaggregate_ms={last['reaggregate_ms']:.0f} glyphs_ms={last['glyphs_ms']:.0f} "
        f"select_1m_ms={last['select_1m_ms']:.0f} rss_mb={last['rss_mb']:.0f}"
    )


if __name__ == "__main__":
    main()
