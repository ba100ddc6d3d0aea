"""Server-side rendering for the explorer: safe image access by id (never by a path the client
sends), cached thumbnails of the model's view of each image, relevance heat-map overlays, and the
cell-glyph raster drawn over the overview. Pure numpy + PIL + matplotlib colour maps; no torch.

Safety: the browser only ever names an image by its integer id. The file is looked up in the run's
images table and opened only if its real path (symlinks resolved) lies under one of the run's image
roots (the run's source folder, or the folder of its manifest, plus roots given explicitly)."""

from __future__ import annotations

import io
import os
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from pipeline.imageio import (
    ImageRejected,
    decode_image,
    member_ref,
    read_bytes,
    resize_center_crop,
    split_ref,
)


class ImageAccessError(PermissionError):
    """An image lies outside the run's image roots, or its id is unknown."""


def image_roots(source: str | None, extra: tuple[str, ...] = ()) -> tuple[str, ...]:
    """Real paths of the folders the app may read images from: the run's ``source`` folder (a
    manifest's folder) and ``extra``."""
    roots = []
    if source:
        src = Path(source)
        roots.append(src if src.is_dir() else src.parent)  # a manifest: its folder
    roots += [Path(r) for r in extra]
    return tuple(os.path.realpath(r) for r in roots)


def check_inside(path: bytes | str, roots: tuple[str, ...]) -> bytes:
    """The real path of ``path`` if it lies under one of ``roots``; else ImageAccessError."""
    real = os.path.realpath(os.fsencode(path))
    for root in roots:
        r = os.fsencode(root)
        if real == r or real.startswith(r.rstrip(b"/") + b"/"):
            return real
    shown = os.fsdecode(path)
    raise ImageAccessError(
        f"{shown!r} lies outside the run's image roots {list(roots)}; the explorer reads only "
        "images under them (pass --image-root DIR to `asap serve` to allow another folder)"
    )


class ImageSource:
    """Opens a run's images by id, inside its roots only."""

    def __init__(self, images, source: str | None, extra_roots: tuple[str, ...] = ()):
        order = np.argsort(images["id"].to_numpy(), kind="stable")
        self._ids = images["id"].to_numpy()[order]
        self._paths = images["path_bytes"].iloc[order].reset_index(drop=True)  # may be Arrow
        self.roots = image_roots(source, extra_roots)

    def path(self, image_id: int) -> bytes:
        try:
            key = int(image_id)
        except (ValueError, TypeError) as e:
            raise ImageAccessError(f"no image with id {image_id!r} in this run") from e
        pos = int(np.searchsorted(self._ids, key))
        if pos >= len(self._ids) or self._ids[pos] != key:
            raise ImageAccessError(f"no image with id {image_id!r} in this run")
        file, row, column = split_ref(bytes(self._paths.iloc[pos]))
        real = check_inside(file, self.roots)
        # an image inside a Parquet shard: the shard must lie inside the roots
        return real if row is None else member_ref(real, row, column)

    def thumbnail(self, image_id: int, size: int = 128) -> np.ndarray:
        """(size, size, 3) uint8: the centre crop the model saw, or a grey tile with a cross when
        the file can no longer be read (moved or deleted since the run)."""
        return _thumbnail(self.path(image_id), size)


def _nbytes(value) -> int:
    return value.nbytes if isinstance(value, np.ndarray) else len(value)


class ByteBoundedCache:
    """A least-recently-used cache of numpy arrays or strings bounded by their total bytes (a
    thumbnail cache bounded by entries grows with the thumbnails' size). Thread-safe."""

    def __init__(self, max_bytes: int):
        import threading
        from collections import OrderedDict

        self.max_bytes, self.bytes = int(max_bytes), 0
        self._items: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key):
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key, value) -> None:
        with self._lock:
            if key in self._items or _nbytes(value) > self.max_bytes:
                return
            self._items[key] = value
            self.bytes += _nbytes(value)
            while self.bytes > self.max_bytes:
                _, old = self._items.popitem(last=False)
                self.bytes -= _nbytes(old)

    def __len__(self) -> int:
        return len(self._items)


THUMB_CACHE_BYTES = 256 * 2**20  # every session's thumbnails together
_THUMBS = ByteBoundedCache(THUMB_CACHE_BYTES)


def _thumbnail(real_path: bytes, size: int) -> np.ndarray:
    cached = _THUMBS.get((real_path, size))
    if cached is not None:
        return cached
    try:
        arr, _ = decode_image(read_bytes(real_path))
        out = resize_center_crop(arr, size)
    except ImageRejected:  # not cached: the file may come back
        tile = Image.new("RGB", (size, size), (200, 200, 200))
        draw = ImageDraw.Draw(tile)
        draw.line((0, 0, size, size), fill=(120, 120, 120), width=2)
        draw.line((0, size, size, 0), fill=(120, 120, 120), width=2)
        return np.asarray(tile)
    out.setflags(write=False)  # shared by every session through the cache
    _THUMBS.put((real_path, size), out)
    return out


def heat_rgba(heat: np.ndarray, size: int, cmap: str = "inferno", vmax: float | None = None):
    """A (gh, gw) relevance map -> (size, size, 4) float in [0, 1], upsampled bilinearly; alpha
    grows with relevance so that irrelevant areas leave the image visible."""
    heat = np.nan_to_num(np.asarray(heat, np.float32), nan=0.0)
    top = float(vmax if vmax is not None else heat.max(initial=0.0))
    norm = np.clip(heat / top, 0, 1) if top > 0 else np.zeros_like(heat)
    up = np.asarray(
        Image.fromarray((norm * 255).astype(np.uint8)).resize((size, size), Image.BILINEAR)
    )
    rgba = _lut(cmap)[up]  # what colormaps[cmap](up / 255) gives, without building a map a call
    rgba[..., 3] = np.sqrt(up / np.float32(255))
    return rgba


@lru_cache(maxsize=32)
def _lut(cmap: str) -> np.ndarray:
    from matplotlib import colormaps

    lut = colormaps[cmap](np.arange(256))  # matplotlib's 256 colours, float in [0, 1]
    lut.setflags(write=False)
    return lut


def overlay(rgb: np.ndarray, heat: np.ndarray | None, opacity: float = 0.6, cmap="inferno",
            vmax: float | None = None):  # fmt: skip
    """Blend a relevance map over an (s, s, 3) uint8 image -> (s, s, 3) uint8; the colour scale
    tops out at ``vmax`` (None: the map's own maximum)."""
    if heat is None or opacity <= 0:
        return np.asarray(rgb)
    rgba = heat_rgba(heat, rgb.shape[0], cmap, vmax)
    a = (rgba[..., 3:] * opacity).astype(np.float32)
    out = rgb.astype(np.float32) / 255.0 * (1 - a) + rgba[..., :3] * a
    return (np.clip(out, 0, 1) * 255).astype(np.uint8)


def colour_bar(cmap: str, low: str, high: str, width: int = 160) -> str:
    """An HTML colour bar for a heat-map colour map, labelled at both ends."""
    from matplotlib import colormaps

    stops = ", ".join(
        "#{:02x}{:02x}{:02x}".format(*(int(255 * c) for c in colormaps[cmap](v)[:3]))
        for v in np.linspace(0, 1, 9)
    )
    return (
        f"<span class='asap-colourbar' style='font-size:11px'>{low} <span style='display:"
        f"inline-block;width:{width}px;height:10px;vertical-align:middle;background:"
        f"linear-gradient(90deg,{stops})'></span> {high}</span>"
    )


def to_png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _short(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e4 else str(n)


def glyph_raster(
    stats,
    thumbs: dict,
    patterns: np.ndarray,
    coherence: np.ndarray,
    width: int,
    height: int,
    cmap_p: str = "coolwarm",
) -> np.ndarray:
    """Draw one glyph per non-empty cell into a transparent (height, width, 4) uint8 raster whose
    extent is the stats' viewport (row 0 = top). What each mark encodes (README, "Cell glyphs"):

    - frame colour: the cell's mean p(fake) (blue = real, red = fake); frame width: error rate
    - left tile: the cell's representative image with its fake-logit heat map
    - right tile: the cell's mean relevance pattern, drawn more opaque the more coherent it is
      (mean cosine similarity of the members' maps to the mean), so "fakes sharing a pattern"
      shows as a red frame around a crisp, bright pattern
    - bottom bar: real (blue) : fake (red) share of the cell's images; bar length ~ log count,
      and the count itself printed after it
    """
    from matplotlib import colormaps

    ny, nx = stats.count.shape
    canvas = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    cw, ch = width / nx, height / ny
    tile = int(max(8, min(cw * 0.3, ch * 0.45)))
    pcol = colormaps[cmap_p]
    max_count = max(int(stats.count.max(initial=0)), 1)
    for cy in range(ny):
        for cx in range(nx):
            n = int(stats.count[cy, cx])
            if n == 0:
                continue
            c = cy * nx + cx
            # screen row 0 is the top; cell row 0 is the bottom (smallest y)
            left = cx * cw + (cw - 2 * tile - 4) / 2
            top = (ny - 1 - cy) * ch + (ch - tile - 10) / 2
            frame = tuple(int(255 * v) for v in pcol(float(stats.mean_p_fake[cy, cx]))[:3])
            err = float(stats.error_rate[cy, cx])
            fw = 1 + int(round(4 * err))
            box = (left - 2, top - 2, left + 2 * tile + 6, top + tile + 10)
            draw.rectangle(box, fill=(255, 255, 255, 170), outline=(*frame, 255), width=fw)
            rep = thumbs.get(c)
            if rep is not None:
                canvas.paste(Image.fromarray(rep).resize((tile, tile)), (int(left), int(top)))
            pat = heat_rgba(patterns[c], tile, "inferno")
            agree = float(np.nan_to_num(coherence[c]))  # NaN: one image, or maps all zero
            pat[..., 3] = np.clip(0.25 + 0.75 * max(agree, 0.0), 0, 1)
            pim = Image.fromarray((pat * 255).astype(np.uint8), "RGBA")
            canvas.alpha_composite(pim, (int(left + tile + 4), int(top)))
            # real:fake bar, length ~ log count
            share = float(stats.n_fake[cy, cx]) / n
            bar_w = (2 * tile + 4) * (0.25 + 0.75 * np.log1p(n) / np.log1p(max_count))
            y0 = top + tile + 3
            split = left + bar_w * (1 - share)
            draw.rectangle((left, y0, split, y0 + 4), fill=(59, 76, 192, 255))
            draw.rectangle((split, y0, left + bar_w, y0 + 4), fill=(180, 4, 38, 255))
            draw.text((left + bar_w + 2, y0 - 3), _short(n), fill=(20, 20, 20, 255))
    return np.asarray(canvas)


HIST_REAL, HIST_FAKE = (59, 76, 192), (180, 4, 38)


def histogram_grid(panels: list[tuple[str, np.ndarray, np.ndarray]], cols: int = 4,
                   cell: tuple[int, int] = (140, 84)) -> np.ndarray:  # fmt: skip
    """Small multiples as one RGB image: per panel (title, real heights, fake heights) on the
    same bins, the two classes' bars blended over white, each panel scaled to its own maximum.
    One image instead of a plot per panel keeps the page light (16 Bokeh plots took seconds
    to rebuild on every filter change)."""
    from PIL import ImageFont

    w, h = cell
    title_h, pad = 14, 4
    rows = -(-len(panels) // cols)
    out = np.full((rows * h, cols * w, 3), 255, np.uint8)
    for i, (_, real, fake) in enumerate(panels):
        top, left = (i // cols) * h + title_h, (i % cols) * w + pad
        pw, ph = w - 2 * pad, h - title_h - pad
        peak = max(float(np.max(real, initial=0)), float(np.max(fake, initial=0)))
        if peak <= 0:
            continue
        n = len(real)
        x = np.linspace(0, pw, n + 1).astype(int)
        for heights, colour in ((real, HIST_REAL), (fake, HIST_FAKE)):
            for b in range(n):
                bar = int(round(ph * heights[b] / peak))
                if bar > 0:
                    region = out[top + ph - bar : top + ph, left + x[b] : left + x[b + 1]]
                    region[:] = (0.5 * region + 0.5 * np.array(colour)).astype(np.uint8)
        out[top + ph, left : left + pw] = 120  # baseline
    im = Image.fromarray(out)
    draw, font = ImageDraw.Draw(im), ImageFont.load_default()
    for i, (title, _, _) in enumerate(panels):
        draw.text(((i % cols) * w + pad, (i // cols) * h + 1), title, fill=(30, 30, 30), font=font)
    return np.asarray(im)
