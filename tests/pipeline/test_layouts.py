"""Real data sets as their users have them: DiffusionForensics, ArtiFact, manifests with any column
names, Parquet shards with the images inside (Community Forensics, Hugging Face exports), GenImage
with only train/val; and `asap scan`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import ingest, shards
from pipeline.config import ColumnsConfig, RunConfig
from pipeline.imageio import ImageRejected, member_ref, read_bytes, split_ref
from pipeline.schema import LABEL_FAKE, LABEL_REAL
from tests.pipeline import layouts

REPO = Path(__file__).resolve().parents[2]


def _rel(root: Path, c) -> str:
    file, row, _ = split_ref(c.path)
    rel = os.path.relpath(file, os.fsencode(root)).decode()
    return rel if row is None else f"{rel}::{row}"


def test_diffusion_forensics_generators_domains_and_splits(tmp_path):
    root = layouts.diffusion_forensics(tmp_path / "df", layouts.Pngs())
    found = ingest.discover_source(root)
    assert any("DiffusionForensics" in name for name in found.layouts)
    seen = Counter()
    for c in found.candidates:
        parts = _rel(root, c).split("/")  # images/<split>/<domain>/<folder>/<file>
        split, domain, folder = parts[1], parts[2], parts[3]
        assert c.split == split
        assert c.source == domain  # reals and fakes keep their domain
        if folder == "real":
            assert (c.label, c.generator) == (LABEL_REAL, "real")
        else:
            assert (c.label, c.generator) == (LABEL_FAKE, folder)
        seen[c.generator] += 1
    assert seen == {"real": 12, "adm": 12, "ddpm": 12, "sdv1": 12}


def test_real_beside_generators_needs_no_fake_folder_there(tmp_path):
    """A folder with real/ and fake/ keeps its other sub-folders unlabelled (they are not fakes)."""
    png = layouts.Pngs()
    for rel in ("a/real/1.png", "a/fake/2.png", "a/notes/3.png", "b/real/4.png", "b/gan/5.png"):
        png.write(tmp_path / rel)
    got = {_rel(tmp_path, c): (c.label, c.generator) for c in ingest.discover(tmp_path)}
    assert got["a/notes/3.png"][0] is None
    assert got["b/gan/5.png"] == (LABEL_FAKE, "gan")
    assert got["a/fake/2.png"][0] == LABEL_FAKE


@pytest.mark.parametrize("relative_to_root", [False, True])
def test_artifact_metadata_per_folder(tmp_path, relative_to_root):
    root = layouts.artifact(
        tmp_path / "artifact", layouts.Pngs(), relative_to_root=relative_to_root
    )
    found = ingest.discover_source(root)
    assert any("ArtiFact" in name for name in found.layouts)
    assert len(found.candidates) == 3 * len(layouts.ARTIFACT_SUBSETS)
    by_folder = {folder: (cat, target) for folder, cat, target in layouts.ARTIFACT_SUBSETS}
    for c in found.candidates:
        assert os.path.isfile(c.path)
        folder = _rel(root, c).split("/")[0]
        category, target = by_folder[folder]
        if target == 0:  # reals keep their category as the source
            assert (c.label, c.generator, c.source) == (LABEL_REAL, "real", category)
        else:  # targets 1, 2, 3 are all fakes
            assert (c.label, c.generator) == (LABEL_FAKE, category)


def test_manifest_folder_is_not_used_when_folders_label_everything(tmp_path):
    """The demo ships a manifest.csv beside 0_real/1_fake folders: the folders decide."""
    png = layouts.Pngs()
    png.write(tmp_path / "gan" / "1_fake" / "a.png")
    png.write(tmp_path / "src" / "0_real" / "b.png")
    pd.DataFrame(
        {"path": ["gan/1_fake/a.png", "src/0_real/b.png"], "label": [0, 1], "generator": ["x", "y"]}
    ).to_csv(tmp_path / "manifest.csv", index=False)
    got = {_rel(tmp_path, c): (c.label, c.generator) for c in ingest.discover(tmp_path)}
    assert got == {
        "gan/1_fake/a.png": (LABEL_FAKE, "gan"),
        "src/0_real/b.png": (LABEL_REAL, "real"),
    }


def test_manifest_with_any_column_names(tmp_path):
    png = layouts.Pngs()
    for name in ("a.png", "b.png", "c.png"):
        png.write(tmp_path / "imgs" / name)
    df = pd.DataFrame(
        {
            "file": ["imgs/a.png", "imgs/b.png", "imgs/c.png"],
            "verdict": ["authentic", "synthetic-v1", "synthetic-v2"],
            "engine": ["camera", "sdxl", "flux"],
            "origin": ["flickr", "lab", "lab"],
            "fold": ["train", "validation", "test"],
        }
    )
    df.to_csv(tmp_path / "m.csv", index=False)
    cols = ColumnsConfig(
        path_col="file",
        label_col="verdict",
        generator_col="engine",
        source_col="origin",
        split_col="fold",
        real_values=("Authentic",),
    )
    got = [
        (c.label, c.generator, c.source, c.split) for c in ingest.discover(tmp_path / "m.csv", cols)
    ]
    assert got == [
        (LABEL_REAL, "real", "flickr", "train"),
        (LABEL_FAKE, "sdxl", "lab", "val"),
        (LABEL_FAKE, "flux", "lab", "test"),
    ]
    # without --real-values: "authentic" means real, so the other values name fakes' generators
    # (no generator column named here)
    got = ingest.discover(tmp_path / "m.csv", ColumnsConfig(path_col="file", label_col="verdict"))
    assert [(c.label, c.generator) for c in got] == [
        (LABEL_REAL, "real"),
        (LABEL_FAKE, "synthetic-v1"),
        (LABEL_FAKE, "synthetic-v2"),
    ]
    # a column named on the command line that is not there: the error lists the columns
    with pytest.raises(ValueError, match="no column 'kind'.*verdict"):
        ingest.discover(tmp_path / "m.csv", ColumnsConfig(label_col="kind"))


def test_artifact_manifest_given_directly(tmp_path):
    """ArtiFact's columns (image_path, target, category) are recognised without any option;
    integer classes other than 0 are fakes."""
    png = layouts.Pngs()
    rows = []
    for i, target in enumerate([0, 1, 2, 3, 4, 5, 6]):
        png.write(tmp_path / f"{i}.png")
        rows.append((f"{i}.png", target, "ffhq" if target == 0 else f"gen{target}"))
    pd.DataFrame(rows, columns=["image_path", "target", "category"]).to_csv(
        tmp_path / "metadata.csv", index=False
    )
    got = [(c.label, c.generator, c.source) for c in ingest.discover(tmp_path / "metadata.csv")]
    assert got[0] == (LABEL_REAL, "real", "ffhq")
    assert got[1:] == [(LABEL_FAKE, f"gen{t}", f"gen{t}") for t in range(1, 7)]


def test_community_forensics_shards(tmp_path):
    stored = layouts.community_forensics(tmp_path / "cf", layouts.Pngs())
    shard = tmp_path / "cf" / "train-00000-of-00001.parquet"
    assert pq.ParquetFile(shard).num_row_groups > 1  # the reader streams several row groups
    found = ingest.discover_source(tmp_path / "cf")
    assert any("Parquet" in name for name in found.layouts)
    assert len(found.candidates) == len(stored)
    images, rejects = ingest.inspect_candidates(found.candidates, 10**8, 8)
    # the garbage and the null cell of each shard are rejected with their reason; nothing else
    reasons = sorted(rejects["reason"])
    assert len(reasons) == 4
    assert sum("not an image" in r for r in reasons) == 2
    assert sum("no image bytes" in r for r in reasons) == 2
    assert len(images) == len(stored) - 4
    for row in images.itertuples():
        file, r, column = split_ref(row.path_bytes)
        assert column == "image_data"
        assert read_bytes(row.path_bytes) == stored[(file, r)]  # the same bytes, byte for byte
        assert row.path.endswith(f".parquet::{r}")
        assert row.split == ("train" if b"/train-" in file else "test")
        if row.label == LABEL_REAL:
            assert (row.generator, row.source) == ("real", "coco")
        else:
            assert row.generator in ("sd15", "dalle3")


def test_a_shard_changed_after_ingest_is_a_reject_not_a_crash(tmp_path):
    layouts.community_forensics(tmp_path / "cf", layouts.Pngs())
    shard = tmp_path / "cf" / "test-00000-of-00001.parquet"
    ref = member_ref(shard, 6, "image_data")
    assert len(read_bytes(ref)) > 0
    table = pq.read_table(shard).slice(0, 4)
    pq.write_table(table, shard)  # rewritten with 4 rows
    with pytest.raises(ImageRejected, match="row 6 is not in the shard"):
        read_bytes(ref)
    shard.unlink()
    with pytest.raises(ImageRejected, match="vanished"):
        read_bytes(ref)
    shard.write_bytes(b"PAR1 not really")
    with pytest.raises(ImageRejected, match="unreadable Parquet shard"):
        read_bytes(ref)


def test_huggingface_export_with_image_structs(tmp_path):
    root = layouts.huggingface(tmp_path / "hf", layouts.Pngs())
    cands = ingest.discover(root)
    assert len(cands) == 18
    images, rejects = ingest.inspect_candidates(cands, 10**8, 8)
    assert rejects.empty and len(images) == 18
    assert Counter(images["split"]) == {"train": 6, "val": 6, "test": 6}
    assert set(images.loc[images["label"] == LABEL_FAKE, "generator"]) == {"flux.1-dev"}
    assert set(images.loc[images["label"] == LABEL_REAL, "source"]) == {"laion"}
    assert {split_ref(p)[2] for p in images["path_bytes"]} == {"image"}


def test_one_parquet_shard_given_directly_and_a_custom_image_column(tmp_path):
    png = layouts.Pngs()
    rows = [dict(pic=png(), is_ai=bool(i % 2), name=f"{i}.png") for i in range(4)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "one.parquet")
    cands = ingest.discover(tmp_path / "one.parquet")
    assert [c.label for c in cands] == [LABEL_REAL, LABEL_FAKE, LABEL_REAL, LABEL_FAKE]
    assert [read_bytes(c.path) for c in cands] == [r["pic"] for r in rows]
    with pytest.raises(ValueError, match="'name'.*does not hold image bytes"):
        ingest.discover(tmp_path / "one.parquet", ColumnsConfig(image_col="name"))


def test_shard_cache_stays_bounded(tmp_path, monkeypatch):
    layouts.community_forensics(tmp_path / "cf", layouts.Pngs())
    monkeypatch.setattr(shards, "CACHE_BYTES", 1)  # keep only the row group just read
    shards.clear_cache()
    for shard in sorted((tmp_path / "cf").glob("*.parquet")):
        for row in range(7):
            read_bytes(member_ref(shard, row, "image_data"))
            assert len(shards._groups) == 1
    shards.clear_cache()


def test_genimage_with_only_train_and_val_holds_out_val(tmp_path):
    root = layouts.genimage_train_val(tmp_path / "gi", layouts.Pngs())
    cands = ingest.discover(root)
    images, _ = ingest.inspect_candidates(cands, 10**8, 8)
    final, notes = ingest.finalize_with_notes(images)
    layout_val = {c.path for c in cands if c.split == "val"}
    held = final[final["path_bytes"].isin(layout_val)]
    assert len(held) == 12 and set(held["split"]) == {"test"}  # the layout's val is held out
    rest = final[~final["path_bytes"].isin(layout_val)]
    assert set(rest["split"]) <= {"train", "val"} and (rest["split"] == "val").any()
    assert "val" in notes["held_out"] and "no test" in notes["held_out"]


def test_parquet_shards_end_to_end(tmp_path, random_encoder, dask_scheduler):
    """asap run's pipeline reads the images inside the shards on its Dask workers."""
    from pipeline.runner import run_pipeline
    from pipeline.schema import open_run

    stored = layouts.community_forensics(tmp_path / "cf", layouts.Pngs())
    out = tmp_path / "run"
    run_pipeline(
        RunConfig(
            source=str(tmp_path / "cf"),
            out=str(out),
            encoder_checkpoint=str(random_encoder),
            layout="pca",
            scheduler=dask_scheduler,
            progress=False,
        )
    )
    run = open_run(out)
    assert len(run.images) == len(stored) - 4 == len(run.features)
    assert len(run.rejects) == 4
    from explorer.render import ImageAccessError, ImageSource

    inside = ImageSource(run.images, run.source)
    first = int(run.images["id"].iloc[0])
    assert inside.thumbnail(first, 32).shape == (32, 32, 3)
    (tmp_path / "elsewhere").mkdir()
    outside = ImageSource(run.images, str(tmp_path / "elsewhere"))
    with pytest.raises(ImageAccessError):
        outside.path(first)


def _scan(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "scan", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
    )


def test_scan_reports_layout_counts_rejects_and_duplicates(tmp_path):
    png = layouts.Pngs()
    root = layouts.diffusion_forensics(tmp_path / "df", png, per=1)
    dup = root / "images" / "train" / "imagenet" / "adm" / "copy.png"
    dup.write_bytes((root / "images" / "train" / "imagenet" / "adm" / "00000.png").read_bytes())
    (root / "images" / "test" / "imagenet" / "real" / "broken.png").write_bytes(b"\x89PNG\r\n")
    out = _scan(str(root), "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert any("DiffusionForensics" in name for name in report["layouts"])
    assert report["images"] == 25 and report["real"] == 6 and report["fake"] == 19
    assert report["duplicates"] == 1 and report["rejected"] == 1
    assert sum(r["images"] for r in report["counts"]) == 25
    cell = [
        r
        for r in report["counts"]
        if r["split"] == "train" and r["generator"] == "adm" and r["source"] == "imagenet"
    ]
    assert cell[0]["images"] == 2 and cell[0]["duplicates"] == 1
    assert report["reject_reasons"] == {"not an image (format not recognised)": 1}
    assert report["first_rejects"][0]["path"].endswith("broken.png")
    text = _scan(str(root)).stdout
    assert "DiffusionForensics" in text and "adm" in text and "lsun_bedroom" in text


def test_scan_names_the_first_unlabelled_paths(tmp_path):
    png = layouts.Pngs()
    for i in range(3):
        png.write(tmp_path / "mystery" / "sub" / f"{i}.png")
    out = _scan(str(tmp_path / "mystery"))
    assert out.returncode == 1
    assert "3 images under" in out.stdout and "have no label" in out.stdout
    assert str(Path("mystery") / "sub" / "0.png") in out.stdout
    assert "0_real|1_fake" in out.stdout and "DiffusionForensics" in out.stdout


def test_label_folder_synonyms_and_dev_split(tmp_path):
    png = layouts.Pngs()
    for rel in (
        "dev/Authentic/a.png",
        "dev/Generated/b.png",
        "train/natural/c.png",
        "train/synthetic/d.png",
        "test/REAL/e.png",
        "test/FAKE/f.png",
        "eval/Real Images/g.png",
        "eval/2_fake_imgs/h.png",
        "eval/1_airplane/i.png",
    ):
        png.write(tmp_path / rel)
    got = {_rel(tmp_path, c): (c.label, c.split) for c in ingest.discover(tmp_path)}
    assert got == {
        "dev/Authentic/a.png": (LABEL_REAL, "val"),
        "dev/Generated/b.png": (LABEL_FAKE, "val"),
        "train/natural/c.png": (LABEL_REAL, "train"),
        "train/synthetic/d.png": (LABEL_FAKE, "train"),
        "test/REAL/e.png": (LABEL_REAL, "test"),
        "test/FAKE/f.png": (LABEL_FAKE, "test"),
        "eval/Real Images/g.png": (LABEL_REAL, "test"),
        "eval/2_fake_imgs/h.png": (LABEL_FAKE, "test"),
        "eval/1_airplane/i.png": (None, "test"),
    }


def test_split_manifests_beside_an_image_folder(tmp_path):
    """train.csv / test.jsonl naming files that sit in images/: matched by name, split from the
    manifest's name; a table that is not a manifest is skipped and said why."""
    png = layouts.Pngs()
    for i in range(6):
        png.write(tmp_path / "images" / f"{i}.png")
    pd.DataFrame(
        {
            "filename": ["0.png", "1.png", "2.png"],
            "label": ["real", "fake", "fake"],
            "model": ["", "sd21", "kandinsky"],
        }
    ).to_csv(tmp_path / "train.csv", index=False)
    pd.DataFrame({"file_name": ["3.png", "4.png"], "is_fake": [False, True]}).to_json(
        tmp_path / "test.jsonl", orient="records", lines=True
    )
    pd.DataFrame({"score": [1, 2]}).to_csv(tmp_path / "results.csv", index=False)
    found = ingest.discover_source(tmp_path)
    got = {_rel(tmp_path, c): (c.label, c.generator, c.split) for c in found.candidates}
    assert got == {
        "images/0.png": (LABEL_REAL, "real", "train"),
        "images/1.png": (LABEL_FAKE, "sd21", "train"),
        "images/2.png": (LABEL_FAKE, "kandinsky", "train"),
        "images/3.png": (LABEL_REAL, "real", "test"),
        "images/4.png": (LABEL_FAKE, "fake", "test"),
        "images/5.png": (None, "", None),
    }
    assert any("results.csv was not used" in n and "no path column" in n for n in found.notes)
    assert "results.csv was not used" in ingest.unlabelled_help(
        found.candidates, tmp_path, notes=found.notes
    )


def test_an_exported_selection_of_shard_images_is_a_manifest_again(tmp_path):
    """The explorer exports shard images by their display name `shard.parquet::ROW`."""
    stored = layouts.community_forensics(tmp_path / "cf", layouts.Pngs())
    shard = tmp_path / "cf" / "test-00000-of-00001.parquet"
    pd.DataFrame(
        {"path": [f"{shard}::1", "cf/test-00000-of-00001.parquet::2"], "label": [1, 0]}
    ).to_csv(tmp_path / "selection.csv", index=False)
    cands = ingest.discover(tmp_path / "selection.csv")
    assert [read_bytes(c.path) for c in cands] == [
        stored[(os.fsencode(shard), 1)],
        stored[(os.fsencode(shard), 2)],
    ]


def test_huggingface_class_labels_are_read_by_their_names(tmp_path):
    """A ClassLabel whose class 0 is "fake": the integers follow the names the export carries."""
    png = layouts.Pngs()
    table = pa.Table.from_pylist(
        [dict(image=dict(bytes=png(), path=None), label=i % 2) for i in range(4)]
    )
    features = {
        "image": {"_type": "Image"},
        "label": {"_type": "ClassLabel", "names": ["AiArtData", "RealArt"]},
    }
    table = table.replace_schema_metadata(
        {b"huggingface": json.dumps({"info": {"features": features}}).encode()}
    )
    pq.write_table(table, tmp_path / "train-00000-of-00001.parquet")
    # neither name is a word ASAP knows: the error says which values, and --real-values fixes it
    with pytest.raises(ValueError, match="AiArtData.*--real-values"):
        ingest.discover(tmp_path)
    cands = ingest.discover(tmp_path, ColumnsConfig(real_values=("RealArt",)))
    assert [c.label for c in cands] == [LABEL_FAKE, LABEL_REAL, LABEL_FAKE, LABEL_REAL]
    features["label"]["names"] = ["fake", "real"]
    table = table.replace_schema_metadata(
        {b"huggingface": json.dumps({"info": {"features": features}}).encode()}
    )
    pq.write_table(table, tmp_path / "train-00000-of-00001.parquet")
    assert [c.label for c in ingest.discover(tmp_path)] == [LABEL_FAKE, LABEL_REAL] * 2


def test_a_shard_without_labels_beside_labelled_ones(tmp_path):
    """An unlabelled test shard does not stop the others: its images become 'no label' rejects,
    and the message says why."""
    png = layouts.Pngs()
    pq.write_table(
        pa.Table.from_pylist([dict(image_data=png(), label=i % 2) for i in range(4)]),
        tmp_path / "train-0.parquet",
    )
    pq.write_table(
        pa.Table.from_pylist([dict(image_data=png(), id=i) for i in range(3)]),
        tmp_path / "test-0.parquet",
    )
    found = ingest.discover_source(tmp_path)
    labels = [c.label for c in found.candidates]
    assert labels.count(None) == 3 and labels.count(LABEL_REAL) == 2
    assert any("test-0.parquet" in n and "no label column" in n for n in found.notes)
    _, rejects = ingest.inspect_candidates(found.candidates, 10**8, 8)
    assert len(rejects) == 3 and set(rejects["reason"]) == {ingest.NO_LABEL}


def test_a_label_column_of_real_and_generator_names(tmp_path):
    """label in {real, sdxl, midjourney}: 'real' is real and every other value a fake's generator,
    also across shards where one holds no real image at all."""
    png = layouts.Pngs()
    for i in range(3):
        png.write(tmp_path / "m" / f"{i}.png")
    pd.DataFrame(
        {"path": ["0.png", "1.png", "2.png"], "label": ["Real", "sdxl", "midjourney"]}
    ).to_csv(tmp_path / "m" / "list.csv", index=False)
    got = [(c.label, c.generator) for c in ingest.discover(tmp_path / "m" / "list.csv")]
    assert got == [(LABEL_REAL, "real"), (LABEL_FAKE, "sdxl"), (LABEL_FAKE, "midjourney")]
    (tmp_path / "s").mkdir()
    pq.write_table(
        pa.Table.from_pylist([dict(image=png(), label=v) for v in ("real", "sdxl")]),
        tmp_path / "s" / "train-0.parquet",
    )
    pq.write_table(
        pa.Table.from_pylist([dict(image=png(), label="dalle3") for _ in range(2)]),
        tmp_path / "s" / "train-1.parquet",
    )
    got = [(c.label, c.generator) for c in ingest.discover(tmp_path / "s")]
    assert got == [
        (LABEL_REAL, "real"),
        (LABEL_FAKE, "sdxl"),
        (LABEL_FAKE, "dalle3"),
        (LABEL_FAKE, "dalle3"),
    ]
    # with no value that means real, nothing can be placed: the error still asks
    pd.DataFrame({"path": ["0.png", "1.png"], "label": ["sdxl", "flux"]}).to_csv(
        tmp_path / "m" / "list.csv", index=False
    )
    with pytest.raises(ValueError, match="sdxl.*--real-values"):
        ingest.discover(tmp_path / "m" / "list.csv")


def test_a_train_only_layout_is_split_by_content(tmp_path):
    """Shards all named train-*.parquet carry no held-out split: ASAP makes one by hash."""
    png = layouts.Pngs()
    rows = [dict(image=png(), label=i % 2) for i in range(60)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "train-00000-of-00001.parquet")
    images, _ = ingest.inspect_candidates(ingest.discover(tmp_path), 10**8, 8)
    final, notes = ingest.finalize_with_notes(images)
    assert set(final["split"]) == {"train", "val", "test"}
    assert final["split"].tolist() == final["sha"].map(ingest.hash_split).tolist()
    assert notes["splits"].startswith("by content hash") and notes["held_out"] == "test"


def test_scan_says_when_resizing_would_average_the_pixels_away(tmp_path):
    import numpy as np
    from PIL import Image

    for label, n in (("0_real", 3), ("1_fake", 2)):
        for i in range(n):
            (tmp_path / "big" / label).mkdir(parents=True, exist_ok=True)
            arr = np.random.default_rng(10 * n + i).integers(0, 255, (256, 300 + i, 3), np.uint8)
            Image.fromarray(arr).save(tmp_path / "big" / label / f"{i}.png")
    report = json.loads(_scan(str(tmp_path / "big"), "--json").stdout)
    res = report["resolution"]
    assert (res["median_side"], res["model_side"], res["factor"]) == (256, 64, 4.0)
    assert (res["min_side"], res["max_side"]) == (256, 256)
    text = _scan(str(tmp_path / "big")).stdout
    assert "shorter side median 256 px" in text and "hint:" in text and "--tiles 4" in text
    png = layouts.Pngs()  # 24 px images: smaller than the model's input, no hint
    for label in ("0_real", "1_fake"):
        png.write(tmp_path / "small" / label / "a.png")
    small = _scan(str(tmp_path / "small"))
    assert "sees 64 px" in small.stdout and "hint:" not in small.stdout
