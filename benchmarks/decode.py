"""Decoders and precisions side by side in one process, on the same JPEGs and model (issue 10).

For ``--decode pil`` (PIL on the host) and ``--decode nvjpeg`` (nvJPEG on the GPU for plain
JPEGs), alternating, ``--repeats`` times each:

- decode only: ``pipeline.batchread.BatchReader.read`` on every batch, the device synchronised;
- the encode loop: ``pipeline.worker.encode_rows`` (decode with its prefetch thread, forward, the
  default maps and the comparison maps), img/s.

Then what the choice changes: the pixels (grey levels) and the stored fake maps of the two
decoders on the same images (Spearman rank correlation per image, share whose top patch is the
same), beside a noise floor (PIL's pixels each moved by -1, 0 or +1 grey level at random), and
the same for the precisions (``tf32`` and ``bf16`` against ``fp32``, PIL pixels); the maps the
encode loop stores (decoding while the model's work is queued) against maps computed apart.

On a GPU, the race check: nvJPEG's hardware engine writes its outputs before the work queued on
its stream has run (pytorch/vision#9606). Each round frees 64 tensors whose reads are still queued
behind a stall, decodes a batch, and counts the rounds in which a freed tensor's sum came out
wrong, with ASAP's guard (pipeline.batchread.GUARD_STREAM: a decoding stream of its own) and
without it. Last line:

    decode_pil_img_per_s=A decode_nvjpeg_img_per_s=B encode_pil_img_per_s=C
    encode_nvjpeg_img_per_s=D top_patch_same=E rho_median=F race_guarded=G race_unguarded=H

    python benchmarks/decode.py --device cuda --model ViT-B-32 --pretrained CKPT --n 4096
    python benchmarks/decode.py --n 256           # the CPU: both routes are PIL's, no race check
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

try:  # must come before the package imports: see benchmarks/_isolate.py
    import _isolate  # noqa: F401
except ModuleNotFoundError:
    pass
import numpy as np
import torch

from pipeline.batchread import BatchReader
from pipeline.config import EncoderConfig
from pipeline.encoder import create_encoder, load_encoder
from pipeline.explain import DEFAULT_METHOD, explain
from pipeline.precision import compute_precision
from pipeline.worker import encode_rows


def _sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _spearman(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-row Spearman correlation of (n, k) arrays."""
    ra = a.argsort(1).argsort(1).astype(np.float64)
    rb = b.argsort(1).argsort(1).astype(np.float64)
    ra -= ra.mean(1, keepdims=True)
    rb -= rb.mean(1, keepdims=True)
    den = np.sqrt((ra**2).sum(1) * (rb**2).sum(1))
    return (ra * rb).sum(1) / np.where(den > 0, den, 1.0)


def agreement(ref: np.ndarray, other: np.ndarray) -> tuple[float, float]:
    """(share of images whose fake map's top patch is the same, median Spearman rho)."""
    a = ref[:, 0].reshape(len(ref), -1).astype(np.float32)
    b = other[:, 0].reshape(len(other), -1).astype(np.float32)
    same = float((a.argmax(1) == b.argmax(1)).mean())
    return same, float(np.median(_spearman(a, b)))


def race_check(paths, size, mean, std, device, guard: bool, rounds: int) -> int:
    """Rounds (of ``rounds``) in which decoding a batch corrupted tensors freed just before it
    whose reads were still queued on the model's stream (see the module's doc)."""
    import pipeline.batchread as br

    saved, br.GUARD_STREAM = br.GUARD_STREAM, guard
    try:
        reader = BatchReader(size, mean, std, device, decode="nvjpeg")
        reader.read(paths)
        torch.cuda.synchronize()
        n_el = 3 * 256 * 256 // 4  # float32 tensors the size of one decoded 256 px image
        bad = 0
        for _ in range(rounds):
            victims = [torch.ones(n_el, device=device) for _ in range(64)]
            torch.cuda._sleep(200_000_000)  # the reads below wait behind this stall
            sums = torch.stack([v.sum() for v in victims])
            del victims  # freed on the stream while their reads are still queued
            reader.read(paths)
            torch.cuda.synchronize()
            bad += int((sums != n_el).any())
        return bad
    finally:
        br.GUARD_STREAM = saved


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", default=None, help="JPEG folder (default: scale.py's, generated)")
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--model", default="asap-tiny-vit-64")
    ap.add_argument("--pretrained", default=None)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3, help="timed rounds (0: equivalence only)")
    ap.add_argument("--n-equivalence", type=int, default=1024, help="images compared")
    ap.add_argument("--race-rounds", type=int, default=20)
    ap.add_argument("--encoder", default=None, help="a trained ASAP encoder instead of --model")
    args = ap.parse_args()
    folder = Path(args.images or f"/tmp/asap-scale-{args.n}")
    if not folder.exists():
        from scale import make_images

        make_images(folder, args.n)
    paths = sorted(str(p).encode() for p in folder.rglob("*.jpg"))[: args.n]
    device = args.device
    torch.manual_seed(0)
    if args.encoder:
        model = load_encoder(args.encoder, device)
    else:
        model = create_encoder(EncoderConfig(model_name=args.model, pretrained=args.pretrained))
    model = model.to(device).eval().requires_grad_(False)
    size, mean, std = model.image_size, model.preprocess["mean"], model.preprocess["std"]
    compare = ("chefer_last", "attention")
    name = args.encoder or args.model
    print(f"{len(paths)} JPEGs from {folder}; {name} on {device}, batch {args.batch_size}",
          flush=True)  # fmt: skip

    def decode_only(decode: str) -> float:
        reader = BatchReader(size, mean, std, device, decode=decode)
        t0 = time.perf_counter()
        for s in range(0, len(paths), args.batch_size):
            reader.read(paths[s : s + args.batch_size])
        _sync(device)
        return len(paths) / (time.perf_counter() - t0)

    def encode(decode: str, precision: str = "auto", n: int | None = None):
        t0 = time.perf_counter()
        kept, out, _ = encode_rows(model, paths[:n], batch_size=args.batch_size,
                                   maps=DEFAULT_METHOD, device=device, compare=compare,
                                   precision=precision, decode=decode)  # fmt: skip
        return len(kept) / (time.perf_counter() - t0), out

    decoders = ("pil", "nvjpeg")
    timed = decoders if args.repeats else ()
    for d in timed:  # warm-up: nvJPEG's handles, cuDNN/cuBLAS choices, the page cache
        decode_only(d)
        encode(d, n=args.batch_size)
    dec = {d: [] for d in decoders}
    enc = {d: [] for d in decoders}
    for _ in range(args.repeats):
        for d in decoders:
            dec[d].append(decode_only(d))
            enc[d].append(encode(d)[0])
    for d in timed:
        print(f"decode={d}: decode only {statistics.median(dec[d]):,.0f} img/s "
              f"({', '.join(f'{v:,.0f}' for v in dec[d])}); encode loop "
              f"{statistics.median(enc[d]):,.0f} img/s ({', '.join(f'{v:,.0f}' for v in enc[d])})",
              flush=True)  # fmt: skip

    n_eq = min(len(paths), args.n_equivalence)
    r_pil = BatchReader(size, mean, std, device, decode="pil")
    r_dev = BatchReader(size, mean, std, device, decode="nvjpeg")
    x_pil, _, _ = r_pil.read(paths[:n_eq])
    x_dev, _, _ = r_dev.read(paths[:n_eq])
    scale = torch.tensor(std, device=x_pil.device).view(1, 3, 1, 1) * 255
    levels = ((x_dev - x_pil) * scale).abs().float()
    identical = (levels.amax((1, 2, 3)) == 0).float().mean()
    print(f"pixels, nvJPEG route vs PIL on {n_eq} images: mean |diff| {levels.mean():.3f} grey "
          f"levels, max {levels.max():.1f}, images identical {identical:.3f}")  # fmt: skip
    gen = torch.Generator(device="cpu").manual_seed(0)
    step = torch.randint(-1, 2, x_pil.shape, generator=gen).to(x_pil.device)
    x_dither = x_pil + step / scale  # every pixel moved by -1, 0 or +1 grey level

    def maps_of(x, precision="auto"):
        out = []
        for s in range(0, len(x), args.batch_size):
            with compute_precision(precision, device):
                ex = explain(model, x[s : s + args.batch_size], DEFAULT_METHOD, compare)
            out.append(ex.maps.detach().half().float().cpu().numpy())
        return np.concatenate(out)

    ref = maps_of(x_pil)
    same, rho = agreement(ref, maps_of(x_dev))
    print(f"fake maps, nvJPEG route vs PIL: top patch same {same:.3f}, median rho {rho:.4f}")
    s_d, r_d = agreement(ref, maps_of(x_dither))
    print(f"noise floor, PIL pixels each moved by -1/0/+1 grey level vs PIL: top patch same "
          f"{s_d:.3f}, median rho {r_d:.4f}")  # fmt: skip
    _, out_pil = encode("pil", n=n_eq)
    _, out_dev = encode("nvjpeg", n=n_eq)
    s_e, r_e = agreement(ref, out_pil["maps"])
    print(f"stored maps of the encode loop, PIL, vs the same computed apart: top patch same "
          f"{s_e:.3f}, median rho {r_e:.4f}")  # fmt: skip
    s_e, r_e = agreement(maps_of(x_dev), out_dev["maps"])
    print(f"stored maps of the encode loop, nvJPEG, vs the same computed apart: top patch same "
          f"{s_e:.3f}, median rho {r_e:.4f}")  # fmt: skip
    race = {True: float("nan"), False: float("nan")}
    if torch.device(device).type == "cuda":
        for guard in (True, False):
            race[guard] = race_check(paths[:64], size, mean, std, device, guard, args.race_rounds)
        print(f"race check ({args.race_rounds} rounds): corrupted rounds with the guard "
              f"{race[True]:.0f}, without it {race[False]:.0f}", flush=True)  # fmt: skip
        ref32 = maps_of(x_pil, "fp32")
        for prec in ("tf32", "bf16"):
            s_p, r_p = agreement(ref32, maps_of(x_pil, prec))
            print(f"fake maps, {prec} vs fp32 (PIL pixels, {n_eq} images): top patch same "
                  f"{s_p:.3f}, median rho {r_p:.4f}", flush=True)  # fmt: skip
    if not args.repeats:
        return
    print(f"decode_pil_img_per_s={statistics.median(dec['pil']):.0f} "
          f"decode_nvjpeg_img_per_s={statistics.median(dec['nvjpeg']):.0f} "
          f"encode_pil_img_per_s={statistics.median(enc['pil']):.0f} "
          f"encode_nvjpeg_img_per_s={statistics.median(enc['nvjpeg']):.0f} "
          f"top_patch_same={same:.3f} rho_median={rho:.4f} "
          f"race_guarded={race[True]:.0f} race_unguarded={race[False]:.0f}")  # fmt: skip


if __name__ == "__main__":
    main()
