"""Faithfulness of ASAP's explanation methods on planted evidence nobody tuned for, measured side
by side in one run on the same images, model and machine.

A planted suite (pipeline.synthetic.make_suite: 5 artifact families of different shape, size and
amplitude, periodic and not, grey and colour, faint ones of a few grey levels, at random places,
on 2 generator families of base images) is generated, a detector is trained on it exactly as
``asap run`` trains one (or loaded with --encoder), and on the held-out split (val + test) every
registered method is scored:

- detection: share of held-out fakes with p(fake) >= 0.5, per family;
- pointing: share of detected fakes whose fake map peaks on a patch that overlaps the artifact's
  pixels, per family (chance is the artifact's share of patches, printed as `chance`);
- deletion / insertion areas (pipeline.perturb, as the pattern stage measures them) against a
  random order and against plain attention: paired mean difference and its standard error;
- agreement with occlusion (the causal reference): Spearman correlation of the maps, per image;
- cost: time of the fake + real maps / time of a forward pass, on the same batches.

With --seeds 0 1 2 the whole thing is repeated with fresh data and training per seed and each
figure is reported as mean +- sd over seeds. --demo-run RUN adds the demo's held-out images with
that run's encoder (no pointing there: its fakes carry no planted box). The last line is

    pointing=P deletion=D random=R cost=C

for the default method (pipeline.explain.DEFAULT_METHOD), averaged over seeds, where P is the
pointing share on detected fakes over all families.

    python benchmarks/faithfulness.py --quick               # one seed, small suite (~2 min)
    python benchmarks/faithfulness.py --seeds 0 1 2 3 4 --epochs 40 --keep DIR   # train, keep
    python benchmarks/faithfulness.py --seeds 0 1 2 3 4 --encoder DIR --recalibrate \
        --demo-run runs/demo --demo-images 256                # the README's table from kept ones
    python benchmarks/faithfulness.py --seeds 0 --epochs 150 --patience 30 --families unseen
        # a detector trained as `asap run` trains, on families no part of ASAP was tuned on
    python benchmarks/faithfulness.py --seeds 0 --encoder DIR --families unseen
        # detectors kept from the suite (--keep DIR), scored on traces they never saw
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import _isolate  # noqa: F401  (before the package imports: see benchmarks/_isolate.py)
import numpy as np
import torch

from pipeline import ingest
from pipeline.config import STEMS, EncoderConfig, TrainConfig
from pipeline.encoder import create_encoder, load_encoder, save_encoder
from pipeline.explain import DEFAULT_METHOD, METHODS
from pipeline.explain import adapter as A
from pipeline.imageio import load_for_model, normalize
from pipeline.perturb import curve_area, order_by, perturbation_curves
from pipeline.synthetic import (
    PLANTERS,
    SUITE_FAMILIES,
    UNSEEN_FAMILIES,
    make_suite,
    peak_on_artifact,
)
from pipeline.train import fit_calibration, train_encoder


def _pixels(model, paths) -> torch.Tensor:
    arr = np.stack([load_for_model(p, model.image_size) for p in paths])
    return normalize(arr, model.preprocess["mean"], model.preprocess["std"])


def _timed(fn, pixels: torch.Tensor, batch: int):
    out, secs = [], 0.0
    for s in range(0, len(pixels), batch):
        t0 = time.perf_counter()
        out.append(fn(pixels[s : s + batch]))
        secs += time.perf_counter() - t0
    return torch.cat(out) if isinstance(out[0], torch.Tensor) else out, secs


def _spearman(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-row Spearman correlation of (B, n) arrays (ties broken by order; NaN if constant)."""
    ra = np.argsort(np.argsort(a, axis=1), axis=1).astype(np.float64)
    rb = np.argsort(np.argsort(b, axis=1), axis=1).astype(np.float64)
    ra -= ra.mean(axis=1, keepdims=True)
    rb -= rb.mean(axis=1, keepdims=True)
    den = np.sqrt((ra**2).sum(axis=1) * (rb**2).sum(axis=1))
    return np.where(den > 0, (ra * rb).sum(axis=1) / np.maximum(den, 1e-12), np.nan)


def score_methods(model, pixels, methods, batch: int, steps: int, seed: int) -> dict:
    """Maps, cost, deletion/insertion areas and occlusion agreement of each method on ``pixels``."""
    model.eval().requires_grad_(False)
    _, fwd = _timed(lambda x: torch.no_grad()(model)(x)[2], pixels, batch)  # warm-up
    _, fwd = _timed(lambda x: torch.no_grad()(model)(x)[2], pixels, batch)
    gen = torch.Generator().manual_seed(seed)
    out = {"forward_s": fwd}
    maps = {}
    for name in methods:
        fn = METHODS[name].fn
        m, secs = _timed(lambda x, fn=fn: fn(model, x, 2).maps[:, 0], pixels, batch)
        maps[name] = m.float()
        out[name] = {"cost": secs / fwd}
    maps["random"] = torch.rand(maps[methods[0]].shape, generator=gen)
    for name, m in maps.items():
        order = order_by(m, gen)  # seeded tie-breaking: the same figures in any process
        dele = curve_area(perturbation_curves(model, pixels, order, steps, False).numpy())
        ins = curve_area(perturbation_curves(model, pixels, order, steps, True).numpy())
        out.setdefault(name, {}).update(deletion=dele, insertion=ins, maps=m.numpy())
    if "occlusion" in maps:
        ref = maps["occlusion"].reshape(len(pixels), -1).numpy()
        for name in methods:
            out[name]["occlusion_rho"] = _spearman(maps[name].reshape(len(pixels), -1).numpy(), ref)
    return out


SURE = 0.9  # p(fake) from which a detection counts as confident in the per-band figures


def _auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """ROC-AUC of scores ``pos`` (fakes) against ``neg`` (reals)."""
    from sklearn.metrics import roc_auc_score

    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    return float(roc_auc_score(np.r_[np.ones(len(pos)), np.zeros(len(neg))], np.r_[pos, neg]))


def paired(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    return float(d.mean()), float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan")


def suite_seed(args, seed: int, methods: list[str]) -> dict:
    """Generate, train, and score one seed of the planted suite: {method: {figure: value}}."""
    with tempfile.TemporaryDirectory() as tmp:
        truth, masks = make_suite(Path(tmp) / "imgs", args.n_real, args.n_fake, seed=seed,
                                  size=args.size, families=args.families)  # fmt: skip
        images = ingest.finalize(
            ingest.inspect_candidates(ingest.discover(Path(tmp) / "imgs"), 10**8, 8)[0]
        )
        images["path"] = images["path_bytes"].map(bytes.decode)
        images = images.merge(truth[["path", "family", "base"]], on="path")
        torch.manual_seed(seed)
        if args.encoder:
            src = Path(args.encoder)  # a file, or a --keep folder (that seed's encoder)
            src = src / f"seed-{seed}.pt" if src.is_dir() else src
            model = load_encoder(src)
            info = torch.load(src, map_location="cpu", weights_only=False).get("extra", {})
            if args.recalibrate:  # today's calibration fit on this suite's val split
                val = images[(images["split"] == "val") & (images["duplicate_of"] < 0)]
                with torch.no_grad():
                    z = model(_pixels(model, val["path_bytes"].tolist()))[2].numpy()
                train = images[(images["split"] == "train") & (images["duplicate_of"] < 0)]
                t, shift = fit_calibration(z, val["label"].to_numpy(), train["label"].mean())
                model.temperature.fill_(t)
                model.logit_shift.fill_(shift)
                info = {**info, "temperature": t, "logit_shift": shift}
        else:
            model = create_encoder(
                EncoderConfig(model_name=args.model, stem=args.stem, tiles=args.tiles)
            )
            tcfg = TrainConfig(epochs=args.epochs, patience=args.patience, seed=seed,
                               selfblend=args.selfblend, ema_images=args.ema_images)  # fmt: skip
            info = train_encoder(model, images, tcfg)
            if args.keep:  # re-score later with --encoder DIR/seed-S.pt (same suite per seed)
                Path(args.keep).mkdir(parents=True, exist_ok=True)
                save_encoder(model, Path(args.keep) / f"seed-{seed}.pt", extra=info)
        model.eval()
        held = images[(images["split"] != "train") & (images["duplicate_of"] < 0)]
        pixels = _pixels(model, held["path_bytes"].tolist())
        with torch.no_grad():
            p = model.p_fake(model(pixels)[2]).numpy()
        lab = held["label"].to_numpy()
        fam = held["family"].to_numpy()
        base = held["base"].to_numpy()
        det = (lab == 1) & (p >= 0.5)
        if det.sum() < 2:  # an untrained smoke run (--quick): score every fake, and say so
            print(f"seed {seed}: WARNING: the detector found {det.sum()} held-out fakes; scoring "
                  "all held-out fakes instead (the figures then mean nothing)")  # fmt: skip
            det = lab == 1
        real = lab == 0
        res = {"_detect": {f: float((p[fam == f] >= 0.5).mean()) for f in args.families},
               "_auc": {f: _auc(p[fam == f], p[real]) for f in args.families},
               "_real_flagged": float((p[real] >= 0.5).mean()),
               "_acc": float(((p >= 0.5) == lab).mean()),
               "_epochs": info.get("epochs_run"), "_T": info.get("temperature"),
               "_shift": info.get("logit_shift", 0.0)}  # fmt: skip
        res["_base"] = {  # the same figures per base (smooth textures, photographs)
            b: {"auc": {f: _auc(p[(fam == f) & (base == b)], p[real & (base == b)])
                        for f in args.families},
                "detect": float((p[(lab == 1) & (base == b)] >= 0.5).mean()),
                "flagged": float((p[real & (base == b)] >= 0.5).mean())}
            for b in dict.fromkeys(base)
        }  # fmt: skip
        mk = np.stack([masks[path] for path in held["path"][det]])
        scores = score_methods(model, pixels[torch.as_tensor(det)], methods, args.batch,
                               args.steps, seed)  # fmt: skip
        fam_det, base_det = fam[det], base[det]
        sure = p[det] >= SURE  # confident detections, and the rest (0.5 <= p(fake) < SURE)
        gh = A.grid(model)[0]
        res["_chance"] = float(np.mean([
            peak_on_artifact(np.eye(gh * gh)[i].reshape(1, gh, gh).repeat(len(mk), 0), mk).mean()
            for i in range(gh * gh)
        ]))  # fmt: skip
        for name in [*methods, "random"]:
            s = scores[name]
            hit = peak_on_artifact(s["maps"], mk)
            r = {"pointing": float(hit.mean()), "deletion": float(s["deletion"].mean()),
                 "insertion": float(s["insertion"].mean())}  # fmt: skip
            r.update({f"point_{f}": float(hit[fam_det == f].mean()) if (fam_det == f).any()
                      else float("nan") for f in args.families})  # fmt: skip
            r.update({f"point_{b}": float(hit[base_det == b].mean()) if (base_det == b).any()
                      else float("nan") for b in res["_base"]})  # fmt: skip
            for band, sel in (("sure", sure), ("unsure", ~sure)):
                r[f"point_{band}"] = float(hit[sel].mean()) if sel.any() else float("nan")
                r[f"vs_random_{band}"] = (
                    paired(s["deletion"][sel], scores["random"]["deletion"][sel])[0]
                    if sel.sum() > 1 else float("nan")
                )  # fmt: skip
            r["vs_random"], r["vs_random_se"] = paired(s["deletion"], scores["random"]["deletion"])
            if "attention" in scores:
                r["vs_attention"], r["vs_attention_se"] = paired(
                    s["deletion"], scores["attention"]["deletion"]
                )
            r["cost"] = s.get("cost", float("nan"))
            r["occlusion_rho"] = (
                float(np.nanmean(s["occlusion_rho"])) if "occlusion_rho" in s else float("nan")
            )
            res[name] = r
        res["_n_detected"] = int(det.sum())
        res["_n_sure"] = int(sure.sum())
        return res


def demo_scores(args, methods: list[str]) -> dict:
    from pipeline.schema import open_run

    run = open_run(args.demo_run)
    model = load_encoder(run.paths.encoder)
    cols = ["id", "path_bytes", "split", "label", "generator"]
    feats = run.features.merge(run.images[cols], on="id")
    # held out: val (early stopping, temperature) and test; neither was trained on
    test_fakes = feats[(feats["split"] != "train") & (feats["label"] == 1)]
    detection = test_fakes.groupby("generator")["p_fake"].apply(lambda p: float((p >= 0.5).mean()))
    fakes = test_fakes[test_fakes["p_fake"] >= 0.5]
    fakes = fakes.sample(min(len(fakes), args.demo_images), random_state=0)
    pixels = _pixels(model, fakes["path_bytes"].tolist())
    scores = score_methods(model, pixels, methods, args.batch, args.steps, 0)
    # ae-inpaint fakes changed one region, whose box the demo's manifest records: pointing there
    boxes = demo_regions(Path(args.demo_data), fakes["path_bytes"])
    local = np.array([b is not None for b in boxes])
    masks = np.zeros((int(local.sum()), model.image_size, model.image_size), bool)
    for m, (t, l_, b, r_) in zip(masks, [b for b in boxes if b is not None]):
        m[t:b, l_:r_] = True
    res = {"_detect": detection.to_dict(), "_n_local": int(local.sum())}
    for name in [*methods, "random"]:
        s = scores[name]
        r = {"deletion": float(s["deletion"].mean()), "insertion": float(s["insertion"].mean()),
             "cost": s.get("cost", float("nan"))}  # fmt: skip
        r["pointing_local"] = (
            float(peak_on_artifact(s["maps"][local], masks).mean()) if local.any() else np.nan
        )
        r["vs_random"], r["vs_random_se"] = paired(s["deletion"], scores["random"]["deletion"])
        if "attention" in scores:
            r["vs_attention"], r["vs_attention_se"] = paired(
                s["deletion"], scores["attention"]["deletion"]
            )
        r["occlusion_rho"] = (
            float(np.nanmean(s["occlusion_rho"])) if "occlusion_rho" in s else float("nan")
        )
        res[name] = r
    res["_n"] = len(fakes)
    return res


def demo_regions(root: Path, path_bytes) -> list:
    """The changed region (top, left, bottom, right) of each image per the demo's manifest.csv
    under ``root`` (None for an image without one, or when there is no manifest)."""
    import pandas as pd

    if not (root / "manifest.csv").exists():
        return [None] * len(path_bytes)
    man = pd.read_csv(root / "manifest.csv")
    if "region_top" not in man:
        return [None] * len(path_bytes)
    box = {
        str((root / p).resolve()): (int(t), int(l_), int(b), int(r_))
        for p, t, l_, b, r_ in man[
            ["path", "region_top", "region_left", "region_bottom", "region_right"]
        ].itertuples(index=False)  # fmt: skip
        if t >= 0
    }
    return [box.get(str(Path(p.decode()).resolve())) for p in path_bytes]


def _ms(values) -> str:
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], np.float64)
    if len(v) == 0:
        return "—"
    return f"{v.mean():.2f}" if len(v) == 1 else f"{v.mean():.2f} ± {v.std(ddof=1):.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="*", default=[0],
                    help="planted-suite seeds; none (with --demo-run): the demo only")  # fmt: skip
    ap.add_argument("--n-real", type=int, default=600, help="real images per base")
    ap.add_argument("--n-fake", type=int, default=120, help="fakes per base and family")
    ap.add_argument("--model", default="asap-tiny-vit-64")
    ap.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    ap.add_argument("--patience", type=int, default=TrainConfig.patience,
                    help="validation rounds without improvement before training stops")  # fmt: skip
    ap.add_argument("--selfblend", type=float, default=TrainConfig.selfblend,
                    help="share of real images added as self-blended copies")  # fmt: skip
    ap.add_argument(
        "--ema-images",
        type=int,
        default=TrainConfig.ema_images,
        help="train with a moving average of the weights (asap run --ema-images)",
    )
    ap.add_argument("--stem", default=None, choices=STEMS, help="the detector's stem (default: "
                    "the default for a tower trained from scratch)")  # fmt: skip
    ap.add_argument(
        "--encoder",
        default=None,
        help="score this encoder (a file, or a --keep folder) instead of training",
    )
    ap.add_argument(
        "--recalibrate",
        action="store_true",
        help="with --encoder: fit p(fake)'s "
        "temperature and shift again on the suite's val split (today's calibration)",
    )
    ap.add_argument("--keep", default=None, help="save each seed's trained encoder in this folder")
    ap.add_argument(
        "--families",
        default="suite",
        help=f"the planted families: `suite` (the {len(SUITE_FAMILIES)} the detectors are "
        f"developed on), `unseen` (the {len(UNSEEN_FAMILIES)} of "
        "pipeline.synthetic.UNSEEN_FAMILIES: score kept detectors with --encoder on traces "
        "they never saw), or a comma list",
    )
    ap.add_argument("--size", type=int, default=64, help="side of the suite's images in pixels")
    ap.add_argument("--tiles", type=int, default=1, help="the detector's tiles per side (asap run "
                    "--tiles): --size 128 --tiles 2 sees the images at native resolution, "
                    "--tiles 1 resizes them to the tower's input")  # fmt: skip
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--demo-run", default=None, help="also score this run's held-out fakes")
    ap.add_argument("--demo-images", type=int, default=128)
    ap.add_argument("--demo-data", default="data/demo", help="the demo's data (manifest.csv)")
    ap.add_argument("--quick", action="store_true", help="small suite, few epochs (a smoke run)")
    args = ap.parse_args()
    if args.quick:
        args.n_real, args.n_fake = min(args.n_real, 60), min(args.n_fake, 12)
        args.epochs = min(args.epochs, 3)
    named = {"suite": SUITE_FAMILIES, "unseen": UNSEEN_FAMILIES}
    args.families = list(named.get(args.families, args.families.split(",")))
    if bad := [f for f in args.families if f not in PLANTERS]:
        ap.error(f"unknown families {bad}: choose from suite, unseen or {sorted(PLANTERS)}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")  # epochs on stderr
    methods = [m for m in args.methods.split(",") if m]
    for m in (DEFAULT_METHOD, "attention"):
        if m not in methods:
            methods.insert(0, m)
    if not args.seeds and not args.demo_run:
        ap.error("give --seeds, --demo-run, or both")
    seeds = [suite_seed(args, s, methods) for s in args.seeds]
    if seeds:
        suite_table(args, seeds, methods)
    d = demo_scores(args, methods) if args.demo_run else None
    if d:
        demo_table(args, d, methods)
    dm = DEFAULT_METHOD
    if seeds:
        print(f"pointing={np.mean([r[dm]['pointing'] for r in seeds]):.3f} "
              f"deletion={np.mean([r[dm]['deletion'] for r in seeds]):.3f} "
              f"random={np.mean([r['random']['deletion'] for r in seeds]):.3f} "
              f"cost={np.mean([r[dm]['cost'] for r in seeds]):.2f}")  # fmt: skip
    else:  # the demo alone: pointing on its locally changed fakes
        print(
            f"pointing={d[dm]['pointing_local']:.3f} deletion={d[dm]['deletion']:.3f} "
            f"random={d['random']['deletion']:.3f} cost={d[dm]['cost']:.2f}"
        )


def suite_table(args, seeds: list[dict], methods: list[str]) -> None:
    for s, r in zip(args.seeds, seeds):
        print(f"seed {s}: held-out accuracy {r['_acc']:.3f}, detected fakes {r['_n_detected']}, "
              f"epochs {r['_epochs']}, T {r['_T'] or float('nan'):.3f}, "
              f"shift {r['_shift'] or 0.0:+.3f}, detection "
              + " ".join(f"{f} {v:.2f}" for f, v in r["_detect"].items())
              + f"; reals flagged {r['_real_flagged']:.2f}; AUC vs reals "
              + " ".join(f"{f} {v:.3f}" for f, v in r["_auc"].items()))  # fmt: skip
        for b, v in r["_base"].items():
            print(f"  {b}: fakes detected {v['detect']:.2f}, reals flagged {v['flagged']:.2f}, "
                  "AUC " + " ".join(f"{f} {a:.3f}" for f, a in v["auc"].items()))  # fmt: skip
    print(f"\nplanted suite: {len(args.seeds)} seed(s), mean ± sd over seeds; pointing chance "
          f"{_ms([r['_chance'] for r in seeds])}; detected fakes "
          f"{_ms([r['_n_detected'] for r in seeds])}, of them p(fake) >= {SURE} (sure) "
          f"{_ms([r['_n_sure'] for r in seeds])}")  # fmt: skip
    bases = list(seeds[0]["_base"])
    cols = ["pointing", *[f"point_{f}" for f in args.families],
            *[f"point_{b}" for b in bases], "point_sure", "point_unsure", "deletion", "insertion",
            "vs_random", "vs_random_sure", "vs_random_unsure", "vs_attention", "occlusion_rho",
            "cost"]  # fmt: skip
    print("| method | " + " | ".join(cols) + " |")
    print("|" + " --- |" * (len(cols) + 1))
    for name in [*methods, "random"]:
        cells = []
        for c in cols:
            vals = [r[name].get(c) for r in seeds]
            cell = _ms(vals)
            if c in ("vs_random", "vs_attention") and len(seeds) == 1 and vals[0] is not None:
                cell += f" (se {seeds[0][name].get(c + '_se', float('nan')):.3f})"
            cells.append(cell)
        print(f"| {name} | " + " | ".join(cells) + " |")


def demo_table(args, d: dict, methods: list[str]) -> None:
    print(f"\ndemo run {args.demo_run}: {d['_n']} detected held-out (val + test) fakes, "
          f"{d['_n_local']} of them locally changed (ae-inpaint); detection of held-out fakes: "
          + ", ".join(f"{g} {v:.2f}" for g, v in d["_detect"].items()))  # fmt: skip
    cols = ("pointing (ae-inpaint) | deletion | insertion | vs_random (se) | "
            "vs_attention (se) | occlusion_rho | cost")  # fmt: skip
    print(f"| method | {cols} |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in [*methods, "random"]:
        r = d[name]
        nan = float("nan")
        va = f"{r.get('vs_attention', nan):+.3f} ({r.get('vs_attention_se', nan):.3f})"
        print(f"| {name} | {r['pointing_local']:.2f} | {r['deletion']:.3f} | "
              f"{r['insertion']:.3f} | "
              f"{r['vs_random']:+.3f} ({r['vs_random_se']:.3f}) | {va} | "
              f"{r['occlusion_rho']:.2f} | {r['cost']:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
