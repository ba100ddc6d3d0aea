"""Ingest: find images and their labels in the standard benchmark layouts or a manifest, inspect
every file (hash, decode, size), and split them into an images table and a rejects table.

Layouts (folder names are matched case-insensitively):
- CNNDetection / UnivFD: ``<generator>/[<class>/]0_real|1_fake/...``
- GenImage: ``<generator>/[train|val]/nature|ai/...``
- ``real|fake`` folders anywhere in the path
- generator-named folders beside a real folder: ``real/``, ``stylegan/``, ``dalle/``, ...
- a CSV or Parquet manifest with columns ``path``, ``label`` (0/1 or real/fake) and optional
  ``generator`` and ``split``; relative paths are taken from the manifest's folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .imageio import IMAGE_SUFFIXES, ImageRejected, content_hash, decode_image, read_bytes
from .schema import IMAGE_COLUMNS, LABEL_FAKE, LABEL_REAL, REJECT_COLUMNS

REAL_DIRS = {"0_real", "real", "nature"}
FAKE_DIRS = {"1_fake", "fake", "ai"}
SPLIT_DIRS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}


@dataclass(frozen=True)
class Candidate:
    path: bytes  # file-system path, exact bytes
    label: int | None  # None: no label could be found
    generator: str
    source: str
    split: str | None  # from the layout, else None (assigned by content hash)


def display_path(path: bytes) -> str:
    return path.decode("utf-8", errors="backslashreplace")


def _walk_files(root: Path) -> list[bytes]:
    """All non-directory entries under root (symlinks included, not followed into directories)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(os.fsencode(root)):
        dirnames.sort()
        for name in sorted(filenames):
            if name.startswith(b"."):
                continue
            out.append(os.path.join(dirpath, name))
    return out


def _looks_like_image(path: bytes) -> bool:
    return os.path.splitext(path)[1].decode("ascii", "replace").lower() in IMAGE_SUFFIXES


def _label_of(name: str) -> int | None:
    low = name.lower()
    return LABEL_REAL if low in REAL_DIRS else LABEL_FAKE if low in FAKE_DIRS else None


def discover_folder(root: Path) -> list[Candidate]:
    """Label every image-named file under ``root`` from its folder names (see module doc)."""
    files = [p for p in _walk_files(root) if _looks_like_image(p)]
    rel = [os.path.relpath(p, os.fsencode(root)).split(os.sep.encode()) for p in files]
    dirs = [[d.decode("utf-8", "backslashreplace") for d in parts[:-1]] for parts in rel]

    parsed = []  # (label, prefix dirs before the label folder, split)
    for ds in dirs:
        split = next((SPLIT_DIRS[d.lower()] for d in ds if d.lower() in SPLIT_DIRS), None)
        keep = [d for d in ds if d.lower() not in SPLIT_DIRS]
        idx = max((i for i, d in enumerate(keep) if _label_of(d) is not None), default=None)
        if idx is None:
            parsed.append((None, keep, split))
        else:
            parsed.append((_label_of(keep[idx]), keep[:idx], split))

    # Generator-named folders beside a real folder: a top-level real folder, no fake folder
    # anywhere; every other top-level folder is then one generator's fakes.
    real_top = any(label == LABEL_REAL and not prefix for label, prefix, _ in parsed)
    if real_top and not any(label == LABEL_FAKE for label, _, _ in parsed):
        parsed = [
            (LABEL_FAKE, prefix[:1], s) if label is None and prefix else (label, prefix, s)
            for label, prefix, s in parsed
        ]

    # A folder shared by every labelled file (a lone "diffusion_datasets/") names the collection,
    # not a generator: descend past it, unless the next level holds both labels in one folder
    # (then it is a class level, as in CNNDetection's progan/airplane/{0_real,1_fake}).
    labelled = [(p[0], p[1]) for p in parsed if p[0] is not None]
    common = 0
    while labelled and all(len(p) > common + 1 for _, p in labelled):
        if len({p[common] for _, p in labelled}) > 1:
            break
        below: dict[str, set] = {}
        for label, p in labelled:
            below.setdefault(p[common + 1], set()).add(label)
        if any(len(v) > 1 for v in below.values()):
            break
        common += 1

    out = []
    for path, (label, prefix, split) in zip(files, parsed):
        source = prefix[common] if len(prefix) > common else ""
        if label == LABEL_FAKE:
            generator = source or "fake"
        else:
            generator = "real" if label == LABEL_REAL else ""
        out.append(Candidate(path, label, generator, source or generator, split))
    return out


def discover_manifest(manifest: Path) -> list[Candidate]:
    if manifest.suffix.lower() == ".parquet":
        df = pd.read_parquet(manifest)
    else:
        df = pd.read_csv(manifest)
    missing = {"path", "label"} - set(df.columns)
    if missing:
        raise ValueError(
            f"manifest {manifest} lacks columns {sorted(missing)}; it needs 'path' and 'label' "
            "(0/1 or real/fake), optionally 'generator' and 'split'"
        )
    base = os.fsencode(manifest.parent)
    out = []
    for i, row in enumerate(df.itertuples(index=False)):
        raw = str(row.label).strip().lower()
        if raw in ("0", "real", "0_real", "nature"):
            label = LABEL_REAL
        elif raw in ("1", "fake", "1_fake", "ai"):
            label = LABEL_FAKE
        else:
            raise ValueError(
                f"manifest {manifest} row {i}: label {row.label!r} is not 0/1/real/fake"
            )
        p = os.fsencode(str(row.path))
        p = p if os.path.isabs(p) else os.path.join(base, p)
        gen = getattr(row, "generator", None)
        gen = "real" if label == LABEL_REAL else (str(gen) if isinstance(gen, str) else "fake")
        split = getattr(row, "split", None)
        split = SPLIT_DIRS.get(str(split).lower()) if isinstance(split, str) else None
        out.append(Candidate(p, label, gen, gen, split))
    return out


def discover(source: str | os.PathLike) -> list[Candidate]:
    """Candidates from an image folder or a CSV/Parquet manifest."""
    src = Path(source)
    if not src.exists():
        raise FileNotFoundError(f"image source {src} does not exist: pass a folder or a manifest")
    if src.is_file():
        if src.suffix.lower() not in (".csv", ".parquet"):
            raise ValueError(f"{src} is a file but not a .csv or .parquet manifest")
        return discover_manifest(src)
    return discover_folder(src)


def hash_split(sha: str) -> str:
    """Deterministic 70/10/20 train/val/test split from the content hash (duplicates agree)."""
    bucket = int(sha[:8], 16) % 100
    return "train" if bucket < 70 else "val" if bucket < 80 else "test"


def inspect_candidates(cands: list[Candidate], max_pixels: int, min_side: int):
    """Hash and fully decode each file: (accepted rows DataFrame, rejects DataFrame)."""
    rows, rejects = [], []
    for c in cands:
        name = display_path(c.path)
        if c.label is None:
            rejects.append((name, c.path, "ingest", "no label: put it under 0_real/1_fake, "
                            "real/fake or nature/ai, or list it in a manifest"))  # fmt: skip
            continue
        try:
            data = read_bytes(c.path)
            _, info = decode_image(data, max_pixels=max_pixels, min_side=min_side)
        except ImageRejected as e:
            rejects.append((name, c.path, "ingest", e.reason))
            continue
        sha = content_hash(data)
        rows.append(
            dict(
                path=name, path_bytes=c.path, label=c.label, generator=c.generator,
                source=c.source, split=c.split or "", width=info.width, height=info.height,
                format=info.format, mode=info.mode, file_size=len(data), sha=sha,
            )
        )  # fmt: skip
    images = pd.DataFrame(
        rows, columns=[c for c in IMAGE_COLUMNS if c not in ("id", "duplicate_of")]
    )
    rej = pd.DataFrame(rejects, columns=list(REJECT_COLUMNS))
    return images, rej


def finalize(images: pd.DataFrame) -> pd.DataFrame:
    """Order by path, assign ids, fill splits, mark exact duplicates."""
    images = images.sort_values("path_bytes", kind="stable").reset_index(drop=True)
    images.insert(0, "id", np.arange(len(images), dtype=np.int64))
    has_split = images["split"] != ""
    explicit = set(images.loc[has_split, "split"])
    auto = images["sha"].map(hash_split)
    images["split"] = images["split"].where(has_split, auto)
    if explicit and "val" not in explicit:
        # Layout gave train/test but no val: hold out ~1/8 of train (by hash) for calibration.
        to_val = (images["split"] == "train") & (images["sha"].map(lambda s: int(s[8:12], 16) % 8)
                                                 == 0)  # fmt: skip
        images.loc[to_val, "split"] = "val"
    first = images.groupby("sha")["id"].transform("min")
    images["duplicate_of"] = np.where(first != images["id"], first, -1).astype(np.int64)
    # Duplicates must share their original's split so that no image leaks across splits.
    dup = images["duplicate_of"] >= 0
    images.loc[dup, "split"] = images["split"].to_numpy()[images.loc[dup, "duplicate_of"]]
    return images[list(IMAGE_COLUMNS)]


def summarize(images: pd.DataFrame, rejects: pd.DataFrame) -> dict:
    dups = images[images["duplicate_of"] >= 0]
    conflicts = int(
        (dups["label"].to_numpy() != images["label"].to_numpy()[dups["duplicate_of"]]).sum()
    )
    return {
        "images": len(images),
        "real": int((images["label"] == LABEL_REAL).sum()),
        "fake": int((images["label"] == LABEL_FAKE).sum()),
        "generators": images["generator"].value_counts().to_dict(),
        "splits": images["split"].value_counts().to_dict(),
        "duplicates": len(dups),
        "duplicate_label_conflicts": conflicts,
        "rejected": len(rejects),
        "reject_reasons": rejects["reason"].str.split(":").str[0].value_counts().to_dict(),
    }
