"""Safe image reading: bytes -> RGB uint8 array, or ImageRejected with a reason a person can act on;
and the resize/crop/normalise preprocessing shared by training, the pipeline and the explorer."""

from __future__ import annotations

import hashlib
import io
import os
import re
import stat
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_SUFFIXES = {
    ".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm",
    ".pgm", ".pbm",
}  # fmt: skip


class ImageRejected(Exception):
    """The file cannot be used as an image; ``reason`` says why."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class ImageInfo:
    format: str
    mode: str  # the file's own mode, before conversion to RGB
    width: int  # after EXIF orientation
    height: int


# An image stored inside a Parquet shard is named by the shard's path, a NUL byte, its row number
# (zero-padded, so that byte order is row order), a NUL byte and the column that holds it. No
# file-system path contains NUL, so the two kinds of name cannot be confused; everything that opens
# images goes through read_bytes.
MEMBER_SEP = b"\x00"


def member_ref(shard: str | bytes, row: int, column: str) -> bytes:
    return os.fsencode(shard) + MEMBER_SEP + b"%010d" % row + MEMBER_SEP + column.encode()


def split_ref(path: str | bytes) -> tuple[bytes, int | None, str | None]:
    """(file-system path, row, column) of an image inside a Parquet shard; (path, None, None) for
    a plain file."""
    path = os.fsencode(path)
    if MEMBER_SEP not in path:
        return path, None, None
    file, row, column = path.split(MEMBER_SEP, 2)
    return file, int(row), column.decode()


def display_ref(path: str | bytes) -> str:
    """A name for people: the path (undecodable bytes escaped), ``shard.parquet::ROW`` inside
    a shard."""
    file, row, _ = split_ref(path)
    name = file.decode("utf-8", errors="backslashreplace")
    return name if row is None else f"{name}::{row}"


def read_bytes(path: str | bytes) -> bytes:
    """Read a whole file (or one image stored in a Parquet shard), turning every failure into
    ImageRejected."""
    file, row, column = split_ref(path)
    if row is not None:
        from .shards import read_member

        return read_member(file, row, column)
    path = file
    try:
        st = os.stat(path)
    except FileNotFoundError as e:
        if os.path.islink(path):
            raise ImageRejected("broken symbolic link") from e
        raise ImageRejected("file vanished before it could be read") from e
    except OSError as e:
        raise ImageRejected(f"cannot stat file: {e.strerror}") from e
    if not stat.S_ISREG(st.st_mode):
        raise ImageRejected("not a regular file")
    if st.st_size == 0:
        raise ImageRejected("empty file (0 bytes)")
    try:
        with open(path, "rb") as f:
            return f.read()
    except PermissionError as e:
        raise ImageRejected("permission denied: make the file readable") from e
    except OSError as e:
        raise ImageRejected(f"cannot read file: {e.strerror or e}") from e


def content_hash(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB, without clipping 16-bit data or mishandling transparency."""
    mode = im.mode
    if mode == "RGB":
        return im
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        # PIL's convert("L") clips 16-bit values at 255; rescale the real range instead.
        arr = np.asarray(im, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        if mode == "F":
            top = max(float(arr.max(initial=1.0)), 1e-12)
        grey = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(np.stack([grey] * 3, axis=-1), "RGB")
    if mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        # Composite on white: transparent regions become a neutral, constant background.
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV


def _bomb_reason(detail, max_pixels: int) -> str:
    """ASAP's own limit in words (PIL's messages quote PIL's limit, not the one applied)."""
    m = re.search(r"\((\d+) pixels\)", str(detail))
    size = f"{int(m.group(1)):,} pixels" if m else str(detail)
    return (
        f"decompression bomb guard: {size} is more than ASAP's limit of {max_pixels:,} pixels "
        "(asap run --max-pixels raises it for images you trust)"
    )


def decode_image(
    data: bytes, *, max_pixels: int = 64_000_000, min_side: int = 8, draft: int | None = None
) -> tuple[np.ndarray, ImageInfo]:
    """Decode bytes into an (H, W, 3) uint8 array, EXIF orientation applied. ``draft``: the
    caller only needs the shorter side at least this long, so a JPEG may be decoded at 1/2, 1/4
    or 1/8 scale in the DCT domain (libjpeg's scaled decoding: 3.6x faster for a 256 px JPEG
    bound for a 64 px model, on a 2-core AMD EPYC); the guards still apply to the full size."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            im = Image.open(io.BytesIO(data))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise ImageRejected(_bomb_reason(e, max_pixels)) from e
        except UnidentifiedImageError as e:
            raise ImageRejected("not an image (format not recognised)") from e
        except Exception as e:  # PIL raises many types for malformed headers
            raise ImageRejected(f"unreadable image header: {type(e).__name__}: {e}") from e
        w, h = im.size
        if w * h > max_pixels:
            raise ImageRejected(_bomb_reason(f"{w}x{h} = {w * h:,} pixels", max_pixels))
        fmt, mode = im.format or "unknown", im.mode
        if draft and fmt == "JPEG" and min(w, h) >= 2 * draft and min(w, h) >= 2 * min_side:
            im.draft("RGB" if mode == "YCbCr" or mode == "RGB" else None, (draft, draft))
        try:
            im.load()
            im = ImageOps.exif_transpose(im)
            rgb = _to_rgb(im)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise ImageRejected(_bomb_reason(e, max_pixels)) from e
        except Exception as e:
            raise ImageRejected(f"truncated or corrupt image data: {type(e).__name__}: {e}") from e
    if min(rgb.size) < min_side:
        raise ImageRejected(f"too small: {rgb.size[0]}x{rgb.size[1]} (min side is {min_side})")
    arr = np.asarray(rgb, dtype=np.uint8)
    return arr, ImageInfo(fmt, mode, rgb.size[0], rgb.size[1])


def resize_center_crop(arr: np.ndarray, size: int) -> np.ndarray:
    """Resize the shorter side to ``size`` (bicubic) and centre-crop to (size, size, 3) uint8."""
    h, w = arr.shape[:2]
    if (h, w) != (size, size):
        scale = size / min(h, w)
        nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
        if (nh, nw) != (h, w):
            im = Image.fromarray(arr).resize((nw, nh), Image.Resampling.BICUBIC)
            arr = np.asarray(im)
        top, left = (nh - size) // 2, (nw - size) // 2
        arr = arr[top : top + size, left : left + size]
    return np.ascontiguousarray(arr)


def normalize(batch_uint8: np.ndarray, mean, std):
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float32 torch tensor, normalised per channel."""
    import torch

    if not batch_uint8.flags.writeable:  # a cached, shared image: torch wants its own memory
        batch_uint8 = batch_uint8.copy()
    x = torch.from_numpy(batch_uint8).permute(0, 3, 1, 2).float().div_(255.0)
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (x - m) / s


def load_for_model(path: str | bytes, size: int, **limits) -> np.ndarray:
    """Read, decode and resize one file: (size, size, 3) uint8. Every stage that feeds the model
    (training, encode, patterns, the what-if view) reads images through this function."""
    arr, _ = decode_image(read_bytes(path), draft=size, **limits)
    return resize_center_crop(arr, size)
