"""`asap scan SOURCE`: what a run would ingest, without Dask or training. The same discovery and the
same per-image checks as ingest (decode, hash, size), in a process pool; a report of the layouts
recognised, counts per split x label x generator/source, rejects by reason and duplicates."""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pandas as pd

from . import ingest
from .config import ColumnsConfig
from .schema import LABEL_FAKE, LABEL_REAL

CHUNK = 256
SHOW = 10  # example paths shown per problem


def scan(
    source,
    columns: ColumnsConfig | None = None,
    max_pixels: int = 64_000_000,
    min_side: int = 8,
    workers: int | None = None,
) -> dict:
    found = ingest.discover_source(source, columns)
    cands = found.candidates
    chunks = [cands[i : i + CHUNK] for i in range(0, len(cands), CHUNK)]
    workers = max(1, workers or os.cpu_count() or 1)
    if len(chunks) <= 1 or workers == 1:
        results = [ingest.inspect_candidates(c, max_pixels, min_side) for c in chunks]
    else:
        with ProcessPoolExecutor(min(workers, len(chunks))) as pool:
            results = list(
                pool.map(
                    ingest.inspect_candidates,
                    chunks,
                    [max_pixels] * len(chunks),
                    [min_side] * len(chunks),
                )
            )
    frames = [r[0] for r in results]
    rejects = pd.concat([r[1] for r in results], ignore_index=True) if results else None
    report = {"source": os.path.abspath(source), "layouts": found.layouts, "candidates": len(cands)}
    if not frames or all(f.empty for f in frames):
        images = None
    else:
        images, notes = ingest.finalize_with_notes(pd.concat(frames, ignore_index=True))
        report.update(notes)
    if images is not None:
        summary = ingest.summarize(images, rejects)
        usable = images.assign(
            label=images["label"].map({LABEL_REAL: "real", LABEL_FAKE: "fake"}),
            duplicate=images["duplicate_of"] >= 0,
        )
        counts = (
            usable.groupby(["split", "label", "generator", "source"], observed=True)
            .agg(images=("id", "size"), duplicates=("duplicate", "sum"))
            .reset_index()
        )
        counts["images"] = counts["images"].astype(int)
        counts["duplicates"] = counts["duplicates"].astype(int)
        report.update(summary)
        report["counts"] = counts.to_dict("records")
        report["resolution"] = _resolution(images[images["duplicate_of"] < 0])
    else:
        report.update(
            images=0,
            real=0,
            fake=0,
            duplicates=0,
            rejected=len(rejects) if rejects is not None else 0,
            counts=[],
        )
        if rejects is not None:
            report["reject_reasons"] = (
                rejects["reason"].str.split(":").str[0].value_counts().to_dict()
            )
    if rejects is not None and len(rejects):
        report["first_rejects"] = [
            {"path": r.path, "reason": r.reason} for r in rejects.head(SHOW).itertuples()
        ]
    problems = []
    unlabelled = [c for c in cands if c.label is None]
    if not cands:
        problems.append(f"no images found. {ingest.LAYOUT_HELP}")
    elif unlabelled:
        problems.append(
            ingest.unlabelled_help(cands, source, SHOW, found.notes).split("\nRun `asap scan")[0]
        )
    if report.get("images") and (report.get("real") == 0 or report.get("fake") == 0):
        problems.append(
            "only one label among the usable images: `asap run` cannot train on it "
            "(pass --encoder CKPT to explain with a trained encoder)"
        )
    if report.get("duplicate_label_conflicts"):
        problems.append(f"{report['duplicate_label_conflicts']} identical files carry both labels")
    report["problems"] = problems
    return report


def _resolution(images: pd.DataFrame) -> dict:
    """The images' sides against what the default model sees (pipeline.trust.resolution_gap),
    read from ASAP's own config file: no torch or open_clip import for a scan."""
    import json

    from .config import EncoderConfig
    from .trust import resolution_gap

    name = EncoderConfig().model_name
    cfg = json.loads((Path(__file__).parent / "model_configs" / f"{name}.json").read_text())
    tower = int(cfg["vision_cfg"]["image_size"])
    gap = resolution_gap(images["width"].to_numpy(), images["height"].to_numpy(), tower, 1)
    sides = pd.concat([images["width"], images["height"]], axis=1).min(axis=1)
    return {**gap, "model": name, "min_side": int(sides.min()), "max_side": int(sides.max())}


def format_report(r: dict) -> str:
    lines = [f"source: {r['source']}"]
    lines.append("layout: " + ("; ".join(r["layouts"]) if r["layouts"] else "none recognised"))
    lines.append(
        f"images: {r['images']} usable ({r['real']} real, {r['fake']} fake) of "
        f"{r['candidates']} found; {r['rejected']} rejected; "
        f"{r['duplicates']} exact duplicates"
    )
    if r.get("splits"):
        lines.append(f"splits: {r['splits']}")
    if r.get("held_out") and r["held_out"] != "test":
        lines.append(f"held out for metrics: {r['held_out']}")
    res = r.get("resolution")
    if res and res.get("median_side"):
        lines.append(
            f"image sides: shorter side median {res['median_side']:.0f} px (range "
            f"{res['min_side']}-{res['max_side']}); the default model ({res['model']}) sees "
            f"{res['model_side']} px"
        )
        if res.get("note"):
            lines.append(f"hint: {res['note']}")
    if r.get("counts"):
        t = pd.DataFrame(r["counts"])
        lines += ["", t.to_string(index=False)]
    if r.get("reject_reasons"):
        lines += ["", "rejected, by reason:"]
        lines += [f"  {n:>7}  {reason}" for reason, n in r["reject_reasons"].items()]
        lines += ["first rejects:"] + [f"  {x['path']}: {x['reason']}" for x in r["first_rejects"]]
    if r["problems"]:
        lines += ["", "problems:"] + [f"  - {p}" for p in r["problems"]]
    return "\n".join(lines)
