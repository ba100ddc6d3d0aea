"""What each stem costs, measured side by side in one run on the same images and machine.

For every stem (the tiny ViT, the same seed), interleaved ``--repeats`` times, the median time of
a forward pass and of a forward pass with the run's 18 maps and its comparison maps (what the
encode stage computes per batch). Prints img/s per stem and each stem's times over the first
stem's; the last line is ``forward_ratio=F maps_ratio=M`` for the last stem against the first.

    python benchmarks/stems.py                           # bank against patch, < 1 min here
    python benchmarks/stems.py --stems patch bank none --batch 32
"""

from __future__ import annotations

import argparse
import statistics
import time

try:  # must come before the package imports: see benchmarks/_isolate.py
    import _isolate  # noqa: F401
except ModuleNotFoundError:
    pass
import numpy as np
import torch

from pipeline.config import STEMS, EncoderConfig, RunConfig
from pipeline.encoder import create_encoder
from pipeline.explain import DEFAULT_METHOD, explain
from pipeline.synthetic import texture


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stems", nargs="+", default=["patch", "bank"], choices=STEMS)
    ap.add_argument("--model", default="asap-tiny-vit-64")
    ap.add_argument("--batch", type=int, default=32, help="images per pass (the CPU default)")
    ap.add_argument("--repeats", type=int, default=9)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    models = {}
    for stem in args.stems:
        torch.manual_seed(0)
        models[stem] = create_encoder(EncoderConfig(model_name=args.model, stem=stem)).eval()
        models[stem].requires_grad_(False)
    size = next(iter(models.values())).image_size
    imgs = np.stack([texture(rng, size) for _ in range(args.batch)]).astype(np.float32) / 255
    x = torch.from_numpy(imgs).permute(0, 3, 1, 2).contiguous()

    def forward(m):
        with torch.no_grad():
            m(x)

    def maps(m):
        explain(m, x, DEFAULT_METHOD, RunConfig.compare_maps)

    times = {(s, k): [] for s in args.stems for k in ("forward", "maps")}
    for m in models.values():  # warm-up
        forward(m)
        maps(m)
    for _ in range(args.repeats):  # interleaved, so that a drift in the machine hits every stem
        for stem, m in models.items():
            for kind, fn in (("forward", forward), ("maps", maps)):
                t0 = time.perf_counter()
                fn(m)
                times[stem, kind].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    first = args.stems[0]
    print(f"{args.model}, batch {args.batch}, {torch.get_num_threads()} threads, "
          f"median of {args.repeats}")  # fmt: skip
    print("| stem | forward img/s | forward + maps img/s | forward / first | maps / first |")
    print("| --- | --- | --- | --- | --- |")
    for stem in args.stems:
        f, mp = med[stem, "forward"], med[stem, "maps"]
        print(f"| {stem} | {args.batch / f:.0f} | {args.batch / mp:.0f} | "
              f"{f / med[first, 'forward']:.2f} | {mp / med[first, 'maps']:.2f} |")  # fmt: skip
    last = args.stems[-1]
    print(f"forward_ratio={med[last, 'forward'] / med[first, 'forward']:.3f} "
          f"maps_ratio={med[last, 'maps'] / med[first, 'maps']:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
