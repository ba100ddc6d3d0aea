"""Batches of images for the model: read on the host, decoded by PIL on the CPU or, for plain JPEGs
bound for a GPU, by nvJPEG on the GPU itself (issue 10: on one H100 a decoding thread managed about
600 img/s while ViT-B-32 with its maps computes several thousand). Every stage that feeds the
model a batch (encode, the frozen tower's embedding pass) reads it through ``BatchReader``.

Two steps, so that the host part can run on a prefetch thread while the model computes:

- ``read_host(paths)``: reads each file's bytes (``imageio.read_bytes``: its guards and messages)
  and either keeps a plain JPEG's bytes for the device or decodes the image with PIL
  (``imageio.decode_image``: every guard of ingest, EXIF orientation, draft scaling);
- ``to_device(host)``: nvJPEG for the kept JPEGs (one batched call), the bicubic resize and centre
  crop there (``resize_center_crop_torch``, PIL's filter), then the normalisation, on the device.

Only JPEGs whose header leaves no doubt go to nvJPEG: baseline or extended Huffman coding, 8 bits,
one or three components without an Adobe colour transform marker, no EXIF orientation other than
1, within the pixel guards, ending in an EOI marker (a truncated file is decoded by PIL, which
rejects it). Everything else, and any batch nvJPEG refuses, is decoded by PIL, image by image, so a
file that changed since ingest is still rejected with PIL's reason instead of failing the task.
``decode="nvjpeg"`` (``asap run --decode nvjpeg``) turns the GPU route on; ``pil``, the default,
decodes every image with PIL, and so does ``nvjpeg`` on a CPU device. The default stays PIL until
the guard below (GUARD_STREAM) has been checked on a GPU (``benchmarks/decode.py`` prints the
check): the one GPU session that measured this route ran without it.

The two decoders differ by a grey level here and there (nvJPEG's inverse DCT is not libjpeg's):
``benchmarks/gpu.sh`` measures the pixels and the maps of both on the same images."""

from __future__ import annotations

import contextlib
import struct
import threading
import warnings
from dataclasses import dataclass, field
from functools import cache

import numpy as np
import torch

from .imageio import ImageRejected, decode_image, read_bytes, resize_center_crop

DECODERS = ("pil", "nvjpeg")
# nvJPEG's hardware engine writes its outputs before the work already queued on the stream it is
# given has run (pytorch/vision#9606, fixed upstream after the torchvision 0.26 measured here): on
# the caller's stream, its outputs can take memory that queued kernels are still reading and
# corrupt them. ASAP decodes on a stream of its own, whose memory pool no model kernel shares, and
# marks the outputs as used by the model's stream. ``False`` only for benchmarks/decode.py's check.
GUARD_STREAM = True
_LOCAL = threading.local()


@cache
def _nvjpeg_works(device: str) -> bool:
    """Whether torchvision's nvJPEG decoder runs on ``device`` (tried once per process on a tiny
    JPEG made here)."""
    try:
        import io

        from PIL import Image

        buf = io.BytesIO()
        Image.new("RGB", (16, 16), (10, 200, 30)).save(buf, "JPEG")
        out = decode_on_device([buf.getvalue()], device)  # guarded: the other thread may compute
        return out[0].shape == (3, 16, 16)
    except Exception:
        return False


def use_nvjpeg(decode: str, device: str) -> bool:
    if decode not in DECODERS:
        raise ValueError(f"unknown decoder {decode!r}; choose one of {', '.join(DECODERS)}")
    return decode == "nvjpeg" and torch.device(device).type == "cuda" and _nvjpeg_works(device)


def decode_on_device(datas: list[bytes], device: str) -> list[torch.Tensor]:
    """JPEG bytes -> (3, H, W) uint8 tensors on ``device`` (torchvision's decoder: nvJPEG on a
    GPU), one batched call; on a GPU on this thread's own stream (GUARD_STREAM), the outputs
    marked as used by the caller's stream. Raises RuntimeError when any image fails."""
    from torchvision.io import ImageReadMode, decode_jpeg

    tensors = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]
    guard = torch.device(device).type == "cuda" and GUARD_STREAM
    with warnings.catch_warnings(), contextlib.ExitStack() as stack:
        warnings.simplefilter("ignore")  # torchvision 0.29 deprecates its decoders
        if guard:
            side = _decode_stream(device)
            stack.enter_context(torch.cuda.stream(side))
        decoded = decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device)
    if guard:
        current = torch.cuda.current_stream(device)
        current.wait_stream(side)
        for t in decoded:  # not reused by the decoder until the caller's reads are done
            t.record_stream(current)
    return decoded


def _decode_stream(device: str):
    """This thread's own CUDA stream for nvJPEG on ``device`` (see GUARD_STREAM)."""
    streams = _LOCAL.__dict__.setdefault("streams", {})
    if device not in streams:
        streams[device] = torch.cuda.Stream(device=device)
    return streams[device]


_SOF = {0xC0: "baseline", 0xC1: "extended", 0xC2: "progressive", 0xC3: "lossless"}
_NO_LENGTH = {0x01, *range(0xD0, 0xD8)}  # TEM and RSTn carry no length field


def _exif_orientation(seg: bytes) -> int:
    """The Orientation tag (0x0112) of an APP1 Exif segment's first IFD; 1 when absent."""
    tiff = seg[6:]
    if len(tiff) < 8 or tiff[:2] not in (b"II", b"MM"):
        return 0  # unreadable: not plain
    end = "<" if tiff[:2] == b"II" else ">"
    (ifd,) = struct.unpack(end + "I", tiff[4:8])
    if ifd + 2 > len(tiff):
        return 0
    (count,) = struct.unpack(end + "H", tiff[ifd : ifd + 2])
    for k in range(count):
        e = ifd + 2 + 12 * k
        if e + 12 > len(tiff):
            return 0
        tag, typ, _n = struct.unpack(end + "HHI", tiff[e : e + 8])
        if tag == 0x0112:
            return struct.unpack(end + "H", tiff[e + 8 : e + 10])[0] if typ == 3 else 0
    return 1


def plain_jpeg(data: bytes, max_pixels: int = 64_000_000, min_side: int = 8) -> bool:
    """True when nvJPEG may decode ``data`` exactly as PIL would read it (see the module's doc);
    False whenever the header says otherwise or cannot be read."""
    if len(data) < 4 or data[:3] != b"\xff\xd8\xff" or data.rstrip(b"\x00")[-2:] != b"\xff\xd9":
        return False
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return False
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in _NO_LENGTH:
            i += 2
            continue
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        seg = data[i + 4 : i + 2 + length]
        if marker == 0xE1 and seg[:6] == b"Exif\x00\x00" and _exif_orientation(seg) != 1:
            return False
        if marker == 0xEE and seg[:5] == b"Adobe":  # RGB or CMYK stored without YCbCr
            return False
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if marker not in (0xC0, 0xC1) or len(seg) < 6:
                return False
            bits, h, w, comps = struct.unpack(">BHHB", seg[:6])
            return bits == 8 and comps in (1, 3) and w * h <= max_pixels and min(w, h) >= min_side
        if marker == 0xDA:  # scan before any frame header
            return False
        i += 2 + length
    return False


@dataclass
class HostBatch:
    """One batch after the host step: images decoded by PIL, JPEG bytes for the device, and the
    rejected images' (index, reason)."""

    n: int
    arrays: list[tuple[int, np.ndarray]] = field(default_factory=list)
    jpegs: list[tuple[int, bytes]] = field(default_factory=list)
    fails: list[tuple[int, str]] = field(default_factory=list)


def resize_center_crop_torch(x: torch.Tensor, size: int) -> torch.Tensor:
    """(B, C, H, W) uint8 -> (B, C, size, size) float32 holding whole grey levels: the shorter side
    resized to ``size`` with PIL's bicubic filter (torch's antialiased bicubic is PIL's), rounded
    to uint8 levels as PIL returns them, and centre-cropped as ``imageio.resize_center_crop``."""
    h, w = x.shape[-2:]
    x = x.float()
    if (h, w) != (size, size):
        scale = size / min(h, w)
        nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
        if (nh, nw) != (h, w):
            x = torch.nn.functional.interpolate(
                x, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False
            )
            x = x.round_().clamp_(0, 255)
        top, left = (nh - size) // 2, (nw - size) // 2
        x = x[..., top : top + size, left : left + size]
    return x


class BatchReader:
    """Reads batches of ``paths`` for a model of input ``size`` on ``device``; see the module."""

    def __init__(self, size: int, mean, std, device: str, *, limits: dict | None = None,
                 decode: str = "pil"):  # fmt: skip
        self.size, self.device, self.limits = size, device, dict(limits or {})
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self.nvjpeg = use_nvjpeg(decode, device)

    def _decode_host(self, i: int, data: bytes, out: HostBatch) -> None:
        try:
            arr, _ = decode_image(data, draft=self.size, **self.limits)
            out.arrays.append((i, resize_center_crop(arr, self.size)))
        except ImageRejected as e:  # changed on disk since ingest
            out.fails.append((i, e.reason))

    def read_host(self, paths: list[bytes]) -> HostBatch:
        out = HostBatch(len(paths))
        guards = {k: self.limits[k] for k in ("max_pixels", "min_side") if k in self.limits}
        for i, p in enumerate(paths):
            try:
                data = read_bytes(p)
            except ImageRejected as e:
                out.fails.append((i, e.reason))
                continue
            if self.nvjpeg and plain_jpeg(data, **guards):
                out.jpegs.append((i, data))
            else:
                self._decode_host(i, data, out)
        return out

    def _nvjpeg(self, host: HostBatch) -> dict[int, torch.Tensor]:
        try:
            decoded = decode_on_device([d for _, d in host.jpegs], self.device)
        except RuntimeError:  # one bad file fails the batched call: PIL decodes them one by one
            for i, d in host.jpegs:
                self._decode_host(i, d, host)
            return {}
        by_shape: dict[tuple, list[int]] = {}
        for k, img in enumerate(decoded):
            by_shape.setdefault(tuple(img.shape), []).append(k)
        done = {}
        for ks in by_shape.values():  # one resize per distinct size
            resized = resize_center_crop_torch(torch.stack([decoded[k] for k in ks]), self.size)
            for k, r in zip(ks, resized):
                done[host.jpegs[k][0]] = r
        return done

    def to_device(self, host: HostBatch) -> tuple[torch.Tensor | None, list[int]]:
        """(normalised pixels (B, 3, size, size) on the device, each row's index in the batch's
        paths) for the images that decoded, in path order; ``host.fails`` gains the rest."""
        on_device = self._nvjpeg(host) if host.jpegs else {}
        host.arrays.sort(key=lambda t: t[0])
        host.fails.sort(key=lambda t: t[0])
        idx_host = [i for i, _ in host.arrays]
        parts, order = [], []
        if host.arrays:
            u8 = torch.from_numpy(np.stack([a for _, a in host.arrays]))
            parts.append(u8.to(self.device).permute(0, 3, 1, 2).float())
            order += idx_host
        if on_device:
            keys = sorted(on_device)
            parts.append(torch.stack([on_device[k] for k in keys]))
            order += keys
        if not parts:
            return None, []
        x = torch.cat(parts) if len(parts) > 1 else parts[0]
        perm = np.argsort(order, kind="stable")
        if len(parts) > 1:
            x = x[torch.from_numpy(perm).to(x.device)]
        m, s = self.mean.to(x.device), self.std.to(x.device)
        return (x.div_(255.0) - m) / s, [order[j] for j in perm]

    def read(self, paths: list[bytes]) -> tuple[torch.Tensor | None, list[int], list]:
        """Both steps at once: (pixels, kept indices, [(index, reason)])."""
        host = self.read_host(paths)
        x, kept = self.to_device(host)
        return x, kept, host.fails
