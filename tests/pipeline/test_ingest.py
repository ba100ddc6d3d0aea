"""Ingest: every layout is labelled right; every hostile input is rejected with a reason or read
correctly; nothing else is lost."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

from pipeline import imageio, ingest
from pipeline.imageio import ImageRejected, decode_image, read_bytes
from tests.conftest import png_bytes


def _write(root, rel: str, seed: int = 0) -> None:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(png_bytes(np.random.default_rng(seed).integers(0, 256, (16, 16, 3), np.uint8)))


def _labels(root) -> dict[str, tuple]:
    out = {}
    for c in ingest.discover(root):
        rel = os.path.relpath(c.path, os.fsencode(root)).decode()
        out[rel] = (c.label, c.generator, c.source, c.split)
    return out


def test_cnndetection_layout_generators_and_classes(tmp_path):
    for i, rel in enumerate(
        ["progan/airplane/0_real/a.png", "progan/airplane/1_fake/a.png",
         "stylegan/car/0_real/b.png", "stylegan/car/1_fake/b.png"]
    ):  # fmt: skip
        _write(tmp_path, rel, i)
    got = _labels(tmp_path)
    assert got["progan/airplane/1_fake/a.png"] == (1, "progan", "progan", None)
    assert got["stylegan/car/0_real/b.png"] == (0, "real", "stylegan", None)


def test_single_generator_cnndetection_keeps_generator_not_class(tmp_path):
    for i, rel in enumerate(
        ["progan/airplane/0_real/a.png", "progan/airplane/1_fake/a.png",
         "progan/car/0_real/b.png", "progan/car/1_fake/b.png"]
    ):  # fmt: skip
        _write(tmp_path, rel, i)
    assert {g for _, g, _, _ in _labels(tmp_path).values()} == {"progan", "real"}


def test_univfd_layout_descends_past_collection_folder(tmp_path):
    _write(tmp_path, "diffusion_datasets/glide_100_10/1_fake/a.png", 0)
    _write(tmp_path, "diffusion_datasets/laion/0_real/b.png", 1)
    got = _labels(tmp_path)
    assert got["diffusion_datasets/glide_100_10/1_fake/a.png"][1] == "glide_100_10"
    assert got["diffusion_datasets/laion/0_real/b.png"][:2] == (0, "real")


def test_genimage_layout_with_splits(tmp_path):
    _write(tmp_path, "Midjourney/train/ai/a.png", 0)
    _write(tmp_path, "Midjourney/train/nature/b.png", 1)
    _write(tmp_path, "Midjourney/val/ai/c.png", 2)
    got = _labels(tmp_path)
    assert got["Midjourney/train/ai/a.png"] == (1, "Midjourney", "Midjourney", "train")
    assert got["Midjourney/train/nature/b.png"][0] == 0
    assert got["Midjourney/val/ai/c.png"][3] == "val"


def test_real_fake_any_case_and_generator_named_folders(tmp_path):
    _write(tmp_path / "a", "REAL/x.png", 0)
    _write(tmp_path / "a", "Fake/y.png", 1)
    assert sorted(v[0] for v in _labels(tmp_path / "a").values()) == [0, 1]
    _write(tmp_path / "b", "real/x.png", 2)
    _write(tmp_path / "b", "stylegan2/y.png", 3)
    _write(tmp_path / "b", "dalle/z.png", 4)
    got = _labels(tmp_path / "b")
    assert got["real/x.png"][:2] == (0, "real")
    assert got["stylegan2/y.png"][:2] == (1, "stylegan2")
    assert got["dalle/z.png"][:2] == (1, "dalle")


def test_manifest_csv_and_parquet(tmp_path):
    _write(tmp_path, "imgs/a.png", 0)
    _write(tmp_path, "imgs/b.png", 1)
    df = pd.DataFrame(
        {"path": ["imgs/a.png", "imgs/b.png"], "label": ["real", 1], "generator": ["", "sdxl"]}
    )
    df.to_csv(tmp_path / "m.csv", index=False)
    df.astype({"label": str}).to_parquet(tmp_path / "m.parquet")
    for name in ("m.csv", "m.parquet"):
        cands = ingest.discover(tmp_path / name)
        assert [(c.label, c.generator) for c in cands] == [(0, "real"), (1, "sdxl")]
        assert all(os.path.exists(c.path) for c in cands)


def test_manifest_errors_name_the_problem(tmp_path):
    pd.DataFrame({"where": ["a.png"]}).to_csv(tmp_path / "m.csv", index=False)
    with pytest.raises(ValueError, match="no path column.*--path-col"):
        ingest.discover(tmp_path / "m.csv")
    pd.DataFrame({"file": ["a.png"]}).to_csv(tmp_path / "m.csv", index=False)
    with pytest.raises(ValueError, match="no label column.*--label-col"):
        ingest.discover(tmp_path / "m.csv")
    pd.DataFrame({"path": ["a.png"], "label": ["maybe"]}).to_csv(tmp_path / "n.csv", index=False)
    with pytest.raises(ValueError, match="maybe"):
        ingest.discover(tmp_path / "n.csv")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        ingest.discover(tmp_path / "nowhere")


def test_hostile_zoo_every_file_accounted_for(zoo):
    root, expect = zoo
    images, rejects = ingest.inspect_candidates(ingest.discover(root), 64_000_000, 8)
    got_ok = set(images["path_bytes"])
    got_rej = dict(zip(rejects["path_bytes"], rejects["reason"]))
    assert got_ok.isdisjoint(got_rej)
    assert got_ok | set(got_rej) == set(expect), "a file was lost or invented"
    for path, reason in expect.items():
        if reason is None:
            assert path in got_ok, f"{path!r} should be read, got {got_rej.get(path)}"
        else:
            assert path in got_rej and reason in got_rej[path], (path, got_rej.get(path))


def test_awkward_images_decode_correctly(zoo):
    root, _ = zoo
    read = {}
    for folder in ("0_real", "1_fake"):
        for name in os.listdir(os.fsencode(root / folder)):
            try:
                read[name] = decode_image(
                    read_bytes(os.path.join(os.fsencode(root / folder), name))
                )
            except ImageRejected:
                pass
    arr, info = read[b"rotated.jpg"]
    assert (info.width, info.height) == (20, 40), "EXIF orientation not applied"
    arr, info = read[b"grey16.png"]
    assert info.mode.startswith("I") and arr.min() < 10 and arr.max() > 245, "16-bit clipped"
    arr, info = read[b"cmyk.jpg"]
    assert info.mode == "CMYK" and arr.shape == (32, 32, 3)
    arr, info = read[b"palette_alpha.png"]
    assert info.mode == "P" and arr.shape[-1] == 3
    assert (arr == 255).all(axis=-1).any(), "transparent palette entry should become white"
    for arr, _ in read.values():
        assert arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[-1] == 3


def test_model_reader_decodes_large_jpegs_at_reduced_scale(tmp_path):
    """load_for_model (every stage's reader) decodes a large JPEG in the DCT domain at the scale
    the model needs: the result matches full decoding + resizing up to resampling differences,
    and a rotated, CMYK or grey JPEG comes out upright RGB as with full decoding."""
    import io

    from PIL import Image

    from pipeline.imageio import load_for_model, resize_center_crop

    rng = np.random.default_rng(0)
    base = rng.uniform(0, 255, size=(6, 9, 3)).astype(np.uint8)
    smooth = np.asarray(Image.fromarray(base).resize((384, 256), Image.Resampling.BICUBIC))
    for mode in ("RGB", "CMYK", "L"):
        buf = io.BytesIO()
        Image.fromarray(smooth).convert(mode).save(buf, "JPEG", quality=95)
        data = buf.getvalue()
        path = tmp_path / f"{mode}.jpg"
        path.write_bytes(data)
        small, _ = decode_image(data, draft=64)
        assert small.shape == (64, 96, 3)  # 1/4 scale: the smallest keeping the short side >= 64
        full, _ = decode_image(data)
        assert full.shape == (256, 384, 3)
        got = load_for_model(str(path), 64).astype(float)
        want = resize_center_crop(full, 64).astype(float)
        assert got.shape == (64, 64, 3)
        assert np.abs(got - want).mean() < 3.0, mode
    # EXIF orientation is applied after a reduced-scale decode too
    buf = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees
    Image.fromarray(smooth).save(buf, "JPEG", exif=exif)
    arr, _ = decode_image(buf.getvalue(), draft=64)
    assert arr.shape == (96, 64, 3)


def test_permission_denied_is_reported(tmp_path, monkeypatch):
    p = tmp_path / "x.png"
    p.write_bytes(b"\x89PNG....")
    real_open = open

    def deny(path, *a, **k):
        if os.fsencode(path) == os.fsencode(p):
            raise PermissionError(13, "Permission denied")
        return real_open(path, *a, **k)

    monkeypatch.setattr("builtins.open", deny)
    with pytest.raises(ImageRejected, match="permission denied"):
        imageio.read_bytes(str(p))


def test_finalize_ids_splits_and_duplicates(tmp_path):
    data = png_bytes(np.full((16, 16, 3), 7, np.uint8))
    for rel in ("0_real/a.png", "0_real/b.png", "1_fake/c.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(data)  # three identical files, one labelled fake
    _write(tmp_path, "1_fake/d.png", 5)
    images, rejects = ingest.inspect_candidates(ingest.discover(tmp_path), 10**8, 8)
    images = ingest.finalize(images)
    assert images["id"].tolist() == [0, 1, 2, 3]
    assert images["duplicate_of"].tolist() == [-1, 0, 0, -1]
    assert images["split"].iloc[1] == images["split"].iloc[0] == images["split"].iloc[2]
    assert set(images["split"]) <= {"train", "val", "test"}
    summary = ingest.summarize(images, rejects)
    assert summary["duplicates"] == 2 and summary["duplicate_label_conflicts"] == 1


def test_hash_split_is_deterministic_and_roughly_70_10_20():
    rng = np.random.default_rng(0)
    shas = ["".join(rng.choice(list("0123456789abcdef"), 32)) for _ in range(3000)]
    splits = pd.Series([ingest.hash_split(s) for s in shas]).value_counts(normalize=True)
    assert abs(splits["train"] - 0.7) < 0.04 and abs(splits["test"] - 0.2) < 0.04
    assert [ingest.hash_split(s) for s in shas[:50]] == [ingest.hash_split(s) for s in shas[:50]]
