"""The masking reference's blur, side by side in one process: torchvision's ``gaussian_blur`` (a
depthwise 2-D convolution) against ``pipeline.perturb.gaussian_blur`` (two matrix products), on
the blur alone and on the pattern stage's per-partition work (``patch_partition``: decode, top
patches, their spectrum against the masking reference, the faithfulness sample's curves).

Builds a small run first (``asap run`` on generated 256 px JPEGs with the committed demo encoder,
without the pattern stage) unless ``--run DIR`` names a finished one. The two blurs alternate, so a
change in the machine's speed during the run hits both alike. Last line:

    blur_speedup=A partition_speedup=B

where each is torchvision's median seconds / the matrix products' median seconds.

    python benchmarks/blur.py                      # about 2 minutes on a 2-core CPU
    python benchmarks/blur.py --run /tmp/asap-scale-100000-run --parts 4 --repeats 3
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

try:  # must come before the package imports: see benchmarks/_isolate.py
    import _isolate  # noqa: F401
except ModuleNotFoundError:
    pass
import torch
import torchvision.transforms.functional as TF

from pipeline import perturb
from pipeline.config import PatternConfig
from pipeline.encoder import file_sha256
from pipeline.patterns import patch_partition
from pipeline.schema import (
    IMAGE_COLUMNS,
    PART_FEATURE_COLUMNS,
    RunPaths,
    read_run_json,
    read_table,
)

REPO = Path(__file__).resolve().parents[1]
MATRIX = perturb.gaussian_blur


def torchvision_blur(x: torch.Tensor, size: int, sigma: float) -> torch.Tensor:
    return TF.gaussian_blur(x, [size, size], [sigma, sigma])


IMPLS = {"torchvision": torchvision_blur, "matrix": MATRIX}


def build_run(tmp: Path, n: int) -> Path:
    sys.path.insert(0, str(Path(__file__).parent))
    from scale import make_images

    make_images(tmp / "images", n)
    out = tmp / "run"
    cmd = [sys.executable, "-m", "pipeline.cli", "run", str(tmp / "images"), "--out", str(out),
           "--encoder", str(REPO / "data" / "demo-encoder.pt"), "--no-patterns", "--layout", "pca",
           "--quiet"]  # fmt: skip
    subprocess.run(cmd, cwd=REPO, check=True)
    return out


def time_partition(run: RunPaths, part: int, paths_of, sha: str, methods: list[str],
                   n_parts: int, batch: int) -> float:  # fmt: skip
    ids = read_table(run.part_features(part), PART_FEATURE_COLUMNS)["id"]
    target = run.part_patches(part)
    backup = target.with_name(target.name + ".bench")
    if target.exists():
        shutil.move(target, backup)
    try:
        t0 = time.perf_counter()
        patch_partition(part, paths_of.loc[ids].tolist(), str(run.root), str(run.encoder), sha,
                        PatternConfig(), "cpu", batch, methods, n_parts)  # fmt: skip
        return time.perf_counter() - t0
    finally:
        target.unlink(missing_ok=True)
        if backup.exists():
            shutil.move(backup, target)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", default=None, help="a finished run directory (default: build one)")
    ap.add_argument("--n", type=int, default=2048, help="images of the run built when no --run")
    ap.add_argument("--parts", type=int, default=3, help="partitions timed per repeat")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

    x = torch.randn(128, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    blur_s = {k: [] for k in IMPLS}
    for _ in range(5):
        for name, fn in IMPLS.items():
            fn(x, 25, 4.0)
            t0 = time.perf_counter()
            for _ in range(5):
                fn(x, 25, 4.0)
                fn(x, 5, 1.0)
            blur_s[name].append((time.perf_counter() - t0) / 5)
    diff = (MATRIX(x, 25, 4.0) - torchvision_blur(x, 25, 4.0)).abs().max().item()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.run) if args.run else build_run(Path(tmp), args.n)
        run = RunPaths(root)
        meta = read_run_json(root)
        cfg = meta["config"]
        methods = [cfg["maps"], *cfg.get("compare_maps", [])]
        n_parts = sum(1 for _ in run.root.glob("parts/features-*.parquet"))
        paths_of = read_table(run.images, IMAGE_COLUMNS).set_index("id")["path_bytes"]
        sha = file_sha256(run.encoder)
        parts = list(range(min(args.parts, n_parts)))
        time_partition(run, parts[0], paths_of, sha, methods, n_parts, 128)  # warm-up
        part_s = {k: [] for k in IMPLS}
        try:
            for _ in range(args.repeats):
                for name, fn in IMPLS.items():
                    perturb.gaussian_blur = fn
                    for p in parts:
                        part_s[name].append(
                            time_partition(run, p, paths_of, sha, methods, n_parts, 128)
                        )
        finally:
            perturb.gaussian_blur = MATRIX

    print(f"torch threads {torch.get_num_threads()}; run {root} ({n_parts} partitions)")
    head = ("blur 128x3x64x64 (25 + 5 px), ms", "partition of the pattern stage, s")
    print(f"{'':<12} {head[0]:>34} {head[1]:>36}")
    for name in IMPLS:
        print(f"{name:<12} {statistics.median(blur_s[name]) * 1000:>34.1f} "
              f"{statistics.median(part_s[name]):>36.3f}")  # fmt: skip
    print(f"largest difference between the two blurs: {diff:.1e}")
    b = statistics.median(blur_s["torchvision"]) / statistics.median(blur_s["matrix"])
    p = statistics.median(part_s["torchvision"]) / statistics.median(part_s["matrix"])
    print(f"blur_speedup={b:.2f} partition_speedup={p:.2f}")


if __name__ == "__main__":
    main()
