"""Does a pattern's impact beat its random control because of where it is, or how much it masks?
Side by side on one finished run, every pattern re-scored four ways.

The pattern stage (pipeline.patterns.pattern_impact) masks a pattern's patches and their 8
neighbours in up to 64 member images (blurred in place) and re-scores p(fake); its control masks as
many other patches of the same images, scattered at random. Issue 9 asks for patterns whose
impact interval lies wholly above 5x that control. Two things could keep a pattern below it:

- the control's geometry: scattered patches against the footprint's contiguous block. Control
  ``shifted`` masks the footprint itself moved to the place on the grid (wrapping at the edges)
  where it overlaps itself least, so only the place differs (cells that still overlap are
  replaced by random free ones: the same number of patches);
- the footprint's size: with its neighbours a pattern masks 10-27 of 64 patches, and a trace a
  generator leaves everywhere loses part of its evidence under any mask that large. Footprint
  ``cells`` masks the pattern's own patches only (as do its controls).

Per pattern and way: impact and its 95% bootstrap interval, the control's mean, and whether the
interval is wholly above 5x a positive control ("strong"; a control <= 0 is counted apart, as
"strong_literal"). The stage's own figures are the ``neighbours`` + ``scattered`` row, with the
same images and random draws. Last line:

    strong_neighbours_scattered=N strong_neighbours_shifted=N strong_cells_scattered=N
    strong_cells_shifted=N

    python benchmarks/pattern_controls.py --run runs/demo     # about 20 s on 2 cores
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

try:  # must come before the package imports: see benchmarks/_isolate.py
    import _isolate  # noqa: F401
except ModuleNotFoundError:
    pass
import numpy as np
import pandas as pd
import torch

from pipeline import patterns as P
from pipeline.encoder import file_sha256
from pipeline.explain.adapter import grid
from pipeline.perturb import blurred, masked, p_fake
from pipeline.schema import IMAGE_COLUMNS, PATTERN_MEMBER_COLUMNS, RunPaths, read_table
from pipeline.worker import cached_model

REPO = Path(__file__).resolve().parents[1]


def shifted(footprint: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``footprint`` (gh, gw) bool moved (wrapping) to where it overlaps itself least; cells that
    still overlap it are replaced by random free ones, so as many patches are masked."""
    gh, gw = footprint.shape
    overlap = {
        (dy, dx): int((np.roll(footprint, (dy, dx), (0, 1)) & footprint).sum())
        for dy in range(gh)
        for dx in range(gw)
        if (dy, dx) != (0, 0)
    }
    least = min(overlap.values())
    shifts = [s for s, o in overlap.items() if o == least]
    out = np.roll(footprint, shifts[int(rng.integers(len(shifts)))], (0, 1)) & ~footprint
    short = int(footprint.sum() - out.sum())
    if short > 0:
        free = np.flatnonzero(~(footprint | out).ravel())
        out.ravel()[rng.choice(free, min(short, len(free)), replace=False)] = True
    return out


def rescore(model, pixels, cells, seed: int) -> dict[tuple[str, str], tuple[np.ndarray, ...]]:
    """Per footprint and control: (drops when the pattern is masked, drops under the control)."""
    ref, base = blurred(model, pixels), p_fake(model, pixels)

    def drop(mask: torch.Tensor) -> np.ndarray:
        return (base - p_fake(model, masked(pixels, ref, mask))).numpy()

    out = {}
    for foot in ("neighbours", "cells"):
        # the stage's own draws for the scattered control: the same generator, seeded alike
        pat, rnd = P.impact_masks(
            cells, grid(model), np.random.default_rng(seed), foot == "neighbours"
        )
        srng = np.random.default_rng(10_000 + seed)
        moved = torch.stack([torch.from_numpy(shifted(p.numpy(), srng)) for p in pat])
        d = drop(pat)
        out[(foot, "scattered")] = (d, drop(rnd))
        out[(foot, "shifted")] = (d, drop(moved))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", default=str(REPO / "runs" / "demo"), help="a finished run")
    ap.add_argument("--csv", default="", help="also write the table here")
    args = ap.parse_args()
    src = Path(args.run)
    run = RunPaths(src)
    if not run.patterns.exists():
        sys.exit(f"{src} has no patterns: make a finished run first (make demo, asap run ...)")
    pcfg = json.loads((src / "run.json").read_text())["config"]["patterns"]
    model = cached_model(str(run.encoder), file_sha256(run.encoder), "cpu")
    mem = read_table(run.pattern_members, PATTERN_MEMBER_COLUMNS)
    cols = {c: IMAGE_COLUMNS[c] for c in ("id", "path_bytes")}
    paths = read_table(run.images, cols).set_index("id")["path_bytes"]
    rng = np.random.default_rng(pcfg["seed"])  # the stage's choice of images, pattern by pattern
    rows = []
    for pk, g in mem.groupby("pattern"):
        ids = rng.permutation(g["id"].unique())[: pcfg["impact_images"]]
        by_id = g[g["id"].isin(ids)].groupby("id")[["gy", "gx"]]
        by_id = {i: list(map(tuple, c.to_numpy())) for i, c in by_id}
        pixels, ok = P._pixels(model, paths.loc[ids].tolist())
        if pixels is None:
            continue
        cells = [by_id[ids[j]] for j in ok]
        drops = rescore(model, pixels, cells, pcfg["seed"] + int(pk))
        for (foot, control), (d, r) in drops.items():
            lo, hi = P.bootstrap_ci(d)
            c = float(np.mean(r))
            rows.append(dict(pattern=int(pk), footprint=foot, control=control, images=len(d),
                             impact=float(np.mean(d)), lo=lo, hi=hi, control_mean=c,
                             strong=bool(c > 0 and lo > 5 * c),
                             strong_literal=bool(c <= 0 and lo > 0)))  # fmt: skip
    table = pd.DataFrame(rows)
    if args.csv:
        table.to_csv(args.csv, index=False)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(f"run {src}: impact of each pattern, 95% bootstrap interval, mean control drop")
        print(table.round(3).to_string(index=False))
    counts = table.groupby(["footprint", "control"])[["strong", "strong_literal"]].sum()
    print(counts.to_string())
    print(" ".join(f"strong_{f}_{c}={int(counts.loc[(f, c), 'strong'])}"
                   for f in ("neighbours", "cells") for c in ("scattered", "shifted")))  # fmt: skip


if __name__ == "__main__":
    main()
