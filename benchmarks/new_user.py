"""What a new user sees: a planted set nobody tuned for, through the default ``asap run``, scored
against the truth the run never saw.

Issue 9 opens with this check: two subtle artifact families (a faint periodic grating, a thin
colour-shifted ring), 800 images at 64 px, the default run; it found the detector's maps pointing
at the grating in 7.5% of detected fakes and deleting worse than a random order. This script
repeats it end to end, as a user would:

1. ``pipeline.synthetic.make_suite`` writes the images (reals per base, fakes per base and family,
   each family's trace at a random place) in the ``0_real``/``1_fake`` folder layout ASAP reads,
   and keeps the truth (family, base, the trace's pixel mask) beside them, out of the run's sight:
   ``IMAGES-truth.parquet`` and ``IMAGES-masks.npy``;
2. ``python -m pipeline.cli run IMAGES --out OUT`` in a fresh process, with the defaults (extra
   ``asap run`` arguments after ``--``);
3. the run's output scored against the truth: held-out (``split == test``) accuracy, the reals
   flagged per base, fakes detected per family and base; the pointing game on detected held-out
   fakes (the ``fake`` map's peak patch overlaps the trace's pixels; an all-zero map points nowhere)
   per family; the run's own faithfulness (deletion area of its maps, a random order and plain
   attention); and per pattern its impact interval, its random control, which families its fake
   members carry and how many of their patches lie on the trace. A pattern is ``strong`` when its
   interval lies wholly above 5x a positive control, ``strong_literal`` when the control is <= 0 and
   the interval above 0 (as ``benchmarks/pattern_controls.py`` counts them). With ``--methods`` the
   detected held-out fakes' maps are re-drawn by the run's encoder with those methods, pointing
   per base and confidence band: are the misses the maps' fault, or does occlusion miss too?

Last line:

    detected_min=D pointing_min=P deletion=X random=R attention=A strong=N strong_literal=M

(the lowest family's detection and pointing; the deletion areas of the default maps, a random order
and plain attention). About 11 min on 2 cores for the default 800 images:

    python benchmarks/new_user.py --seed 11 --images /tmp/nu11 --out /tmp/nu11-run
    python benchmarks/new_user.py --score-only --images /tmp/nu11 --out /tmp/nu11-run \
        --methods chefer_all,legrad,attention,occlusion
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

try:  # must come before the package imports: see benchmarks/_isolate.py
    import _isolate  # noqa: F401
except ModuleNotFoundError:
    pass
import numpy as np
import pandas as pd

from pipeline.encoder import load_encoder
from pipeline.explain import METHODS
from pipeline.imageio import load_for_model, normalize
from pipeline.metrics import SURE_P_FAKE
from pipeline.schema import MAP_NAMES, RunPaths
from pipeline.synthetic import SUITE_BASES, make_suite, peak_on_artifact

REPO = Path(__file__).resolve().parents[1]


def truth_paths(images: Path) -> tuple[Path, Path]:
    return images.with_name(images.name + "-truth.parquet"), images.with_name(
        images.name + "-masks.npy"
    )


def write_set(images: Path, families, bases, n_real: int, n_fake: int, seed: int) -> None:
    if images.exists() and any(images.iterdir()):
        sys.exit(f"{images} is not empty: pass a new --images folder (or --score-only)")
    truth, masks = make_suite(images, n_real, n_fake, families=families, bases=bases, seed=seed)
    tp, mp = truth_paths(images)
    truth.to_parquet(tp)
    np.save(mp, np.stack([masks[p] for p in truth.path]))


def redraw(out: Path, detected: pd.DataFrame, masks: np.ndarray, methods: list[str]) -> None:
    """Are the misses the maps' fault? The detected held-out fakes' ``fake`` maps re-drawn by the
    run's encoder with other methods (occlusion is the causal reference), pointing per base, split
    by the detector's confidence."""
    model = load_encoder(RunPaths(out).encoder).eval().requires_grad_(False)
    print(f"\n| base | method | pointing | sure (p(fake) >= {SURE_P_FAKE}) | unsure |")
    print("| --- | --- | --- | --- | --- |")
    for base, g in detected.groupby("base"):
        arr = np.stack([load_for_model(p, model.image_size) for p in g.path])
        px = normalize(arr, model.preprocess["mean"], model.preprocess["std"])
        sure = g.p_fake.to_numpy() >= SURE_P_FAKE
        for name in methods:
            maps = METHODS[name].fn(model, px, 2).maps[:, 0].float().numpy()
            hit = peak_on_artifact(maps, masks[g.mask_row.to_numpy()])
            cells = [f"{h.mean():.2f} ({len(h)})" if len(h) else "–"
                     for h in (hit[sure], hit[~sure])]  # fmt: skip
            print(f"| {base} | {name} | {hit.mean():.2f} ({len(hit)}) | {' | '.join(cells)} |")


def score(images: Path, out: Path, methods: list[str] = ()) -> dict:
    tp, mp = truth_paths(images)
    truth = pd.read_parquet(tp)
    masks = np.load(mp)
    truth["mask_row"] = np.arange(len(truth))
    paths = RunPaths(out)
    meta = json.loads(paths.run_json.read_text())
    im = pd.read_parquet(paths.images, columns=["id", "path", "label", "split"])
    feats = pd.read_parquet(paths.features, columns=["id", "pred", "p_fake", "part", "row"])
    df = im.merge(feats, on="id").merge(
        truth[["path", "family", "base", "mask_row"]], on="path", how="inner"
    )
    if len(df) < len(im):
        sys.exit(f"{len(im) - len(df)} images of the run are not in the truth table {tp}")
    test = df[df.split == "test"]
    fakes = test[test.label == 1]
    print(f"held-out images {len(test)}, accuracy {(test.pred == test.label).mean():.3f}")
    reals = test[test.label == 0].groupby("base").pred.mean()
    print("reals flagged:", ", ".join(f"{b} {v:.2f}" for b, v in reals.items()))

    fi = MAP_NAMES.index("fake")
    rel = {p: np.load(paths.part_relevance(int(p)), mmap_mode="r") for p in df.part.unique()}

    def fake_maps(sub: pd.DataFrame) -> np.ndarray:
        return np.stack([np.asarray(rel[r.part][r.row, fi], np.float32) for r in sub.itertuples()])

    print("\n| family | base | held-out fakes | detected | pointing (detected) |")
    print("| --- | --- | --- | --- | --- |")
    det_fam, point_fam = {}, {}
    for (fam, base), sub in list(fakes.groupby(["family", "base"])) + [
        ((f, "all"), s) for f, s in fakes.groupby("family")
    ]:
        hit = sub[sub.pred == 1]
        point = (
            float(peak_on_artifact(fake_maps(hit), masks[hit.mask_row.to_numpy()]).mean())
            if len(hit)
            else float("nan")
        )
        if base == "all":
            det_fam[fam], point_fam[fam] = float(sub.pred.mean()), point
        print(f"| {fam} | {base} | {len(sub)} | {sub.pred.mean():.2f} | {point:.2f} |")
    detected = fakes[fakes.pred == 1]
    zero = (
        float((np.abs(fake_maps(detected)).reshape(len(detected), -1).max(1) == 0).mean())
        if len(detected)
        else float("nan")
    )
    print(f"\ndetected held-out fakes whose fake map is all zero: {zero:.3f}")
    if methods and len(detected):
        redraw(out, detected, masks, methods)

    method = meta["config"].get("maps", "chefer_all")
    faith = meta["stages"].get("patterns", {}).get("faithfulness") or {}
    areas = {
        k: faith.get(k, {}).get("deletion", float("nan")) for k in (method, "random", "attention")
    }
    for other in ("random", "attention"):
        d = faith.get(method, {}).get(f"vs_{other}") or {}
        if d:
            print(f"{method} deletion − {other}: {d['mean']:+.3f} (s.e. {d['se']:.3f}, "
                  f"{d['images']} images)")  # fmt: skip

    strong = literal = 0
    if paths.patterns.exists():
        pats = pd.read_parquet(paths.patterns)
        mem = pd.read_parquet(paths.pattern_members, columns=["pattern", "id", "gy", "gx"])
        mem = mem.merge(df[["id", "label", "family", "mask_row"]], on="id")
        gh, gw = next(iter(rel.values())).shape[-2:]
        ph, pw = masks.shape[1] // gh, masks.shape[2] // gw
        print("\n| pattern | impact [95%] | random control | strong | fake share | fake members "
              "by family | their patches on the trace |")  # fmt: skip
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for r in pats.itertuples():
            lo, c = float(r.impact_lo), float(r.random_impact)
            s, sl = bool(c > 0 and lo > 5 * c), bool(c <= 0 and lo > 0)
            strong, literal = strong + s, literal + sl
            fk = mem[(mem.pattern == r.pattern) & (mem.label == 1)]
            on = [masks[q.mask_row, q.gy * ph:(q.gy + 1) * ph, q.gx * pw:(q.gx + 1) * pw].any()
                  for q in fk.itertuples()]  # fmt: skip
            fams = ", ".join(f"{k} {v}" for k, v in fk.family.value_counts().items())
            print(f"| {r.pattern} | {r.impact:.3f} [{lo:.3f}, {r.impact_hi:.3f}] | {c:.3f} | "
                  f"{'yes' if s else 'literal' if sl else 'no'} | {r.fake_share:.2f} | {fams} | "
                  f"{np.mean(on) if on else float('nan'):.2f} |")  # fmt: skip
    summary = dict(
        detected_min=min(det_fam.values()),
        # a family with no detected fake has no pointing (nan) and is left out of the minimum
        pointing_min=float(np.nanmin(list(point_fam.values())))
        if np.isfinite(list(point_fam.values())).any()
        else float("nan"),
        deletion=areas[method],
        random=areas["random"],
        attention=areas["attention"],
        strong=strong,
        strong_literal=literal,
    )
    print("\n" + " ".join(f"{k}={v}" if isinstance(v, int) else f"{k}={v:.3f}"
                          for k, v in summary.items()))  # fmt: skip
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--families", default="grating,ring", help="planted families (comma-separated)")
    ap.add_argument("--bases", default=",".join(SUITE_BASES), help="image bases (comma-separated)")
    ap.add_argument("--n-real", type=int, default=200, help="reals per base")
    ap.add_argument("--n-fake", type=int, default=100, help="fakes per base and family")
    ap.add_argument("--seed", type=int, default=11, help="the set's seed")
    ap.add_argument("--images", required=True, help="a new folder for the images")
    ap.add_argument("--out", required=True, help="the run directory")
    ap.add_argument("--score-only", action="store_true", help="score a finished run of --images")
    ap.add_argument("--methods", default="",
                    help="also re-draw the detected held-out fakes' maps with these methods "
                    "(comma-separated, e.g. chefer_all,legrad,attention,occlusion)")  # fmt: skip
    ap.add_argument("rest", nargs=argparse.REMAINDER, help="-- then extra `asap run` arguments")
    a = ap.parse_args()
    images, out = Path(a.images).resolve(), Path(a.out).resolve()
    if not a.score_only:
        write_set(images, a.families.split(","), a.bases.split(","), a.n_real, a.n_fake, a.seed)
        extra = a.rest[1:] if a.rest[:1] == ["--"] else a.rest
        cmd = [sys.executable, "-m", "pipeline.cli", "run", str(images), "--out", str(out), *extra]
        print("$ asap run", str(images), "--out", str(out), *extra, flush=True)
        proc = subprocess.run(cmd, cwd=REPO)
        if proc.returncode:
            sys.exit(f"asap run failed (exit {proc.returncode})")
    methods = [m for m in a.methods.split(",") if m]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        sys.exit(f"unknown --methods {unknown}; choose from {sorted(METHODS)}")
    score(images, out, methods)


if __name__ == "__main__":
    main()
