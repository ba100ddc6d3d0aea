"""Build a generated data set with planted artifacts (two generator families) in the 0_real/1_fake
layout that `asap run` reads. Interim demo data until the photo/DCGAN demo set (issue 3) lands.

    python data/build_planted.py --n 1000 --out data/planted --seed 0
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from pipeline.synthetic import make_planted_dataset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1000, help="images in total (half real)")
    ap.add_argument("--out", default="data/planted")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    out = Path(a.out)
    marker = out / f".built-n{a.n}-seed{a.seed}"
    if marker.exists():
        print(f"{out} already built")
        return
    shutil.rmtree(out, ignore_errors=True)
    q = a.n // 4
    make_planted_dataset(out, q, q, artifact="checker", generator="checkergan", seed=a.seed)
    make_planted_dataset(out, q, q, artifact="stripes", generator="stripediff", seed=a.seed + 1)
    marker.touch()
    print(f"wrote {4 * q} images to {out}")


if __name__ == "__main__":
    main()
