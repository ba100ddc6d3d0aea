"""Pipeline benchmark, measured side by side in one run on the same images and machine.

    relevance_overhead R = time(embed + fake/real maps + 16 dimension maps) / time(embed only)
    pipeline_efficiency E = Dask pipeline throughput / bare in-process loop throughput

Both loops run the same code (pipeline.worker.encode_rows: decode with one prefetch thread, forward,
maps); the Dask side runs ASAP's real encode stage (a LocalCluster, one task and one written file
per partition). Workers are warmed up (model loaded once per worker, as in a long run) before
timing. The last line printed is ``relevance_overhead=R pipeline_efficiency=E``, the worst case over
the models measured.

    python benchmarks/pipeline.py --quick          # < 1 minute on a 2-core CPU
    python benchmarks/pipeline.py --device cuda --models ViT-B-32 --n-large 4096
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

try:  # must come before the package imports: see benchmarks/_isolate.py
    import _isolate  # noqa: F401
except ModuleNotFoundError:  # a Dask worker re-importing this script: the path is already clean
    pass
import numpy as np
import pandas as pd
import torch
from PIL import Image

from pipeline.config import EncoderConfig, RunConfig
from pipeline.encoder import create_encoder, file_sha256, save_encoder
from pipeline.explain import DEFAULT_METHOD, explain
from pipeline.runner import dask_client, stage_encode
from pipeline.schema import RunPaths
from pipeline.synthetic import texture
from pipeline.worker import cached_model, encode_rows, pick_device


def make_images(folder: Path, n: int, size: int) -> list[bytes]:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"img_{i:06d}.png"
        Image.fromarray(texture(rng, size)).save(p)
        paths.append(str(p).encode())
    return paths


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def relevance_overhead(model, batch: int, device: str, repeats: int, maps: str) -> tuple:
    x = torch.randn(batch, 3, model.image_size, model.image_size, device=device)
    t_embed = timed(lambda: torch.no_grad()(model)(x), repeats)
    t_maps = timed(lambda: explain(model, x, maps, RunConfig.compare_maps), repeats)
    # the two rules of the default each with its own forward pass (before issue 10's sharing)
    t_apart = timed(lambda: explain(model, x, maps, RunConfig.compare_maps, fuse=False), repeats)
    return t_maps / t_embed, batch / t_embed, batch / t_maps, t_apart / t_maps


def pipeline_efficiency(
    model, enc_path: Path, paths, work: Path, args, device: str, partition_size: int
) -> tuple:
    """Bare loop and Dask encode stage, interleaved ``repeats`` times; medians of throughput."""
    images = pd.DataFrame({"id": np.arange(len(paths), dtype=np.int64), "path_bytes": paths})
    cfg = RunConfig(
        source=str(work),
        out=str(work / "run"),
        partition_size=partition_size,
        batch_size=args.batch_size,
        maps=args.maps,
        workers=args.workers,
        device=device if device != "cpu" else None,
        progress=False,
    )
    sha = file_sha256(enc_path)
    bare, dask = [], []
    with dask_client(cfg) as client:
        # load the model and run one batch in every worker before timing, as in a long run
        def warm_up():
            m = cached_model(str(enc_path), sha, pick_device(cfg.device))
            encode_rows(m, paths[: args.batch_size], batch_size=args.batch_size, maps=args.maps,
                        device=pick_device(cfg.device), compare=cfg.compare_maps)  # fmt: skip

        client.run(warm_up)
        for rep in range(args.repeats):
            t0 = time.perf_counter()
            encode_rows(model, paths, batch_size=args.batch_size, maps=args.maps, device=device,
                        compare=cfg.compare_maps)  # fmt: skip
            bare.append(len(paths) / (time.perf_counter() - t0))
            run = RunPaths(work / f"run{rep}").create()
            shutil.copy(enc_path, run.encoder)
            t0 = time.perf_counter()
            stage_encode(cfg, run, images, sha, client)
            dask.append(len(paths) / (time.perf_counter() - t0))
    bare_ips, dask_ips = statistics.median(bare), statistics.median(dask)
    return dask_ips / bare_ips, bare_ips, dask_ips


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes: under a minute on 2 cores")
    ap.add_argument("--models", default="asap-tiny-vit-64,ViT-B-32")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--n-tiny", type=int, default=None, help="images for small models")
    ap.add_argument("--n-large", type=int, default=None, help="images for ViT-B and larger")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--partition-size", type=int, default=None)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--maps", default=DEFAULT_METHOD, help="explanation method (pipeline.explain)")
    ap.add_argument("--repeats", type=int, default=None, help="interleaved repeats (median)")
    args = ap.parse_args()
    args.repeats = args.repeats or (3 if args.quick else 5)
    torch.manual_seed(0)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            model = create_encoder(EncoderConfig(model_name=name)).eval().requires_grad_(False)
            model.to(args.device)
            big = model.image_size >= 160
            n = (args.n_large if big else args.n_tiny) or (
                (32 if args.quick else 256) if big else (512 if args.quick else 4096)
            )
            partition_size = args.partition_size or max(args.batch_size, n // 4)
            work = Path(tmp) / name
            enc_path = work / "encoder.pt"
            paths = make_images(work / "images", n, model.image_size)
            save_encoder(model.cpu(), enc_path)
            model.to(args.device)
            r, fwd_ips, maps_ips, shared = relevance_overhead(
                model, min(args.batch_size, 16) if big else 64, args.device,
                2 if args.quick else 5, args.maps,
            )  # fmt: skip
            e, bare_ips, dask_ips = pipeline_efficiency(
                model, enc_path, paths, work, args, args.device, partition_size
            )
            results.append((r, e))
            print(
                f"{name} device={args.device} images={n} threads={torch.get_num_threads()} "
                f"maps={args.maps}: forward {fwd_ips:.1f} img/s, forward+18 maps "
                f"{maps_ips:.1f} img/s (R={r:.3f}; one shared forward pass for both rules: "
                f"{shared:.2f}x as fast as one each); bare loop {bare_ips:.1f} img/s, Dask "
                f"pipeline {dask_ips:.1f} img/s (E={e:.3f})",
                flush=True,
            )
    r = max(r for r, _ in results)
    e = min(e for _, e in results)
    print(f"relevance_overhead={r:.3f} pipeline_efficiency={e:.3f}")


if __name__ == "__main__":
    main()
