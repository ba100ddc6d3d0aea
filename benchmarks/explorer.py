"""Explorer benchmark on generated run directories (1M and 10M images, written to a temporary
folder and deleted afterwards; relevance arrays are sparse files of the real shape, 18 x 7 x 7).

Per size, in one fresh process (a size's data is never shared with the next):
- first_frame_ms: a session's server-side first frame: open the run, build the App (DataStore,
  four views) and render the overview's three layers (points, selection, cell glyphs) at
  900x600 - what must happen before a browser can draw anything. Cold: nothing cached, numba
  compiles Datashader's kernels. Also printed: the same for a second session of a warm server.
- reaggregate_ms: the overview's points layer re-rendered for a zoomed viewport (Datashader
  aggregation + shading), as on every zoom or pan; median over repeats.
- glyphs_ms: the glyph layer for the same viewport (cell statistics for a 12-wide grid, the
  sampled members' mean maps and coherence, representative thumbnails, the glyph raster).
- select_1m_ms: a box selection of about one million points through the DataStore.
- rss_mb: the process's peak resident memory.

The last line is ``first_frame_ms=A reaggregate_ms=B glyphs_ms=C select_1m_ms=D rss_mb=E`` for the
largest size.

    python benchmarks/explorer.py            # 1M and 10M (about 3 minutes on 2 cores)
    python benchmarks/explorer.py --sizes 1000000
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

try:  # must come before the package imports: see benchmarks/_isolate.py
    import _isolate  # noqa: F401
except ModuleNotFoundError:  # a Dask worker re-importing this script: the path is already clean
    pass
import numpy as np

from explorer.store import Points


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


def write_run(root: Path, pts: Points, part_size: int = 1_000_000, grid: int = 7) -> Path:
    """A run directory that follows the contract, with generated columns (no image files: the
    explorer draws a placeholder tile for an image it cannot read)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.schema import (
        DISTILLED_COLUMNS,
        FEATURE_COLUMNS,
        IMAGE_COLUMNS,
        MAP_NAMES,
        SCHEMA_VERSION,
        RunPaths,
        write_json,
    )

    n = len(pts)
    paths = RunPaths(root).create()
    (root / "imgs").mkdir()
    names = pa.array([f"{root}/imgs/{i:09d}.png" for i in range(n)])
    gens = np.array(pts.generators)[pts.generator]
    cols = {
        "id": pts.id, "path": names, "path_bytes": names.cast(pa.binary()),
        "label": pts.label, "generator": pa.array(gens), "source": pa.array(gens),
        "split": pa.array(np.where(pts.id % 10 == 0, "test", "train")),
        "width": np.full(n, 64, np.int32), "height": np.full(n, 64, np.int32),
        "format": pa.array(["PNG"] * n), "mode": pa.array(["RGB"] * n),
        "file_size": np.full(n, 4000, np.int64), "sha": pa.array(["0" * 32] * n),
        "duplicate_of": np.full(n, -1, np.int64),
    }  # fmt: skip
    pq.write_table(pa.table({c: cols[c] for c in IMAGE_COLUMNS}), paths.images)
    rng = np.random.default_rng(1)
    feats = {"id": pts.id}
    for c in DISTILLED_COLUMNS:
        feats[c] = rng.normal(0, 1, n).astype(np.float32)
    feats.update(logit=np.log(pts.p_fake / (1 - pts.p_fake + 1e-6) + 1e-6).astype(np.float32),
                 p_fake=pts.p_fake, pred=pts.pred, part=(pts.id // part_size).astype(np.int32),
                 row=(pts.id % part_size).astype(np.int32), x=pts.x, y=pts.y)  # fmt: skip
    pq.write_table(pa.table({c: feats[c] for c in FEATURE_COLUMNS}), paths.features)
    for p in range(int(np.ceil(n / part_size))):
        rows = min(part_size, n - p * part_size)
        shape = (rows, len(MAP_NAMES), grid, grid)
        arr = np.lib.format.open_memmap(paths.part_relevance(p), "w+", np.float16, shape)
        arr[: min(rows, 5000)] = rng.random((min(rows, 5000), *shape[1:]))  # the rest stays sparse
        del arr
    meta = {"schema_version": SCHEMA_VERSION, "config": {"source": str(root / "imgs")}}
    write_json(paths.run_json, {**meta, "stages": {}})
    return root


def measure(run_dir: str, repeats: int) -> dict:
    """Runs in its own process: a cold start, then the interactive operations."""
    from explorer.app import App, load_extensions

    load_extensions()
    t0 = time.perf_counter()
    app = App(run_dir, sync_url=False)
    ov = app.overview
    size = (900, 600)
    ov.points_layer(None, None, *size, "label")
    ov.selection_layer(None, None, *size, None)
    ov.glyph_layer(None, None, *size, 12)
    first = (time.perf_counter() - t0) * 1000
    t0 = time.perf_counter()  # a second browser session on the same, now warm, server
    App(run_dir, sync_url=False).overview.points_layer(None, None, *size, "label")
    session = (time.perf_counter() - t0) * 1000
    zoom_x, zoom_y = (-8.0, 8.0), (-6.0, 6.0)
    agg = median_ms(lambda: ov.points_layer(zoom_x, zoom_y, *size, "label"), repeats)
    glyphs = median_ms(lambda: ov.glyph_layer(zoom_x, zoom_y, *size, 12), repeats)
    pts = app.store.points
    box = box_for(pts, 1_000_000)
    select = median_ms(lambda: app.store.select_box(box[0], box[2], box[1], box[3]), repeats)
    selected = len(app.store.selected)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return dict(n=len(pts), first_frame_ms=first, session_ms=session, reaggregate_ms=agg,
                glyphs_ms=glyphs, select_1m_ms=select, selected=selected, rss_mb=rss)  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1000000,10000000")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--measure", default=None, help=argparse.SUPPRESS)  # child process: run dir
    a = ap.parse_args()
    if a.measure:
        print(json.dumps(measure(a.measure, a.repeats)))
        return
    last = None
    for n in (int(s) for s in a.sizes.split(",")):
        tmp = Path(tempfile.mkdtemp(prefix="asap-bench-"))
        try:
            t0 = time.perf_counter()
            write_run(tmp / "run", make_points(n))
            print(f"n={n:,}: wrote a run directory in {time.perf_counter() - t0:.0f} s", flush=True)
            cmd = [sys.executable, __file__, "--measure", str(tmp / "run"), "--repeats",
                   str(a.repeats)]  # fmt: skip
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode:
                sys.exit(f"measuring {n:,} failed:\n{out.stderr[-3000:]}")
            last = json.loads(out.stdout.strip().splitlines()[-1])
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        print(
            f"n={n:,}: first frame {last['first_frame_ms']:.0f} ms (cold process; a new session "
            f"on a warm server {last['session_ms']:.0f} ms), "
            f"reaggregate {last['reaggregate_ms']:.0f} ms, glyphs "
            f"{last['glyphs_ms']:.0f} ms, select {last['selected']:,} points "
            f"{last['select_1m_ms']:.0f} ms, peak rss {last['rss_mb']:.0f} MB",
            flush=True,
        )
    print(
        f"first_frame_ms={last['first_frame_ms']:.0f} "
        f"reaggregate_ms={last['reaggregate_ms']:.0f} glyphs_ms={last['glyphs_ms']:.0f} "
        f"select_1m_ms={last['select_1m_ms']:.0f} rss_mb={last['rss_mb']:.0f}"
    )


if __name__ == "__main__":
    main()
