"""How visible each planted family is to fixed statistics, with no training.

A detector that misses a family may be too weak, or the family may carry too little signal in
these images. For each family and base (smooth texture, photograph crop), real images and fakes
are drawn exactly as the planted suite draws them (pipeline.synthetic), and each statistic below
scores every image by its largest value anywhere; the table gives each statistic's ROC-AUC of
fakes against reals (standard error about 0.03 at --n 300). No statistic is fitted to the data;
some know the family's shape, which the trained detector does not. What it showed (README): on
the textures each family but the colour disc is seen by some statistic (AUC 0.93-1.00; the disc
0.47-0.54, even by the two built for it), so the disc is below the textures' own colour
variation; on the photographs no statistic sees any family (0.46-0.62), while the trained
detector reaches 0.95 on four of the suite's five, so there these statistics bound nothing:

- ``energy``: the grey residual's patch energy over its 5 x 5 neighbours' median (what the
  `patch` and `bank` stems give the tower, ``pipeline.encoder.patch_energy``);
- ``seam20``: a matched filter of a 1 px line 20 px long, horizontal or vertical (the suite's seam
  exactly), its response over the same filter's response energy within 15 px (a CFAR detector);
- ``ridges``: the ``lines`` stem's grey ridges (``pipeline.encoder.grey_ridges``: per 8 px
  patch, the strongest 1 px ridge all three channels share, along rows or columns, bright or
  dark, averaged over 8 px of its direction and divided by its RMS within 15 px);
- ``chroma``: each 8 px patch's mean opponent colour (R-G, B-G) minus its 5 x 5 neighbours'
  median, red up and blue down (the unseen colour disc's shift exactly);
- ``chroma_dog``: red minus blue, band-passed around the colour disc's radius (a difference of
  Gaussians, sigma 3 and 7 px).

The last line is ``photo_best_auc=family:A,...``: per family, the best statistic's AUC on the
photographs.

    python benchmarks/visibility.py                          # suite and unseen families, ~1 min
    python benchmarks/visibility.py --families line,hue --n 600
"""

from __future__ import annotations

import argparse

try:  # must come before the package imports: see benchmarks/_isolate.py
    import _isolate  # noqa: F401
except ModuleNotFoundError:
    pass
import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF

from pipeline.encoder import grey_ridges, patch_energy
from pipeline.synthetic import PLANTERS, SUITE_FAMILIES, UNSEEN_FAMILIES, PhotoCrops, texture

PATCH = 8


def _images(rng, base: str, family: str | None, n: int, size: int, photo) -> torch.Tensor:
    """(n, 3, size, size) float images in grey levels, as make_suite writes them."""
    out = []
    for _ in range(n):
        arr = (texture(rng, size) if base == "texture" else photo(rng, size)).astype(np.float32)
        if family:
            PLANTERS[family](rng, arr)
        out.append(np.clip(np.rint(arr), 0, 255))
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous()


def _residual(grey: torch.Tensor) -> torch.Tensor:
    return grey - TF.gaussian_blur(grey, [5, 5], [1.0, 1.0])


def _neighbour_median(v: torch.Tensor, k: int = 5) -> torch.Tensor:
    b, c, gh, gw = v.shape
    pad = k // 2
    padded = F.pad(v.reshape(b * c, 1, gh, gw), (pad,) * 4, mode="reflect")
    return F.unfold(padded, k).median(dim=1).values.reshape(b, c, gh, gw)


def energy(x: torch.Tensor) -> torch.Tensor:
    return patch_energy(_residual(x.mean(1, keepdim=True)), PATCH).flatten(1).amax(1)


def seam20(x: torch.Tensor) -> torch.Tensor:
    g = torch.tensor([0.054, 0.244, 0.403, 0.244, 0.054])
    across = -g
    across[2] += 1.0  # what the residual makes of a 1 px line
    h = across[:, None].expand(5, 20).clone()
    h = h / h.norm()
    r = _residual(x.mean(1, keepdim=True))
    best = []
    for w in (h, h.T.contiguous()):
        y = F.conv2d(r, w[None, None])
        k = 15
        local = F.avg_pool2d(F.pad(y * y, (k // 2,) * 4, mode="reflect"), k, 1).sqrt() + 0.5
        best.append((y / local).flatten(1).amax(1))
    return torch.stack(best).amax(0)


def ridges(x: torch.Tensor) -> torch.Tensor:
    return grey_ridges(x / 255.0, PATCH).flatten(1).amax(1)


def chroma(x: torch.Tensor) -> torch.Tensor:
    opp = torch.stack([x[:, 0] - x[:, 1], x[:, 2] - x[:, 1]], 1)
    m = F.avg_pool2d(opp, PATCH)
    d = m - _neighbour_median(m)
    return (d[:, 0] - d[:, 1]).flatten(1).amax(1)


def chroma_dog(x: torch.Tensor) -> torch.Tensor:
    o = (x[:, 0] - x[:, 2])[:, None]
    band = TF.gaussian_blur(o, [19, 19], [3.0, 3.0]) - TF.gaussian_blur(o, [43, 43], [7.0, 7.0])
    return band.flatten(1).amax(1)


STATISTICS = {"energy": energy, "seam20": seam20, "ridges": ridges, "chroma": chroma,
              "chroma_dog": chroma_dog}  # fmt: skip


def auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """ROC-AUC of scores ``pos`` against ``neg`` (ties count half)."""
    pos, neg = np.asarray(pos, np.float64), np.asarray(neg, np.float64)
    return float((pos[:, None] > neg[None]).mean() + 0.5 * (pos[:, None] == neg[None]).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--families", default="suite,unseen",
                    help="suite, unseen, or a comma list of families")  # fmt: skip
    ap.add_argument("--n", type=int, default=300, help="reals and fakes per base and family")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    named = {"suite": SUITE_FAMILIES, "unseen": UNSEEN_FAMILIES}
    families = [f for name in args.families.split(",") for f in named.get(name, (name,))]
    if bad := [f for f in families if f not in PLANTERS]:
        ap.error(f"unknown families {bad}: choose from suite, unseen or {sorted(PLANTERS)}")
    if args.n < 2:
        ap.error("--n must be at least 2")
    rng = np.random.default_rng(args.seed)
    photo = PhotoCrops()
    torch.set_grad_enabled(False)
    print("| family | base | " + " | ".join(STATISTICS) + " |")
    print("| --- | --- | " + " | ".join("---" for _ in STATISTICS) + " |")
    best = {}
    for base in ("texture", "photo"):
        reals = _images(rng, base, None, args.n, args.size, photo)
        neg = {k: f(reals).numpy() for k, f in STATISTICS.items()}
        for fam in families:
            fakes = _images(rng, base, fam, args.n, args.size, photo)
            row = {k: auc(f(fakes).numpy(), neg[k]) for k, f in STATISTICS.items()}
            print(f"| {fam} | {base} | " + " | ".join(f"{v:.3f}" for v in row.values()) + " |")
            if base == "photo":
                best[fam] = max(row.values())
    print("photo_best_auc=" + ",".join(f"{f}:{a:.3f}" for f, a in best.items()))


if __name__ == "__main__":
    main()
