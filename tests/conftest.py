"""Shared fixtures: generated image sets, a hostile-input zoo, a saved random encoder, a Dask
cluster. Everything is generated here, seeded, offline."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.config import EncoderConfig
from pipeline.synthetic import make_planted_dataset

TINY = "asap-micro-vit-64"
# A micro ViT trained on planted checkerboards (gen_a) and stripes (gen_b); made by
# tests/fixtures/make_golden.py. Tests that need a trained model use it (any CPU, no training).
GOLDEN = Path(__file__).parent / "fixtures" / "golden-micro.pt"


def png_bytes(arr: np.ndarray, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", **kw)
    return buf.getvalue()


def rand_rgb(rng, h=32, w=32) -> np.ndarray:
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def bomb_png() -> bytes:
    """A small PNG whose header claims 100000 x 100000 pixels."""
    data = bytearray(png_bytes(np.zeros((8, 8, 3), np.uint8)))
    data[16:24] = struct.pack(">II", 100_000, 100_000)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def jpeg_bytes(im: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="JPEG", **kw)
    return buf.getvalue()


def build_zoo(root: Path) -> dict[bytes, str | None]:
    """Hostile and awkward inputs under root/{0_real,1_fake}. Returns path -> expected reject
    reason fragment, or None when the file must be read correctly."""
    rng = np.random.default_rng(0)
    real, fake = root / "0_real", root / "1_fake"
    real.mkdir(parents=True)
    fake.mkdir(parents=True)
    expect: dict[bytes, str | None] = {}

    def put(folder: Path, name, data: bytes | None, reason):
        p = os.path.join(os.fsencode(folder), name if isinstance(name, bytes) else name.encode())
        if data is not None:
            with open(p, "wb") as f:
                f.write(data)
        expect[p] = reason
        return p

    good = png_bytes(rand_rgb(rng))
    for i in range(6):  # plenty of ordinary images in both classes
        put(real, f"ok_{i}.png", png_bytes(rand_rgb(rng)), None)
        put(fake, f"ok_{i}.png", png_bytes(rand_rgb(rng)), None)
    put(real, "empty.png", b"", "empty file")
    put(real, "truncated.png", good[: len(good) // 2], "truncated or corrupt")
    jpg = jpeg_bytes(Image.fromarray(rand_rgb(rng, 64, 64)))
    put(fake, "truncated.jpg", jpg[: len(jpg) // 2], "truncated or corrupt")
    put(fake, "notes.jpg", b"this is a text file, not a JPEG\n" * 4, "not an image")
    put(fake, "bomb.png", bomb_png(), "decompression bomb")
    put(real, "tiny.png", png_bytes(np.zeros((1, 1, 3), np.uint8)), "too small")
    cmyk = Image.fromarray(rand_rgb(rng)).convert("CMYK")
    put(real, "cmyk.jpg", jpeg_bytes(cmyk), None)
    grad16 = (np.linspace(0, 65535, 32 * 32).reshape(32, 32)).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(grad16).save(buf, format="PNG")
    put(real, "grey16.png", buf.getvalue(), None)
    pal = Image.fromarray(rand_rgb(rng)).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    buf = io.BytesIO()
    pal.save(buf, format="PNG", transparency=0)
    put(fake, "palette_alpha.png", buf.getvalue(), None)
    rgba = np.concatenate([rand_rgb(rng), np.full((32, 32, 1), 128, np.uint8)], axis=-1)
    put(fake, "alpha.png", png_bytes(rgba), None)
    rot = Image.fromarray(rand_rgb(rng, 20, 40))  # 40 wide, 20 high; EXIF says rotate 90
    exif = Image.Exif()
    exif[0x0112] = 6
    put(real, "rotated.jpg", jpeg_bytes(rot, exif=exif.tobytes()), None)
    put(fake, b"latin1_\xe9t\xe9.png", png_bytes(rand_rgb(rng)), None)  # not UTF-8
    put(fake, "multi.dot.name.v2.png", png_bytes(rand_rgb(rng)), None)
    put(real, "spaces and 'quotes'.png", png_bytes(rand_rgb(rng)), None)
    p = put(real, "broken_link.png", None, "broken symbolic link")
    os.symlink(os.fsencode(root / "does_not_exist.png"), p)
    p = put(fake, "fifo.png", None, "not a regular file")
    os.mkfifo(p)
    p = put(real, "locked.png", png_bytes(rand_rgb(rng)), "permission denied")
    os.chmod(p, 0)
    if os.geteuid() == 0:  # root reads mode-000 files: it is then read correctly
        expect[p] = None
    return expect


@pytest.fixture
def zoo(tmp_path) -> tuple[Path, dict]:
    root = tmp_path / "zoo"
    return root, build_zoo(root)


@pytest.fixture(scope="session")
def planted(tmp_path_factory):
    """300 real + 300 fake 64 px images; fakes carry a checkerboard patch at a known place."""
    root = tmp_path_factory.mktemp("planted")
    truth = make_planted_dataset(root, 300, 300, seed=0)
    return root, truth


@pytest.fixture(scope="session")
def random_encoder(tmp_path_factory) -> Path:
    """A saved, randomly initialised tiny encoder (no training) for deterministic pipeline tests."""
    import torch

    from pipeline.encoder import create_encoder, save_encoder

    torch.manual_seed(0)
    model = create_encoder(EncoderConfig(model_name=TINY)).eval()
    path = tmp_path_factory.mktemp("enc") / "encoder.pt"
    save_encoder(model, path)
    return path


@pytest.fixture(scope="session")
def dask_scheduler():
    """One LocalCluster shared by the pipeline tests, used through its address."""
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
    ) as cluster:
        yield cluster.scheduler_address


@pytest.fixture(scope="session")
def patterned_run(tmp_path_factory, dask_scheduler):
    """A run with patterns by the golden model on images it never saw: two generator families,
    each planting its own artifact (gen_a: checkerboard, gen_b: stripes) at random places.
    Returns (run dir, truth table)."""
    import pandas as pd

    from pipeline.config import RunConfig
    from pipeline.runner import run_pipeline

    root = tmp_path_factory.mktemp("patterned")
    families = (("checker", "gen_a", 0), ("stripes", "gen_b", 1))
    truth = pd.concat([
        make_planted_dataset(root / "imgs", 200, 200, artifact=a, generator=g, seed=s)
        for a, g, s in families
    ])  # fmt: skip
    out = root / "run"
    run_pipeline(RunConfig(source=str(root / "imgs"), out=str(out), layout="pca",
                           encoder_checkpoint=str(GOLDEN), scheduler=dask_scheduler,
                           partition_size=256, progress=False))  # fmt: skip
    return out, truth
