"""The ``asap`` command line: the one place where configuration is built from arguments."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys

import numpy as np

from .config import STEMS, EncoderConfig, PatternConfig, RunConfig, TrainConfig

# The registry's names (pipeline.explain.METHODS; a test keeps them equal), spelled here so that
# `asap --help` and `asap serve` do not import torch.
METHOD_HELP = (
    "chefer_all (default), legrad, attngrad, gradinput, rollout, attention, chefer_last, "
    "occlusion (65 forward passes: for small sets)"
)

RUN_EPILOG = """\
image layouts read (folder names case-insensitive; `asap scan SOURCE` shows what is found):
  <gen>/[<class>/]0_real|1_fake/        CNNDetection, UnivFD
  <gen>/[train|val]/nature|ai/          GenImage (val is the held-out split when there is no test)
  .../real|fake/...                     plain real/fake folders
  real/ beside <generator>/ folders     at any depth: DiffusionForensics'
                                        images/<split>/<domain>/{real,adm,ldm,...}
  <subset>/metadata.csv                 ArtiFact (image_path,target,category; target 0 = real)
  *.parquet with the images inside      Community Forensics (image_data, model_name, label),
                                        Hugging Face exports (image {bytes,path}, label, model)
  manifest.csv|.parquet                 a path and a label column; generator, source, split optional

columns are found by name (path/image_path/filename, label/target/is_fake, generator/model/
model_name/category, source/dataset/domain, split); name them with --path-col, --image-col,
--label-col, --generator-col, --source-col, --split-col. Labels: 0/1, real/fake and synonyms
(nature/ai, human/generated), booleans, integer classes with 0 = real; --real-values lists the
values that mean real, every other value is then fake.

examples:
  asap scan path/to/benchmark
  asap run path/to/benchmark --out runs/mine
  asap run path/to/benchmark --out runs/mine --model ViT-B-32 --pretrained openai
  asap run path/to/benchmark --out runs/mine --model ViT-B-32 --pretrained ./ViT-B-32.bin
  asap run path/to/benchmark --out runs/mine --scheduler tcp://host:8786
  asap run shards/ --out runs/cf --label-col label --real-values real,human

An interrupted run resumes when the same command is run again. Errors are one line; --debug
shows the full traceback (also written to OUT/asap.log).
"""


def _add_columns(p) -> None:
    c = p.add_argument_group("manifest and Parquet columns (detected by name when not given)")
    c.add_argument("--path-col", default=None, help="column of image file paths (manifests)")
    c.add_argument("--image-col", default=None,
                   help="column of image bytes or {bytes, path} structs (shards)")  # fmt: skip
    c.add_argument("--label-col", default=None, help="column of real/fake labels")
    c.add_argument("--generator-col", default=None, help="column naming the generator of fakes")
    c.add_argument("--source-col", default=None,
                   help="column naming where an image came from (data set, domain)")  # fmt: skip
    c.add_argument("--split-col", default=None, help="column of train/val/test")
    c.add_argument("--real-values", default=None, metavar="V1,V2",
                   help="label values that mean real (every other value is then fake)")  # fmt: skip
    c.add_argument("--max-pixels", type=int, default=RunConfig.__dataclass_fields__[
                   "max_pixels"].default, help="decompression-bomb guard: larger images are "
                   "rejected (default: %(default)s)")  # fmt: skip
    c.add_argument("--min-side", type=int, default=RunConfig.__dataclass_fields__[
                   "min_side"].default, help="images with a shorter side are rejected "
                   "(default: %(default)s)")  # fmt: skip


def columns_config(a: argparse.Namespace):
    from .config import ColumnsConfig

    real = tuple(v for v in (a.real_values or "").split(",") if v.strip())
    return ColumnsConfig(path_col=a.path_col, image_col=a.image_col, label_col=a.label_col,
                         generator_col=a.generator_col, source_col=a.source_col,
                         split_col=a.split_col, real_values=real)  # fmt: skip


def _add_run(sub) -> None:
    p = sub.add_parser(
        "run",
        help="ingest + train (or load) the encoder + relevance maps + layout",
        description="Turn a folder of real and AI-generated images into an explained run "
        "directory that the explorer opens.",
        epilog=RUN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("source", help="image folder, or a CSV/Parquet manifest")
    p.add_argument("--out", required=True, help="run directory to create or resume")
    m = p.add_argument_group("encoder")
    m.add_argument(
        "--model",
        default="asap-tiny-vit-64",
        help="open_clip ViT name (ViT-B-32, ViT-B-16, ...) or ASAP's asap-tiny-vit-64, "
        "asap-small-vit-96 (default: %(default)s)",
    )
    m.add_argument(
        "--pretrained",
        default=None,
        help="open_clip pretrained tag (e.g. openai; downloaded when online) or a local "
        "checkpoint file; the tower is then frozen. Default: train from scratch",
    )
    m.add_argument("--encoder", default=None, help="reuse a trained ASAP encoder.pt, skip training")
    m.add_argument("--text-projection", default=None, help="(256, E) .pt matrix to start from")
    m.add_argument("--tiles", type=int, default=EncoderConfig.tiles, metavar="K",
                   help="native-resolution analysis: resize each image to K x the model's input, "
                   "cut it into K x K tiles that the tower sees unresized, and pool their scores; "
                   "keeps traces of a pixel or two in large images (costs K^2 x the compute; "
                   "towers trained from scratch; default: %(default)s)")  # fmt: skip
    m.add_argument("--stem", default=None, choices=STEMS,
                   help="what the tower sees: bank (the residual, its patch energy and a learned "
                   "filter bank's), lines (bank plus pixel-sharp grey ridges), patch, forensic, "
                   "highpass or none (the pixels). Default: "
                   "bank for a tower trained from scratch, none for a pretrained one")  # fmt: skip
    t = p.add_argument_group("training")
    t.add_argument("--epochs", type=int, default=TrainConfig.epochs,
                   help="at most this many epochs (default: %(default)s)")  # fmt: skip
    t.add_argument("--patience", type=int, default=TrainConfig.patience,
                   help="stop after this many validation rounds without a better validation "
                   "loss; the best round's weights are kept (default: %(default)s)")  # fmt: skip
    t.add_argument("--chance-images", type=int, default=TrainConfig.chance_images, metavar="N",
                   help="stop when N training images have passed and no validation round has "
                   "told the val fakes from the reals (val AUC's 95%% interval above 0.5): the "
                   "detector has no signal; 0: off (default: %(default)s)")  # fmt: skip
    t.add_argument("--val-every", type=int, default=TrainConfig.val_every, metavar="N",
                   help="validate every N training images, or once per epoch when an epoch "
                   "holds fewer (default: %(default)s)")  # fmt: skip
    t.add_argument("--train-limit", type=int, default=None, metavar="N",
                   help="train on at most N images of the train split (labels keep their "
                   "shares; drawn from --seed), for very large sets")  # fmt: skip
    t.add_argument("--lr", type=float, default=TrainConfig.lr)
    t.add_argument("--patch-loss", type=float, default=TrainConfig.patch_loss, metavar="W",
                   help="weight of the patch-level (multiple-instance) loss that trains "
                   "every patch token on the label beside the CLS head; 0: off "
                   "(default: %(default)s)")  # fmt: skip
    t.add_argument("--selfblend", type=float, default=TrainConfig.selfblend, metavar="SHARE",
                   help="share of each batch's real images added again as self-blended fakes "
                   "(one random local trace, its patches supervised) when the tower trains from "
                   "scratch; 0: off (default: %(default)s)")  # fmt: skip
    t.add_argument("--calibration", choices=("platt", "temperature"), default="platt",
                   help="how p(fake) is calibrated on the val split: a temperature and a shift "
                   "of the logit (Platt scaling), or the temperature alone, which leaves the "
                   "operating point p = 0.5 where training put it (default: "
                   "%(default)s)")  # fmt: skip
    t.add_argument("--ema-images", type=int, default=TrainConfig.ema_images, metavar="N",
                   help="validate and keep an exponential moving average of the weights whose "
                   "half-life is N training images; 0: the raw weights (default: "
                   "%(default)s)")  # fmt: skip
    t.add_argument("--train-batch-size", type=int, default=TrainConfig.batch_size)
    r = p.add_argument_group("pipeline")
    r.add_argument("--partition-size", type=int, default=512, help="images per Dask task/file")
    r.add_argument("--batch-size", type=int, default=RunConfig.batch_size,
                   help="images per forward pass (default: 32 per torch thread on a CPU, at "
                   "most 128; 128 on a GPU)")  # fmt: skip
    r.add_argument(
        "--maps",
        default=None,
        metavar="METHOD",
        help=f"explanation method of the fake/real maps: {METHOD_HELP}. The 16 dimension maps "
        "always use chefer_last. See README, 'Explanation methods', for what each costs and how "
        "faithful each measured",
    )
    r.add_argument(
        "--compare-maps",
        default=",".join(RunConfig.__dataclass_fields__["compare_maps"].default),
        metavar="M1,M2",
        help="methods whose fake map is also stored, for the explorer and the faithfulness "
        "table (default: %(default)s, which cost nothing extra; '' for none)",
    )
    r.add_argument("--layout", choices=["umap", "pca"], default="umap")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--scheduler", default=None, help="address of an existing Dask scheduler")
    r.add_argument("--workers", type=int, default=None, help="LocalCluster workers")
    r.add_argument("--cpu-workers", type=int, default=None, metavar="N",
                   help="on a GPU machine, CPU-only workers beside the GPU workers for ingest, "
                   "layout and clustering (default: the cores left after 4 per GPU)")  # fmt: skip
    r.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    r.add_argument("--precision", default="auto", choices=("auto", "fp32", "tf32", "bf16"),
                   help="arithmetic of the encoder and its maps: auto = tf32 on a GPU, fp32 "
                   "on a CPU; bf16 = bfloat16 autocast (README, 'At scale')")  # fmt: skip
    r.add_argument("--decode", default="pil", choices=("pil", "nvjpeg"),
                   help="pil: every image decoded by PIL on the CPU; nvjpeg: on a GPU, plain "
                   "JPEGs decoded there by nvJPEG (the encode loop 11x as fast on an H200 with "
                   "ViT-B-32), the rest by PIL (default: %(default)s; README, "
                   "'At scale')")  # fmt: skip
    r.add_argument("--fresh", action="store_true", help="delete the run directory and start over")
    r.add_argument("--quiet", action="store_true", help="no progress output")
    g = p.add_argument_group("patterns")
    g.add_argument("--no-patterns", action="store_true", help="skip the pattern stage")
    g.add_argument("--patterns", type=int, default=PatternConfig.n_patterns,
                   help="number of patterns (0: the largest k, up to 12, whose every pattern "
                   "is stable)")  # fmt: skip
    g.add_argument("--patches-per-image", type=int, default=PatternConfig.patches_per_image)
    g.add_argument("--pattern-feature", choices=["token", "spectrum", "both"],
                   default=PatternConfig.feature,
                   help="patch descriptor for the patterns: the last block's token, the "
                   "residual's spectrum, or both (default)")  # fmt: skip
    g.add_argument("--impact-images", type=int, default=PatternConfig.impact_images)
    g.add_argument(
        "--stability-runs",
        type=int,
        default=PatternConfig.stability_runs,
        help="k-means fits on random subsets of the patches: the grouping most "
        "of them agree with is kept, each pattern's stability measured (>= 2)",
    )
    g.add_argument("--faithfulness-images", type=int, default=PatternConfig.faithfulness_images,
                   help="images (in all, spread over the partitions) with deletion/insertion "
                   "curves")  # fmt: skip
    _add_columns(p)


def _add_scan(sub) -> None:
    p = sub.add_parser(
        "scan",
        help="show what a run would ingest from SOURCE, without training",
        description="Recognise the layout of SOURCE and inspect every image as `asap run` would "
        "(decode, hash, size checks), without training: counts per split x label x generator/"
        "source, rejects by reason and duplicates.",
        epilog=RUN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("source", help="image folder, manifest or Parquet shard")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--workers", type=int, default=None, help="decoding processes (default: cores)")
    _add_columns(p)


def _add_info(sub) -> None:
    p = sub.add_parser(
        "info",
        help="validate a run directory and print its summary and metrics",
        description="Validate a run directory against the schema and print a JSON summary.",
    )
    p.add_argument("run", help="run directory")


def _add_serve(sub) -> None:
    p = sub.add_parser(
        "serve",
        help="serve the explorer for a run directory",
        description="Open the ASAP explorer (a Panel app) on a run directory.",
    )
    p.add_argument("run", help="run directory")
    p.add_argument("--port", type=int, default=5006)
    p.add_argument("--address", default=None,
                   help="address to listen on (default: 127.0.0.1, this machine only); for "
                   "remote access also pass --allow-websocket-origin HOST:PORT")  # fmt: skip
    p.add_argument("--show", action="store_true", help="open a browser tab")
    p.add_argument("--image-root", action="append", default=[],
                   help="another folder the app may read images from (repeatable)")  # fmt: skip
    p.add_argument("--allow-websocket-origin", action="append", default=[],
                   help="host[:port] a browser may connect from, for remote access")  # fmt: skip
    p.add_argument("--procs", type=int, default=1,
                   help="server processes sharing the port (the run is loaded once, before "
                   "they fork): new pages are built in parallel, one per process; 0: one per "
                   "core (default 1)")  # fmt: skip


def _add_patterns(sub) -> None:
    p = sub.add_parser(
        "patterns",
        help="compute (or recompute) the pattern stage of an existing run",
        description="Run the pattern stage on a finished run directory, with its own settings "
        "unless overridden: the top patches, patterns, impact and faithfulness tables.",
    )
    p.add_argument("run", help="run directory")
    p.add_argument(
        "--patterns", type=int, default=None, help="number of patterns (0: the finest stable k)"
    )
    p.add_argument("--pattern-feature", choices=["token", "spectrum", "both"], default=None)
    p.add_argument("--stability-runs", type=int, default=None,
                   help="k-means fits on random subsets of the patches (>= 2)")  # fmt: skip
    p.add_argument("--scheduler", default=None, help="address of an existing Dask scheduler")
    p.add_argument("--quiet", action="store_true")


def patterns_config(a: argparse.Namespace) -> RunConfig:
    """The run's own configuration (run.json), with the pattern stage on and any overrides."""
    from dataclasses import replace

    from .schema import read_run_json

    meta = read_run_json(a.run)
    cfg = RunConfig.from_dict({**meta["config"], "out": a.run, "scheduler": a.scheduler,
                               "progress": not a.quiet})  # fmt: skip
    over = {"enabled": True}
    if a.patterns is not None:
        over["n_patterns"] = a.patterns
    if a.pattern_feature is not None:
        over["feature"] = a.pattern_feature
    if a.stability_runs is not None:
        over["stability_runs"] = a.stability_runs
    return replace(cfg, patterns=replace(cfg.patterns, **over))


def build_config(a: argparse.Namespace) -> RunConfig:
    return RunConfig(
        # absolute, so that the run's image paths open from any working directory (the explorer)
        source=os.path.abspath(a.source),
        out=a.out,
        encoder=EncoderConfig(
            model_name=a.model,
            pretrained=a.pretrained,
            text_projection=a.text_projection,
            tiles=a.tiles,
            stem=a.stem,
        ),
        train=TrainConfig(
            epochs=a.epochs,
            patience=a.patience,
            chance_images=a.chance_images,
            val_every=a.val_every,
            lr=a.lr,
            patch_loss=a.patch_loss,
            selfblend=a.selfblend,
            ema_images=a.ema_images,
            calibrate_shift=a.calibration == "platt",
            batch_size=a.train_batch_size,
            train_limit=a.train_limit,
            seed=a.seed,
        ),  # fmt: skip
        patterns=PatternConfig(
            enabled=not a.no_patterns,
            n_patterns=a.patterns,
            patches_per_image=a.patches_per_image,
            feature=a.pattern_feature,
            impact_images=a.impact_images,
            stability_runs=a.stability_runs,
            faithfulness_images=a.faithfulness_images,
            seed=a.seed,
        ),
        columns=columns_config(a),
        encoder_checkpoint=a.encoder,
        partition_size=a.partition_size,
        batch_size=a.batch_size,
        maps=a.maps,
        compare_maps=tuple(m for m in a.compare_maps.split(",") if m.strip()),
        layout=a.layout,
        seed=a.seed,
        scheduler=a.scheduler,
        workers=a.workers,
        cpu_workers=a.cpu_workers,
        device=a.device,
        precision=a.precision,
        decode=a.decode,
        max_pixels=a.max_pixels,
        min_side=a.min_side,
        progress=not a.quiet,
    )


def _info(run_dir: str) -> dict:
    from .schema import open_run

    run = open_run(run_dir)
    return {
        "run": str(run.paths.root),
        "schema_version": run.meta["schema_version"],
        "model": run.meta.get("model"),
        "images": len(run.images),
        "features": len(run.features),
        "rejects": len(run.rejects),
        "map_shape": list(run.relevance.map_shape),
        "maps": {
            "fake_real": run.relevance.methods[0],
            "dimensions": "chefer_last",
            "compare": run.relevance.methods[1:],
        },  # fmt: skip
        "layouts": run.meta.get("stages", {}).get("ingest", {}).get("layouts"),
        "timings": run.meta.get("timings"),
        "peak_rss_mb": run.meta.get("resources"),  # per stage: driver and largest worker
        "encoded_on": {
            k: run.meta.get("stages", {}).get("encode", {}).get(k) for k in ("device", "precision")
        },  # fmt: skip
        "held_out": run.metrics.get("held_out", "test"),
        "metrics_test": run.metrics.get("test", {}).get("overall"),
        "detector": run.detector,  # does it beat chance? (pipeline.trust)
        "training": _training_info(run.meta.get("stages", {}).get("train")),
        **_pattern_info(run),
    }


def _training_info(stage: dict | None) -> dict | None:
    """How the run's training ended: rounds run, the kept round, why it stopped ("patience",
    "no_signal": no validation round separated the labels, None: every epoch ran)."""
    if not stage:
        return None
    if not stage.get("trained", True):
        return {"trained": False}
    hist = stage.get("history") or []
    return {
        "trained": True,
        "rounds": len(hist),
        "best_round": stage.get("best_round"),
        "epochs_run": stage.get("epochs_run"),
        "stop_reason": stage.get("stop_reason"),
        "val_signal": stage.get("val_signal"),
        "best_val_auc": max((h["val_auc"] for h in hist if h.get("val_auc") is not None),
                            default=None),
    }  # fmt: skip


def _pattern_info(run) -> dict:
    """Patterns ranked by impact, and the maps' faithfulness, when the pattern stage has run."""
    from .metrics import faithfulness_summary
    from .schema import FAITHFULNESS_COLUMNS, PATTERN_COLUMNS, read_table

    if not (run.paths.patterns.exists() and run.paths.faithfulness.exists()):
        return {"patterns": None}
    pats = read_table(run.paths.patterns, PATTERN_COLUMNS).sort_values("impact", ascending=False)
    faith = read_table(run.paths.faithfulness, FAITHFULNESS_COLUMNS)
    cols = ["pattern", "n_images", "fake_share", "impact", "impact_lo", "impact_hi",
            "random_impact", "local_impact", "local_lo", "local_random_impact", "significant",
            "stability"]  # fmt: skip

    def rounded(v):
        if isinstance(v, dict):
            return {k: rounded(x) for k, x in v.items()}
        if isinstance(v, float):  # NaN (e.g. no stability in a run made before it) -> null
            return round(float(v), 4) if np.isfinite(v) else None
        return v

    records = [
        {k: rounded(v) if not isinstance(v, (bool, np.bool_)) else bool(v) for k, v in r.items()}
        for r in pats[cols].to_dict("records")
    ]
    summary = faithfulness_summary(faith, run.relevance.methods[0])
    return {"patterns": records, "faithfulness": rounded(summary)}


SCHEDULER_RE = re.compile(r"^((tcp|tls|inproc|ucx|ws|wss)://)?[\w.\-\[\]:]+:\d+/?$")
DEVICE_RE = re.compile(r"^(cpu|cuda(:\d+)?|mps)$")


def preflight_run(cfg: RunConfig) -> None:
    """Everything about a run that can be checked before Dask starts or any image is read."""
    from pathlib import Path

    src = Path(cfg.source)
    if not src.exists():
        raise FileNotFoundError(
            f"image source {cfg.source} does not exist: pass a folder, a manifest or a Parquet "
            "shard"
        )
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {cfg.out} is a file; name a folder for the run directory")
    parent = next((p for p in [out, *out.absolute().parents] if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise ValueError(f"--out {cfg.out}: {parent} is a file, not a folder")
    if parent is not None and not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f"--out {cfg.out}: cannot write in {parent}")
    for flag, path in (("--encoder", cfg.encoder_checkpoint),
                       ("--text-projection", cfg.encoder.text_projection)):  # fmt: skip
        if path and not os.path.isfile(path):
            raise FileNotFoundError(f"{flag} {path} does not exist (or is not a file)")
    if cfg.scheduler and not SCHEDULER_RE.match(cfg.scheduler):
        raise ValueError(
            f"--scheduler {cfg.scheduler!r} is not a scheduler address; write tcp://HOST:PORT "
            "(the address `dask scheduler` prints)"
        )
    if cfg.device is not None:
        if not DEVICE_RE.match(cfg.device):
            raise ValueError(f"--device {cfg.device!r}: use cpu, cuda or cuda:N")
        if cfg.device.startswith("cuda") and not cfg.scheduler:
            import torch

            if not torch.cuda.is_available():
                raise ValueError(f"--device {cfg.device}: this machine has no CUDA GPU; use cpu")
    if not cfg.encoder_checkpoint:
        from .encoder import preflight

        preflight(cfg.encoder)


# Errors that mean "the input or the settings are wrong": one line, nothing else to see. Anything
# else is a failure of ASAP or of the machine (a bug, CUDA out of memory): its traceback goes to
# the run's asap.log (and to the terminal with --debug).
def _user_errors() -> tuple:
    from .encoder import PretrainedUnavailable
    from .schema import RunDirectoryError

    return (FileNotFoundError, NotADirectoryError, IsADirectoryError, FileExistsError,
            PermissionError, ValueError, ConnectionError, RunDirectoryError,
            PretrainedUnavailable)  # fmt: skip


def _log_file(a: argparse.Namespace):
    """The run directory's asap.log, for commands that have one and a directory that exists."""
    from pathlib import Path

    folder = getattr(a, "out", None) or (
        getattr(a, "run", None) if a.command == "patterns" else None
    )
    if folder and Path(folder).is_dir():
        return Path(folder) / "asap.log"
    return None


def main(argv: list[str] | None = None) -> int:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true",
                        help="show full tracebacks instead of one-line errors")  # fmt: skip
    parser = argparse.ArgumentParser(
        prog="asap",
        description="ASAP: find and explain the patterns that give AI-generated images away.",
        parents=[common],
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _add_run(sub)
    _add_scan(sub)
    _add_info(sub)
    _add_serve(sub)
    _add_patterns(sub)
    for p in sub.choices.values():
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show full tracebacks instead of one-line errors")  # fmt: skip
    a = parser.parse_args(argv)
    debug = getattr(a, "debug", False)
    log = logging.getLogger("pipeline")
    stream_handler = None
    if not getattr(a, "quiet", True):  # progress such as epoch losses, on stderr
        stream_handler = logging.StreamHandler()
        stream_handler.setFormatter(logging.Formatter("[asap] %(message)s"))
        log.addHandler(stream_handler)
        log.setLevel(logging.INFO)
    file_handler = None

    def attach_log() -> None:
        nonlocal file_handler
        path = _log_file(a)
        if path is not None and file_handler is None:
            file_handler = logging.FileHandler(path)
            file_handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s"))
            log.addHandler(file_handler)
            log.setLevel(logging.INFO)

    created = None
    try:
        if a.command == "run":
            from pathlib import Path

            from .runner import run_pipeline

            cfg = build_config(a)
            preflight_run(cfg)
            created = None if Path(cfg.out).exists() else Path(cfg.out)
            Path(cfg.out).mkdir(parents=True, exist_ok=True)
            attach_log()
            paths = run_pipeline(cfg, fresh=a.fresh)
            print(paths.root)
        elif a.command == "scan":
            from .scan import format_report, scan

            report = scan(a.source, columns_config(a), a.max_pixels, a.min_side, a.workers)
            print(json.dumps(report, indent=2, default=str) if a.json else format_report(report))
            return 0 if report["images"] else 1
        elif a.command == "info":
            print(json.dumps(_info(a.run), indent=2, default=str))
        elif a.command == "patterns":
            from .runner import run_pipeline

            attach_log()
            print(run_pipeline(patterns_config(a)).root)
        elif a.command == "serve":
            from explorer.server import serve

            serve(a.run, a.port, a.address, a.show, tuple(a.image_root),
                  tuple(a.allow_websocket_origin), a.procs)  # fmt: skip
    except KeyboardInterrupt:
        print("asap: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except Exception as e:
        if type(e).__name__ == "KilledWorker":  # distributed gave up on a task after its retries
            e = RuntimeError(
                f"a Dask worker died each time it ran {e} (out of memory?): rerun with a smaller "
                "--batch-size or --partition-size; the same command resumes what is done"
            )
        user = isinstance(e, _user_errors()) and not _is_torch_error(e)
        if file_handler is not None:  # the traceback to the run's log only, not the console's
            file_handler.handle(log.makeRecord(
                log.name, logging.ERROR, __file__, 0, "%s: %s",
                ("error" if user else "internal error", e), sys.exc_info()))  # fmt: skip
        if created is not None and user:
            _remove_if_empty(created)
        if debug:
            raise
        if user:
            print(f"asap: error: {e}", file=sys.stderr)
            return 2
        where = f" (traceback in {_log_file(a)})" if file_handler is not None else ""
        print(f"asap: internal error: {type(e).__name__}: {e}{where}; rerun with --debug for the "
              "traceback, and report it if it is a bug", file=sys.stderr)  # fmt: skip
        return 3
    finally:  # main() may run again in this process (tests, notebooks): leave no handlers
        if file_handler is not None:
            log.removeHandler(file_handler)
            file_handler.close()
        if stream_handler is not None:
            log.removeHandler(stream_handler)
    return 0


def _is_torch_error(e: BaseException) -> bool:
    """torch raises ValueError/RuntimeError subclasses for its own failures (out of memory)."""
    return type(e).__module__.startswith("torch")


def _remove_if_empty(folder) -> None:
    """Remove a run directory this command created when the run produced nothing in it (so that
    the corrected command starts cleanly); keep anything with results."""
    import shutil

    from .schema import RunPaths

    if folder.is_dir() and not RunPaths(folder).images.exists():
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
