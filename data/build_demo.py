"""Build ASAP's embedded demo data set, reproducibly and offline, from what PyPI wheels ship.

    python data/build_demo.py --seed 0 --n 2000 --out data/demo

Two domains, each holding real and fake images of one size, colour mode and file format:
- faces (greyscale, 64 px PNG): real LFW faces from scikit-image's ``lfw_subset`` (25 px); fakes
  from the pretrained DCGAN of ``gan-face-generate`` and from the two autoencoders below. Every
  face, real or fake, goes through the same 25 px round trip (greyscale -> 25 px -> 64 px bicubic).
- photos (RGB, 64 px PNG): random crops of the CC0 / public-domain / CC-BY photographs shipped by
  scikit-image, scikit-learn and matplotlib; fakes are other crops of the same photographs passed
  through a small autoencoder trained here for a minute or two: ``ae-deconv`` decodes with
  transposed convolutions (the checkerboard fingerprint, as in latent-diffusion VAE decoders),
  ``ae-upsample`` with nearest upsampling + convolutions.

Layout: ``<source>/0_real/*.png`` (lfw, photos) and ``<generator>/1_fake/*.png`` (dcgan,
ae-deconv, ae-upsample), plus ``manifest.csv`` (path, label, generator, domain, source, licence,
sha) and ``baseline.json`` (how well trivial cues separate real from fake). Images are written in
chunks, so ``--n 100000`` never holds the set in memory. Re-running with the same arguments reuses
what is built.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageFilter
from torch import nn

SIZE = 64
FACE_NATIVE = 25  # lfw_subset's resolution
CHUNK = 256
LAYOUT_VERSION = 4  # bump when what a build writes changes: an older build is then rebuilt
# The autoencoders' weights for the default seed and steps, committed so that every machine builds
# the same images: trained here, their weights (and so the fakes, their hashes and the hash split)
# differ from one CPU model to another. Trained by train_autoencoder below, as `python
# data/build_demo.py --seed 0 --n 2000 --out data/demo --train-generators` trains them, on the
# 2-core AMD EPYC VM (at commit 56add0c), and copied from data/demo/models.
GENERATORS_DIR = Path(__file__).resolve().parent / "demo-generators"

PHOTO_SOURCES = {  # name -> (loader, licence)
    "astronaut": ("skimage:astronaut", "public domain (NASA)"),
    "chelsea": ("skimage:chelsea", "CC0 (Stefan van der Walt)"),
    "coffee": ("skimage:coffee", "CC0 (Rachel Michetti)"),
    "rocket": ("skimage:rocket", "public domain (SpaceX)"),
    "hubble_deep_field": ("skimage:hubble_deep_field", "public domain (NASA)"),
    "retina": ("skimage:retina", "CC0 1.0"),
    "china": ("sklearn:china.jpg", "CC BY 2.0 (danielbuechele, Flickr)"),
    "flower": ("sklearn:flower.jpg", "CC BY 2.0 (vultilion, Flickr)"),
    "grace_hopper": ("mpl:grace_hopper.jpg", "public domain (U.S. Navy)"),
}
LFW_LICENCE = "LFW (UMass Amherst), research use; via scikit-image lfw_subset"
DCGAN_LICENCE = "MIT (gan-face-generate weights, trained on DigiFace1M)"
AE_LICENCE = "generated here from the photographs above (their licences apply)"


def load_photos() -> dict[str, np.ndarray]:
    """The source photographs as (H, W, 3) uint8 arrays."""
    import matplotlib.cbook
    import skimage.data
    from sklearn.datasets import load_sample_image

    out = {}
    for name, (spec, _) in PHOTO_SOURCES.items():
        kind, key = spec.split(":")
        if kind == "skimage":
            arr = getattr(skimage.data, key)()
        elif kind == "sklearn":
            arr = load_sample_image(key)
        else:
            with matplotlib.cbook.get_sample_data(key) as f:
                arr = np.asarray(Image.open(f).convert("RGB"))
        out[name] = np.ascontiguousarray(arr[..., :3]).astype(np.uint8)
    return out


def load_lfw_faces() -> np.ndarray:
    """The 100 real faces of lfw_subset (the other 100 entries are non-faces): (100, 25, 25)."""
    import skimage.data

    return (skimage.data.lfw_subset()[:100] * 255).round().astype(np.uint8)


def photo_crop(rng: np.random.Generator, photos: dict, names: list[str]) -> tuple[str, np.ndarray]:
    name = names[rng.integers(len(names))]
    img = photos[name]
    h, w = img.shape[:2]
    side = int(rng.integers(SIZE, min(h, w, 3 * SIZE) + 1))
    top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    crop = Image.fromarray(img[top : top + side, left : left + side])
    crop = np.asarray(crop.resize((SIZE, SIZE), Image.Resampling.BICUBIC))
    return name, crop[:, ::-1] if rng.random() < 0.5 else crop


def face_round_trip(grey: np.ndarray) -> np.ndarray:
    """Any face -> greyscale 25 px -> 64 px bicubic: identical degradation for real and fake."""
    im = Image.fromarray(grey)
    if im.size != (FACE_NATIVE, FACE_NATIVE):
        im = im.resize((FACE_NATIVE, FACE_NATIVE), Image.Resampling.BOX)
    return np.asarray(im.resize((SIZE, SIZE), Image.Resampling.BICUBIC))


def real_face(rng: np.random.Generator, faces: np.ndarray) -> np.ndarray:
    """An LFW face with a random flip and a shift of up to 2 px (edge padded) at 25 px."""
    f = faces[rng.integers(len(faces))]
    f = f[:, ::-1] if rng.random() < 0.5 else f
    dy, dx = (int(v) for v in rng.integers(-2, 3, size=2))
    f = np.roll(np.pad(f, 2, mode="edge"), (dy, dx), axis=(0, 1))[2:-2, 2:-2]
    return face_round_trip(np.ascontiguousarray(f))


class AutoEncoder(nn.Module):
    """A small autoencoder (64 px -> 16x16x8 latent -> 64 px); ``decoder`` picks the family."""

    def __init__(self, decoder: str):
        super().__init__()
        self.enc = nn.Sequential(
            nn.Conv2d(3, 32, 4, 2, 1), nn.ReLU(), nn.Conv2d(32, 64, 4, 2, 1), nn.ReLU(),
            nn.Conv2d(64, 8, 3, 1, 1),
        )  # fmt: skip
        if decoder == "deconv":
            up = [
                nn.ConvTranspose2d(64, 32, 4, 2, 1),
                nn.ReLU(),
                nn.ConvTranspose2d(32, 3, 4, 2, 1),
            ]
        elif decoder == "upsample":
            up = [nn.Upsample(scale_factor=2), nn.Conv2d(64, 32, 3, 1, 1), nn.ReLU(),
                  nn.Upsample(scale_factor=2), nn.Conv2d(32, 3, 3, 1, 1)]  # fmt: skip
        else:
            raise ValueError(f"decoder must be deconv or upsample, got {decoder!r}")
        self.dec = nn.Sequential(nn.Conv2d(8, 64, 3, 1, 1), nn.ReLU(), *up, nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, 64, 64) in [0, 1]
        return self.dec(self.enc(x))


def _to_tensor(batch: np.ndarray) -> torch.Tensor:
    """(B, H, W[, 3]) uint8 -> (B, 3, H, W) float64 in [0, 1]. The generators run in float64, so
    that a pixel's uint8 value does not depend on the CPU's vector kernels or summation order:
    float32 results may differ in their last bits from one CPU model to another, and last bits
    flip roundings often (float32 and float64 outputs of the same autoencoder differ in at least
    one pixel of 13% of 512 photo crops), which changes an image's hash and so its split."""
    if batch.ndim == 3:  # greyscale faces -> 3 identical channels
        batch = np.repeat(batch[..., None], 3, axis=-1)
    return torch.from_numpy(batch.copy()).permute(0, 3, 1, 2).double() / 255


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    return (x.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()


def train_autoencoder(
    decoder, photos, faces, steps, seed, cache: Path, committed: Path | None = None
) -> tuple[AutoEncoder, str]:
    """Train on a mix of photo crops and faces (in float32); cached in ``cache`` for re-runs.
    ``committed``: weights to use instead of training, when that file exists. Returns the model in
    float64, for inference, and where its weights came from."""
    torch.manual_seed(seed)  # before the model exists: its initial weights come from this seed
    model = AutoEncoder(decoder)
    for src, how in ((committed, "committed"), (cache, "cached")):
        if src is not None and src.exists():
            model.load_state_dict(torch.load(src, weights_only=True))
            return model.double().eval(), f"{how} {src.name} (sha256 {_sha256(src)[:16]})"
    rng = np.random.default_rng(seed)
    names = sorted(photos)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(steps):
        batch = [photo_crop(rng, photos, names)[1] for _ in range(24)]
        batch += [np.repeat(real_face(rng, faces)[..., None], 3, -1) for _ in range(8)]
        x = _to_tensor(np.stack(batch)).float()  # trained in float32, as before
        loss = nn.functional.mse_loss(model(x), x)
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.save(model.state_dict(), cache)
    return model.double().eval(), f"trained here, {cache.name} (sha256 {_sha256(cache)[:16]})"


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_dcgan():
    """The pretrained DCGAN face generator shipped in the gan-face-generate wheel."""
    try:
        import gan_face_generate
        from gan_face_generate.models import Generator
    except ImportError as e:
        raise SystemExit(
            "gan-face-generate is missing: pip install --no-deps gan-face-generate==1.1.1"
        ) from e
    net = Generator(0, 3, 100, 64)
    weights = Path(gan_face_generate.__file__).parent / "weights.tar"
    net.load_state_dict(
        torch.load(weights, map_location="cpu", weights_only=False)["netG_state_dict"]
    )
    return net.double().eval()  # float64: see _to_tensor


def plan(n: int) -> dict[tuple[str, str], int]:
    """Image counts per (domain, generator): 40% faces, 60% photos, half of each fake."""
    faces, photos = round(n * 0.4) // 2, (n - 2 * (round(n * 0.4) // 2)) // 2
    return {
        ("faces", "real"): faces,
        ("faces", "dcgan"): faces - 2 * (faces // 6) - faces // 4,
        ("faces", "ae-deconv"): faces // 6,
        ("faces", "ae-upsample"): faces // 6,
        ("faces", "ae-inpaint"): faces // 4,
        ("photos", "real"): photos,
        ("photos", "ae-deconv"): photos // 3,
        ("photos", "ae-upsample"): photos // 3,
        ("photos", "ae-inpaint"): photos - 2 * (photos // 3),
    }


NO_REGION = (-1, -1, -1, -1)


def inpaint_region(rng: np.random.Generator) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """A feathered ellipse (radii 8-18 px, anywhere inside the image): the (SIZE, SIZE) blend
    weight in [0, 1] and the bounding box (top, left, bottom, right) of the pixels it changes."""
    ry, rx = (float(v) for v in rng.uniform(8, 18, size=2))
    cy = float(rng.uniform(ry + 1, SIZE - ry - 1))
    cx = float(rng.uniform(rx + 1, SIZE - rx - 1))
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    inside = (((yy + 0.5 - cy) / ry) ** 2 + ((xx + 0.5 - cx) / rx) ** 2 <= 1).astype(np.float32)
    weight = np.asarray(
        Image.fromarray(inside * 255).convert("L").filter(ImageFilter.GaussianBlur(1.0)),
        dtype=np.float32,
    ) / 255  # fmt: skip
    ys, xs = np.nonzero(weight > 0.05)
    return weight, (int(ys.min()), int(xs.min()), int(ys.max()) + 1, int(xs.max()) + 1)


def inpaint(real: np.ndarray, rec: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """``real`` with the region ``weight`` replaced by the reconstruction ``rec`` (same shape)."""
    w = weight[..., None] if real.ndim == 3 else weight
    out = real.astype(np.float32) * (1 - w) + rec.astype(np.float32) * w
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _reconstruct(models, name: str, batch: np.ndarray, grey: bool) -> np.ndarray:
    with torch.no_grad():
        rec = _to_uint8(models[name](_to_tensor(batch)))
    return np.stack([np.asarray(Image.fromarray(r).convert("L")) for r in rec]) if grey else rec


def generate(domain, generator, count, seed, photos, faces, models, dcgan):
    """Yield (source, licence, uint8 image, region box) in chunks, for one (domain, generator).
    The box is where an ``ae-inpaint`` image was changed (NO_REGION for every other image)."""
    # zlib.crc32, not hash(): str hashes change from process to process
    rng = np.random.default_rng([seed, zlib.crc32(domain.encode()), zlib.crc32(generator.encode())])
    torch.manual_seed(int(rng.integers(1 << 31)))
    names = sorted(photos)
    done = 0
    while done < count:
        k = min(CHUNK, count - done)
        if generator == "ae-inpaint":  # a local fake: one region through an autoencoder
            if domain == "faces":
                srcs = [("lfw", real_face(rng, faces)) for _ in range(k)]
            else:
                srcs = [photo_crop(rng, photos, names) for _ in range(k)]
            batch = np.stack([a for _, a in srcs])
            grey = domain == "faces"
            recs = {m: _reconstruct(models, m, batch, grey) for m in ("ae-deconv", "ae-upsample")}
            out = []
            for i, (nm, real) in enumerate(srcs):
                dec = ("ae-deconv", "ae-upsample")[int(rng.integers(2))]
                weight, box = inpaint_region(rng)
                out.append((nm, AE_LICENCE, inpaint(real, recs[dec][i], weight), box))
        elif domain == "faces" and generator == "real":
            out = [("lfw", LFW_LICENCE, real_face(rng, faces)) for _ in range(k)]
        elif domain == "faces" and generator == "dcgan":
            with torch.no_grad():
                rgb = _to_uint8((dcgan(torch.randn(k, 100, 1, 1).double()) + 1) / 2)
            grey = [np.asarray(Image.fromarray(a).convert("L")) for a in rgb]
            out = [("dcgan", DCGAN_LICENCE, face_round_trip(g)) for g in grey]
        elif domain == "faces":
            src = np.stack([real_face(rng, faces) for _ in range(k)])
            with torch.no_grad():
                rec = _to_uint8(models[generator](_to_tensor(src)))
            out = [("lfw", AE_LICENCE, np.asarray(Image.fromarray(r).convert("L"))) for r in rec]
        else:
            crops = [photo_crop(rng, photos, names) for _ in range(k)]
            if generator == "real":
                out = [(nm, PHOTO_SOURCES[nm][1], c) for nm, c in crops]
            else:
                with torch.no_grad():
                    rec = _to_uint8(models[generator](_to_tensor(np.stack([c for _, c in crops]))))
                out = [(nm, AE_LICENCE, r) for (nm, _), r in zip(crops, rec)]
        done += k
        yield [o if len(o) == 4 else (*o, NO_REGION) for o in out]


def trivial_baseline(manifest: pd.DataFrame, root: Path, seed: int, limit: int = 4000) -> dict:
    """5-fold accuracy of logistic regression on trivial cues (colour histogram, image size, file
    size), overall and per domain. Balanced classes give 0.5 for no signal."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    df = manifest.sample(min(limit, len(manifest)), random_state=seed)
    feats = []
    for rel in df["path"]:
        p = root / rel
        arr = np.asarray(Image.open(p).convert("RGB"))
        hist = [np.histogram(arr[..., c], bins=8, range=(0, 256))[0] / arr[..., c].size
                for c in range(3)]  # fmt: skip
        feats.append([*np.concatenate(hist), arr.shape[0], arr.shape[1], p.stat().st_size])
    x, y = np.asarray(feats, dtype=np.float64), df["label"].to_numpy()

    def score(mask, cols=slice(None)) -> float:
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        return float(cross_val_score(clf, x[mask][:, cols], y[mask], cv=5).mean())

    everything = np.ones(len(df), bool)
    out = {
        "images": len(df),
        "all_cues": score(everything),
        "file_size_only": score(everything, [-1]),
    }
    for dom in sorted(df["domain"].unique()):
        m = (df["domain"] == dom).to_numpy()
        out[f"{dom}_all_cues"] = score(m)
        out[f"{dom}_file_size_only"] = score(m, [-1])
        out[f"{dom}_histogram_only"] = score(m, slice(0, 24))
    return out


def build(
    n: int,
    out: Path,
    seed: int,
    ae_steps: int,
    baseline: bool = True,
    generators: Path | None = GENERATORS_DIR,
) -> pd.DataFrame:
    """``generators``: a folder of committed autoencoder weights, used where it holds the file
    for this seed and step count (None: always train them here)."""
    from pipeline.imageio import content_hash

    source = "trained" if generators is None else "committed"
    stamp = out / f".built-v{LAYOUT_VERSION}-n{n}-seed{seed}-ae{ae_steps}-{source}"
    if stamp.exists():
        print(f"{out}: already built (n={n}, seed={seed})", file=sys.stderr)
        return pd.read_csv(out / "manifest.csv")
    if out.exists():  # an older or different build: rebuilt, keeping its trained autoencoders
        for old in out.iterdir():
            if old.name != "models":
                shutil.rmtree(old) if old.is_dir() else old.unlink()
    (out / "models").mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    photos, faces = load_photos(), load_lfw_faces()
    models, origin = {}, {}
    for i, (name, dec) in enumerate((("ae-deconv", "deconv"), ("ae-upsample", "upsample"))):
        file = f"{name}-seed{seed + i}-steps{ae_steps}.pt"
        cache = out / "models" / file  # what was trained here (never the committed weights)
        models[name], origin[name] = train_autoencoder(
            dec, photos, faces, ae_steps, seed + i, cache,
            None if generators is None else Path(generators) / file,
        )  # fmt: skip
    dcgan = load_dcgan()
    print(f"generators ready in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    rows = []
    for (domain, gen), count in plan(n).items():
        label = 0 if gen == "real" else 1
        folder = Path(
            "lfw" if label == 0 and domain == "faces" else "photos" if label == 0 else gen
        )
        folder = folder / ("0_real" if label == 0 else "1_fake")
        (out / folder).mkdir(parents=True, exist_ok=True)
        i = 0
        for chunk in generate(domain, gen, count, seed, photos, faces, models, dcgan):
            for source, licence, arr, box in chunk:
                rel = folder / f"{domain}_{gen}_{i:06d}.png"
                Image.fromarray(arr).save(out / rel, optimize=False)
                data = (out / rel).read_bytes()
                rows.append(
                    dict(path=str(rel), label=label, generator=gen, domain=domain,
                         source=source, licence=licence, sha=content_hash(data),
                         region_top=box[0], region_left=box[1], region_bottom=box[2],
                         region_right=box[3])
                )  # fmt: skip
                i += 1
    manifest = pd.DataFrame(rows)
    manifest.to_csv(out / "manifest.csv", index=False)
    info = {"n": len(manifest), "seed": seed, "ae_steps": ae_steps, "autoencoders": origin,
            "seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip
    if baseline:
        info["trivial_baseline_accuracy"] = trivial_baseline(manifest, out, seed)
    (out / "build.json").write_text(json.dumps(info, indent=2))
    stamp.touch()
    print(json.dumps(info, indent=2), file=sys.stderr)
    return manifest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=2000, help="images in total (half real)")
    ap.add_argument("--out", default="data/demo")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ae-steps", type=int, default=800, help="training steps per autoencoder")
    ap.add_argument("--no-baseline", action="store_true", help="skip the trivial-cue baseline")
    ap.add_argument(
        "--train-generators",
        action="store_true",
        help="train the autoencoders here instead of using the committed weights in "
        "data/demo-generators (the images then differ from one CPU model to another)",
    )
    a = ap.parse_args()
    if a.n < 20:
        ap.error("--n must be at least 20")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    build(a.n, Path(a.out), a.seed, a.ae_steps, baseline=not a.no_baseline,
          generators=None if a.train_generators else GENERATORS_DIR)  # fmt: skip


if __name__ == "__main__":
    main()
