"""Generated image sets with planted artifacts at known places, for tests and benchmarks: real
images are smooth random textures; fakes are the same kind of texture carrying a small artifact
whose position is recorded, so that relevance maps can be checked (pointing game)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

ARTIFACTS = ("checker", "stripes", "dots")


def texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth random colour texture (size, size, 3) uint8."""
    coarse = rng.uniform(40, 215, size=(4, 4, 3)).astype(np.uint8)
    im = Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC)
    arr = np.asarray(im, dtype=np.float32) + rng.normal(0, 6, size=(size, size, 3))
    return np.clip(arr, 0, 255).astype(np.uint8)


def plant(arr: np.ndarray, kind: str, top: int, left: int, side: int) -> np.ndarray:
    """Overlay a high-frequency artifact of ``kind`` on arr[top:top+side, left:left+side]."""
    yy, xx = np.mgrid[0:side, 0:side]
    if kind == "checker":
        mask = (yy // 2 + xx // 2) % 2 == 0
    elif kind == "stripes":
        mask = yy % 2 == 0
    elif kind == "dots":
        mask = (yy % 3 == 0) & (xx % 3 == 0)
    else:
        raise ValueError(f"artifact must be one of {ARTIFACTS}, got {kind!r}")
    out = arr.copy()
    region = out[top : top + side, left : left + side].astype(np.int16)
    region[mask] += 70
    region[~mask] -= 70
    out[top : top + side, left : left + side] = np.clip(region, 0, 255).astype(np.uint8)
    return out


def make_planted_dataset(
    root: str | os.PathLike,
    n_real: int,
    n_fake: int,
    *,
    size: int = 64,
    artifact: str = "checker",
    side: int = 12,
    generator: str = "gen_a",
    seed: int = 0,
) -> pd.DataFrame:
    """Write ``root/<generator>/{0_real,1_fake}/*.png``; returns path, label, artifact box."""
    rng = np.random.default_rng(seed)
    rows = []
    for label, n in ((0, n_real), (1, n_fake)):
        folder = Path(root) / generator / ("1_fake" if label else "0_real")
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            arr = texture(rng, size)
            top = left = -1
            if label:
                top, left = (int(v) for v in rng.integers(0, size - side + 1, size=2))
                arr = plant(arr, artifact, top, left, side)
            path = folder / f"{generator}_{label}_{i:05d}.png"
            Image.fromarray(arr).save(path)
            rows.append(dict(path=str(path), label=label, top=top, left=left, side=side))
    return pd.DataFrame(rows)
