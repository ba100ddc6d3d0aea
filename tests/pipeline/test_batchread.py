"""The batch reader every model stage uses (pipeline.batchread): on a CPU it gives exactly what the
image-by-image reader gave; the nvJPEG route's parts (header triage, PIL's resize on tensors, the
batch and its fallback) are run here with torchvision's CPU decoder in nvJPEG's place."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline import batchread
from pipeline.batchread import BatchReader, plain_jpeg, resize_center_crop_torch
from pipeline.imageio import load_for_model, normalize, resize_center_crop

MEAN, STD = (0.48, 0.46, 0.41), (0.27, 0.26, 0.28)


def _photo(seed: int, h: int, w: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(20, 235, size=(5, 5, 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC))
    return np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)


def _jpeg(arr: np.ndarray, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=92, **kw)
    return buf.getvalue()


def test_plain_jpeg_sends_only_unambiguous_jpegs_to_the_device():
    a = _photo(0, 90, 120)
    exif = Image.Exif()
    exif[0x0112] = 1
    upright = exif.tobytes()
    exif[0x0112] = 6
    rotated = exif.tobytes()
    cmyk = io.BytesIO()
    Image.fromarray(a).convert("CMYK").save(cmyk, "JPEG")
    png = io.BytesIO()
    Image.fromarray(a).save(png, "PNG")
    assert plain_jpeg(_jpeg(a))
    assert plain_jpeg(_jpeg(a[..., 0]))  # grey
    assert plain_jpeg(_jpeg(a, exif=upright))
    assert not plain_jpeg(_jpeg(a, exif=rotated))  # PIL applies the orientation, nvJPEG would not
    assert not plain_jpeg(_jpeg(a, progressive=True))
    assert not plain_jpeg(cmyk.getvalue())
    assert not plain_jpeg(png.getvalue())
    assert not plain_jpeg(_jpeg(a)[:-200])  # truncated: no EOI marker
    assert not plain_jpeg(_jpeg(a), max_pixels=90 * 120 - 1)  # the guards stay PIL's to report
    assert not plain_jpeg(_jpeg(a), min_side=91)
    assert not plain_jpeg(b"")


@pytest.mark.parametrize("shape,size", [((256, 256), 224), ((100, 150), 64), ((300, 200), 224),
                                        ((40, 50), 64), ((64, 64), 64)])  # fmt: skip
def test_tensor_resize_is_pils_bicubic_resize_and_crop(shape, size):
    """Down- and upscaling, portrait and landscape: within a grey level or two of PIL, 0.25 on
    average (both round to whole levels; PIL's filter runs in fixed point)."""
    arr = _photo(1, *shape)
    ref = resize_center_crop(arr, size).astype(np.float64)
    got = resize_center_crop_torch(torch.from_numpy(arr).permute(2, 0, 1)[None], size)
    got = got[0].permute(1, 2, 0).numpy()
    assert got.shape == ref.shape
    assert np.array_equal(got, np.round(got))
    diff = np.abs(got - ref)
    assert diff.mean() <= 0.25 and diff.max() <= 6


def _files(tmp_path, n=12):
    paths = []
    for i in range(n):
        p = tmp_path / f"img_{i:02d}.jpg"
        p.write_bytes(_jpeg(_photo(10 + i, 96 + 8 * (i % 3), 128)))
        paths.append(os.fsencode(p))
    good = (tmp_path / "img_00.jpg").read_bytes()
    bad = tmp_path / "corrupt.jpg"  # a plain header and an EOI marker around a broken scan
    bad.write_bytes(good[:300] + b"\x00" * 400 + good[-2:])
    png = tmp_path / "other.png"
    Image.fromarray(_photo(99, 80, 80)).save(png)
    paths[3:3] = [os.fsencode(bad)]
    paths[7:7] = [os.fsencode(png), os.fsencode(tmp_path / "vanished.jpg")]
    return paths


def test_cpu_reader_equals_the_image_by_image_reader_bit_for_bit(tmp_path):
    paths = _files(tmp_path)
    x, kept, fails = BatchReader(64, MEAN, STD, "cpu", decode="nvjpeg").read(paths)
    assert [i for i, _ in fails] == [3, 8]  # the corrupt file and the vanished one
    assert "corrupt" in fails[0][1] and "vanished" in fails[1][1]
    assert kept == [i for i in range(len(paths)) if i not in (3, 8)]
    ref = normalize(np.stack([load_for_model(paths[i], 64) for i in kept]), MEAN, STD)
    assert torch.equal(x, ref)


@pytest.fixture
def device_decoder(monkeypatch):
    """The nvJPEG route with torchvision's CPU decoder standing in for nvJPEG."""
    monkeypatch.setattr(batchread, "use_nvjpeg", lambda decode, device: decode == "nvjpeg")


def test_device_route_matches_pil_and_keeps_the_order(tmp_path, device_decoder):
    paths = [p for p in _files(tmp_path) if b"corrupt" not in p]
    reader = BatchReader(64, MEAN, STD, "cpu", decode="nvjpeg")
    host = reader.read_host(paths)
    assert len(host.jpegs) == 12 and len(host.arrays) == 1  # the PNG went to PIL
    x, kept = reader.to_device(host)
    gone = next(i for i, p in enumerate(paths) if b"vanished" in p)
    png = next(i for i, p in enumerate(paths) if p.endswith(b".png"))
    assert kept == [i for i in range(len(paths)) if i != gone]
    assert [i for i, _ in host.fails] == [gone]
    ref, kept_ref, _ = BatchReader(64, MEAN, STD, "cpu", decode="pil").read(paths)
    assert kept_ref == kept
    levels = ((x - ref) * torch.tensor(STD).view(1, 3, 1, 1) * 255).abs()
    # PIL decodes these at half scale in the DCT domain (draft), the device route at full size
    assert levels.mean() < 1.0 and levels.amax(dim=(1, 2, 3)).max() <= 8
    png_row = kept.index(png)
    assert torch.equal(x[png_row], ref[png_row])  # decoded by PIL on both routes


def test_a_batch_the_device_decoder_refuses_falls_back_to_pil(tmp_path, device_decoder):
    """One corrupt JPEG fails the whole batched call; each image is then decoded by PIL, which
    rejects only the corrupt one, with its reason."""
    paths = _files(tmp_path)
    x, kept, fails = BatchReader(64, MEAN, STD, "cpu", decode="nvjpeg").read(paths)
    ref, kept_ref, fails_ref = BatchReader(64, MEAN, STD, "cpu", decode="pil").read(paths)
    assert kept == kept_ref and fails == fails_ref
    assert torch.equal(x, ref)


def test_unknown_decoder_is_refused():
    with pytest.raises(ValueError, match="unknown decoder"):
        BatchReader(64, MEAN, STD, "cpu", decode="gpu")
