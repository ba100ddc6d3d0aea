"""Miniature copies of public benchmark layouts, generated for the ingest tests: tiny random PNGs
named and arranged as the real data sets ship them."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image


class Pngs:
    """Distinct small PNGs (each seed its own content, so no accidental duplicates)."""

    def __init__(self, start: int = 0):
        self.k = start

    def __call__(self, size: int = 24) -> bytes:
        self.k += 1
        arr = np.random.default_rng(self.k).integers(0, 255, (size, size, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="PNG")
        return buf.getvalue()

    def write(self, path: Path) -> bytes:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = self()
        path.write_bytes(data)
        return data


def diffusion_forensics(root: Path, png: Pngs, per: int = 2) -> Path:
    """images/{train,val,test}/<domain>/{real,adm,ddpm,sdv1}/ (DIRE's DiffusionForensics)."""
    for split in ("train", "val", "test"):
        for dom in ("lsun_bedroom", "imagenet"):
            for g in ("real", "adm", "ddpm", "sdv1"):
                for i in range(per):
                    png.write(root / "images" / split / dom / g / f"{i:05d}.png")
    return root


ARTIFACT_SUBSETS = (  # folder, category, target (0 = real, others = kinds of fakes)
    ("coco", "coco", 0),
    ("afhq", "afhq", 0),
    ("stylegan2", "stylegan2", 1),
    ("big_gan", "big_gan", 2),
    ("taming_transformer", "taming_transformer", 3),
)


def artifact(root: Path, png: Pngs, per: int = 3, relative_to_root: bool = False) -> Path:
    """<subset>/metadata.csv with image_path,target,category (ArtiFact)."""
    for folder, category, target in ARTIFACT_SUBSETS:
        rows = []
        for i in range(per):
            rel = Path("images") / f"img{i}.png"
            png.write(root / folder / rel)
            rows.append(
                (str(Path(folder) / rel) if relative_to_root else str(rel), target, category)
            )
        pd.DataFrame(rows, columns=["image_path", "target", "category"]).to_csv(
            root / folder / "metadata.csv", index=False
        )
    return root


def community_forensics(root: Path, png: Pngs, per: int = 7) -> dict:
    """Parquet shards with image_name, format, image_data (bytes), model_name, label; small row
    groups; one garbage cell and one null cell per shard. Returns {(shard, row): bytes}."""
    root.mkdir(parents=True, exist_ok=True)
    stored = {}
    for split in ("train", "test"):
        rows = []
        for i in range(per):
            label = i % 2
            model = "coco" if label == 0 else ("dalle3" if i % 3 == 0 else "sd15")
            rows.append(
                dict(
                    image_name=f"{split}_{i}.png",
                    format="PNG",
                    image_data=png(),
                    model_name=model,
                    label=label,
                )
            )
        rows.append(
            dict(
                image_name="bad.png",
                format="PNG",
                image_data=b"not an image",
                model_name="sd15",
                label=1,
            )
        )
        rows.append(
            dict(image_name="null.png", format="PNG", image_data=None, model_name="sd15", label=1)
        )
        shard = root / f"{split}-00000-of-00001.parquet"
        pq.write_table(pa.Table.from_pylist(rows), shard, row_group_size=3)
        for i, r in enumerate(rows):
            stored[(os.fsencode(shard), i)] = r["image_data"]
    return stored


def huggingface(root: Path, png: Pngs, per: int = 6) -> Path:
    """data/{train,validation,test}-00000-of-00001.parquet with an image struct {bytes, path}, a
    text label and a model column (OpenFake-style exports)."""
    (root / "data").mkdir(parents=True, exist_ok=True)
    for split in ("train", "validation", "test"):
        rows = []
        for i in range(per):
            label = ("real", "fake")[i % 2]
            rows.append(
                dict(
                    image=dict(bytes=png(), path=f"{i}.png"),
                    label=label,
                    model="laion" if label == "real" else "flux.1-dev",
                )
            )
        pq.write_table(
            pa.Table.from_pylist(rows),
            root / "data" / f"{split}-00000-of-00001.parquet",
            row_group_size=4,
        )
    return root


def genimage_train_val(root: Path, png: Pngs, per: int = 3) -> Path:
    """<generator>/{train,val}/{nature,ai}/ without a test split (GenImage)."""
    for g in ("sdv4", "midjourney"):
        for split in ("train", "val"):
            for lab in ("nature", "ai"):
                for i in range(per):
                    png.write(root / g / split / lab / f"{i}.png")
    return root
