"""The ``asap`` command line: the one place where configuration is built from arguments."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

import numpy as np

from .config import EncoderConfig, PatternConfig, RunConfig, TrainConfig

# The registry's names (pipeline.explain.METHODS; a test keeps them equal), spelled here so that
# `asap --help` and `asap serve` do not import torch.
METHOD_HELP = (
    "chefer_all (default), legrad, attngrad, gradinput, rollout, attention, chefer_last, "
    "occlusion (65 forward passes: for small sets)"
)

RUN_EPILOG = """\
image layouts read (folder names case-insensitive):
  <gen>/[<class>/]0_real|1_fake/     CNNDetection, UnivFD
  <gen>/[train|val]/nature|ai/       GenImage
  .../real|fake/...                  plain real/fake folders
  real/ beside <generator>/ folders  one folder per generator
  manifest.csv|.parquet              columns path,label[,generator,split]

examples:
  asap run path/to/benchmark --out runs/mine
  asap run path/to/benchmark --out runs/mine --model ViT-B-32 --pretrained openai
  asap run path/to/benchmark --out runs/mine --model ViT-B-32 --pretrained ./ViT-B-32.bin
  asap run path/to/benchmark --out runs/mine --scheduler tcp://host:8786

An interrupted run resumes when the same command is run again.
"""


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
    t = p.add_argument_group("training")
    t.add_argument("--epochs", type=int, default=TrainConfig.epochs,
                   help="at most this many epochs (default: %(default)s)")  # fmt: skip
    t.add_argument("--patience", type=int, default=TrainConfig.patience,
                   help="stop after this many epochs without a better validation loss; the best "
                   "epoch is kept (default: %(default)s)")  # fmt: skip
    t.add_argument("--lr", type=float, default=TrainConfig.lr)
    t.add_argument("--train-batch-size", type=int, default=TrainConfig.batch_size)
    r = p.add_argument_group("pipeline")
    r.add_argument("--partition-size", type=int, default=512, help="images per Dask task/file")
    r.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
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
    r.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    r.add_argument("--fresh", action="store_true", help="delete the run directory and start over")
    r.add_argument("--quiet", action="store_true", help="no progress output")
    g = p.add_argument_group("patterns")
    g.add_argument("--no-patterns", action="store_true", help="skip the pattern stage")
    g.add_argument("--patterns", type=int, default=PatternConfig.n_patterns,
                   help="number of patterns (0: chosen by silhouette, 2..12)")  # fmt: skip
    g.add_argument("--patches-per-image", type=int, default=PatternConfig.patches_per_image)
    g.add_argument("--pattern-feature", choices=["token", "spectrum", "both"], default="spectrum")
    g.add_argument("--impact-images", type=int, default=PatternConfig.impact_images)
    g.add_argument("--faithfulness-images", type=int, default=PatternConfig.faithfulness_images,
                   help="images per partition with deletion/insertion curves")  # fmt: skip


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
    p.add_argument("--address", default=None, help="address to listen on (default: localhost)")
    p.add_argument("--show", action="store_true", help="open a browser tab")
    p.add_argument("--image-root", action="append", default=[],
                   help="another folder the app may read images from (repeatable)")  # fmt: skip
    p.add_argument("--allow-websocket-origin", action="append", default=[],
                   help="host[:port] a browser may connect from, for remote access")  # fmt: skip


def _add_patterns(sub) -> None:
    p = sub.add_parser(
        "patterns",
        help="compute (or recompute) the pattern stage of an existing run",
        description="Run the pattern stage on a finished run directory, with its own settings "
        "unless overridden: the top patches, patterns, impact and faithfulness tables.",
    )
    p.add_argument("run", help="run directory")
    p.add_argument("--patterns", type=int, default=None, help="number of patterns (0: silhouette)")
    p.add_argument("--pattern-feature", choices=["token", "spectrum", "both"], default=None)
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
    return replace(cfg, patterns=replace(cfg.patterns, **over))


def build_config(a: argparse.Namespace) -> RunConfig:
    return RunConfig(
        # absolute, so that the run's image paths open from any working directory (the explorer)
        source=os.path.abspath(a.source),
        out=a.out,
        encoder=EncoderConfig(
            model_name=a.model, pretrained=a.pretrained, text_projection=a.text_projection
        ),
        train=TrainConfig(
            epochs=a.epochs,
            patience=a.patience,
            lr=a.lr,
            batch_size=a.train_batch_size,
            seed=a.seed,
        ),  # fmt: skip
        patterns=PatternConfig(
            enabled=not a.no_patterns,
            n_patterns=a.patterns,
            patches_per_image=a.patches_per_image,
            feature=a.pattern_feature,
            impact_images=a.impact_images,
            faithfulness_images=a.faithfulness_images,
            seed=a.seed,
        ),
        encoder_checkpoint=a.encoder,
        partition_size=a.partition_size,
        batch_size=a.batch_size,
        maps=a.maps,
        compare_maps=tuple(m for m in a.compare_maps.split(",") if m.strip()),
        layout=a.layout,
        seed=a.seed,
        scheduler=a.scheduler,
        workers=a.workers,
        device=a.device,
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
        "timings": run.meta.get("timings"),
        "metrics_test": run.metrics.get("test", {}).get("overall"),
        **_pattern_info(run),
    }


def _pattern_info(run) -> dict:
    """Patterns ranked by impact, and the maps' faithfulness, when the pattern stage has run."""
    from .metrics import faithfulness_summary
    from .schema import FAITHFULNESS_COLUMNS, PATTERN_COLUMNS, read_table

    if not (run.paths.patterns.exists() and run.paths.faithfulness.exists()):
        return {"patterns": None}
    pats = read_table(run.paths.patterns, PATTERN_COLUMNS).sort_values("impact", ascending=False)
    faith = read_table(run.paths.faithfulness, FAITHFULNESS_COLUMNS)
    cols = ["pattern", "n_images", "fake_share", "impact", "impact_lo", "impact_hi",
            "random_impact", "significant"]  # fmt: skip

    def rounded(v):
        if isinstance(v, dict):
            return {k: rounded(x) for k, x in v.items()}
        return round(float(v), 4) if isinstance(v, float) else v

    records = [
        {k: rounded(v) if not isinstance(v, (bool, np.bool_)) else bool(v) for k, v in r.items()}
        for r in pats[cols].to_dict("records")
    ]
    summary = faithfulness_summary(faith, run.relevance.methods[0])
    return {"patterns": records, "faithfulness": rounded(summary)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="asap",
        description="ASAP: find and explain the patterns that give AI-generated images away.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _add_run(sub)
    _add_info(sub)
    _add_serve(sub)
    _add_patterns(sub)
    a = parser.parse_args(argv)
    if not getattr(a, "quiet", True):  # progress such as epoch losses, on stderr
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("[asap] %(message)s"))
        log = logging.getLogger("pipeline")
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    try:
        if a.command == "run":
            from .runner import run_pipeline

            paths = run_pipeline(build_config(a), fresh=a.fresh)
            print(paths.root)
        elif a.command == "info":
            print(json.dumps(_info(a.run), indent=2, default=str))
        elif a.command == "patterns":
            from .runner import run_pipeline

            print(run_pipeline(patterns_config(a)).root)
        elif a.command == "serve":
            from explorer.server import serve

            serve(a.run, a.port, a.address, a.show, tuple(a.image_root),
                  tuple(a.allow_websocket_origin))  # fmt: skip
    except (FileNotFoundError, ValueError, ConnectionError, RuntimeError) as e:
        print(f"asap: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
