"""Ingest: find images and their labels in the standard benchmark layouts, manifests or Parquet
image shards, inspect every image (hash, decode, size), and split them into an images table and a
rejects table.

Layouts (folder names are matched case-insensitively; `asap scan SOURCE` shows what is recognised):
- CNNDetection / UnivFD: ``<generator>/[<class>/]0_real|1_fake/...``
- GenImage: ``<generator>/[train|val]/nature|ai/...``
- ``real|fake`` folders anywhere in the path
- generator-named folders beside a real folder, at any depth: ``real/ stylegan/ dalle/`` or
  DiffusionForensics' ``images/<split>/<domain>/{real,adm,ddpm,...}`` (the domain is kept as the
  source of its reals and fakes)
- folders described by manifests (ArtiFact: ``<subset>/metadata.csv`` with ``image_path, target,
  category``), used for the images the folder names leave unlabelled
- Parquet shards with the images inside (Community Forensics: ``image_data`` bytes; Hugging Face
  exports: an ``image`` struct ``{bytes, path}``), split from a column or the file name
  (``train-00000-of-00004.parquet``)
- a CSV or Parquet manifest given directly, with a path and a label column; other columns give the
  generator, source and split. Column names are detected (see pipeline.columns) or given with
  ``--path-col``, ``--label-col``, ... and ``--real-values``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from .columns import (
    FAKE_WORDS,
    REAL_WORDS,
    LabelMap,
    MissingColumn,
    class_names,
    resolve,
    text_or_none,
)
from .config import ColumnsConfig
from .imageio import (
    IMAGE_SUFFIXES,
    ImageRejected,
    content_hash,
    decode_image,
    display_ref,
    member_ref,
    read_bytes,
)
from .schema import IMAGE_COLUMNS, LABEL_FAKE, LABEL_REAL, REJECT_COLUMNS

REAL_DIRS = {"0_real", "real", "reals", "nature", "natural", "authentic", "genuine", "pristine"}
FAKE_DIRS = {"1_fake", "fake", "fakes", "ai", "generated", "synthetic", "ai_generated",
             "ai-generated"}  # fmt: skip
SPLIT_DIRS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test",
              "eval": "test", "testing": "test", "training": "train", "dev": "val"}  # fmt: skip
LABEL_WORDS = REAL_WORDS | FAKE_WORDS
TABLE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json", ".parquet")
NO_LABEL = (
    "no label: put it under 0_real/1_fake, real/fake or nature/ai, in a generator folder beside a "
    "real/ folder, or list it in a manifest"
)
LAYOUT_HELP = (
    "ASAP reads <gen>/[<class>/]0_real|1_fake/ (CNNDetection, UnivFD), "
    "<gen>/[train|val]/nature|ai/ (GenImage), real/ and fake/ folders, generator folders beside "
    "a real/ folder at any depth (DiffusionForensics: <split>/<domain>/{real,adm,ldm,...}), "
    "folders with a metadata.csv (ArtiFact), Parquet shards with the images inside, or a "
    "CSV/Parquet manifest"
)


@dataclass(frozen=True)
class Candidate:
    path: bytes  # file-system path, exact bytes; or a shard member (pipeline.imageio.member_ref)
    label: int | None  # None: no label could be found
    generator: str
    source: str
    split: str | None  # from the layout, else None (assigned by content hash)


@dataclass
class Discovery:
    candidates: list[Candidate]
    layouts: list[str] = field(default_factory=list)  # what was recognised, in words
    notes: list[str] = field(default_factory=list)  # tables that could not be used, and why


def display_path(path: bytes) -> str:
    return display_ref(path)


def _walk_files(root: Path) -> list[bytes]:
    """All non-directory entries under root (symlinks included, not followed into directories)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(os.fsencode(root)):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(b"."))
        for name in sorted(filenames):
            if name.startswith(b"."):
                continue
            out.append(os.path.join(dirpath, name))
    return out


def _suffix(path: bytes) -> str:
    return os.path.splitext(path)[1].decode("ascii", "replace").lower()


def _looks_like_image(path: bytes) -> bool:
    return _suffix(path) in IMAGE_SUFFIXES


def _label_of(name: str) -> int | None:
    """The label a folder name means: real/fake and synonyms, also numbered or suffixed
    (``0_real``, ``2-fake``, ``real_images``, ``Fake Images``)."""
    low = name.lower().strip()
    bare = re.sub(r"^\d+[_\-. ]+", "", low)
    bare_suffix = re.sub(r"[_\-. ]+(images?|imgs?|photos?|pictures?|samples?|data)$", "", bare)
    for word in (low, bare, bare_suffix):
        if word in REAL_DIRS:
            return LABEL_REAL
        if word in FAKE_DIRS:
            return LABEL_FAKE
    return None


def _split_of(text: str | None) -> str | None:
    return SPLIT_DIRS.get(str(text).strip().lower()) if text is not None else None


def _folder_candidates(root: Path, files: list[bytes], layouts: list[str]) -> list[Candidate]:
    """Label image files from their folder names (see module doc)."""
    rel = [os.path.relpath(p, os.fsencode(root)).split(os.sep.encode()) for p in files]
    dirs = [[d.decode("utf-8", "backslashreplace") for d in parts[:-1]] for parts in rel]
    names = {d.lower() for ds in dirs for d in ds}

    parsed = []  # [label, prefix dirs before the label folder, split, explicit (gen, source)]
    for ds in dirs:
        split = next((SPLIT_DIRS[d.lower()] for d in ds if d.lower() in SPLIT_DIRS), None)
        keep = [d for d in ds if d.lower() not in SPLIT_DIRS]
        idx = max((i for i, d in enumerate(keep) if _label_of(d) is not None), default=None)
        if idx is None:
            parsed.append([None, keep, split, None])
        else:
            parsed.append([_label_of(keep[idx]), keep[:idx], split, None])

    # Generator-named folders beside a real folder: in a folder P that holds a real folder and
    # no fake folder, every other sub-folder is one generator's fakes (top level: real/ stylegan/;
    # DiffusionForensics: images/<split>/<domain>/{real,adm,...}; splits are skipped).
    real_parents = {tuple(p[1]) for p in parsed if p[0] == LABEL_REAL}
    fake_parents = {tuple(p[1]) for p in parsed if p[0] == LABEL_FAKE}
    beside = sorted(real_parents - fake_parents, key=len, reverse=True)
    sibling = False
    for p in parsed:
        if p[0] is not None:
            continue
        keep = p[1]
        for parent in beside:
            n = len(parent)
            if len(keep) > n and tuple(keep[:n]) == parent:
                domain = parent[-1] if parent else None
                p[0], p[1] = LABEL_FAKE, list(parent)
                p[3] = (keep[n], domain or keep[n])
                sibling = True
                break
    if sibling:  # the reals beside them take their folder's domain as their source
        for p in parsed:
            if p[0] == LABEL_REAL and p[1] and tuple(p[1]) in beside:
                p[3] = ("real", p[1][-1])

    # A folder shared by every labelled file (a lone "diffusion_datasets/") names the collection,
    # not a generator: descend past it, unless the next level holds both labels in one folder
    # (then it is a class level, as in CNNDetection's progan/airplane/{0_real,1_fake}).
    labelled = [(p[0], p[1]) for p in parsed if p[0] is not None and p[3] is None]
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
    for path, (label, prefix, split, explicit) in zip(files, parsed):
        if explicit:
            generator, source = explicit
        else:
            source = prefix[common] if len(prefix) > common else ""
            if label == LABEL_FAKE:
                generator = source or "fake"
            else:
                generator = "real" if label == LABEL_REAL else ""
            source = source or generator
        out.append(Candidate(path, label, generator, source, split))

    if names & {"0_real", "1_fake"}:
        layouts.append("0_real|1_fake folders (CNNDetection / UnivFD)")
    if names & {"nature", "ai"}:
        layouts.append("nature|ai folders (GenImage)")
    if names & {"real", "fake"} and not sibling:
        layouts.append("real|fake folders")
    if sibling:
        layouts.append("generator folders beside real/ folders (DiffusionForensics-style)")
    if names & set(SPLIT_DIRS):
        layouts.append("split folders (" + ", ".join(sorted(names & set(SPLIT_DIRS))) + ")")
    return out


def _rows_to_candidates(frame: pd.DataFrame, cols, table: str, labels: LabelMap, paths,
                        default_split: str | None,
                        default_source: str) -> list[Candidate]:  # fmt: skip
    raw = frame[cols.label].tolist()
    mapped = [labels(v) for v in raw]
    bad = sorted({str(v) for v, m in zip(raw, mapped) if m is None and text_or_none(v)})
    if bad:
        raise labels.error(table, bad)
    gens = frame[cols.generator].tolist() if cols.generator else [None] * len(frame)
    srcs = frame[cols.source].tolist() if cols.source else [None] * len(frame)
    splits = frame[cols.split].tolist() if cols.split else [None] * len(frame)
    out = []
    for path, label, lab, g, s, sp in zip(paths, mapped, raw, gens, srcs, splits):
        g, s = text_or_none(g), text_or_none(s)
        g = g or labels.generator_of(lab)
        if label == LABEL_FAKE:
            generator = g if g and g.lower() not in REAL_WORDS else "fake"
            source = s or generator
        elif label == LABEL_REAL:
            generator = "real"
            # keep where the real image came from: a source column, else a generator column's
            # value for reals (ArtiFact's category: coco, imagenet, ...), else the folder's name
            source = s or (g if g and g.lower() not in LABEL_WORDS else None) or default_source
        else:
            generator, source = "", ""
        out.append(Candidate(path, label, generator, source, _split_of(sp) or default_split))
    return out


def _read_table(path: Path) -> pd.DataFrame:
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            return pd.read_parquet(path)
        if suffix in (".jsonl", ".json"):
            return pd.read_json(path, lines=suffix == ".jsonl", dtype=False)
        sep = "\t" if suffix == ".tsv" else ","
        return pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, na_values=[""])
    except Exception as e:  # pandas/pyarrow raise many types for a malformed file
        raise ValueError(f"cannot read the manifest {path}: {type(e).__name__}: {e}") from e


def _manifest_base(manifest: Path, rel_paths: list[str], root: Path | None) -> bytes | None:
    """The folder that relative paths start from: the manifest's own folder, or (when the first
    paths are not found there) the nearest folder above it, up to ``root``, where they are. None
    when they are found nowhere (inside a folder source, file names are then matched by name)."""
    here = manifest.parent
    probe = [p for p in rel_paths[:20] if p and not os.path.isabs(p)]
    options = [here, *here.parents] if root is not None else [here]
    for base in options:
        if probe and any((base / p).exists() for p in probe):
            return os.fsencode(base)
        if root is not None and base == root:
            break
    return None if root is not None and probe else os.fsencode(here)


def _by_name(files: list[bytes]) -> dict[bytes, bytes]:
    """Image file name -> path, for names that occur once under the source."""
    seen: dict[bytes, bytes | None] = {}
    for f in files:
        name = os.path.basename(f)
        seen[name] = None if name in seen else f
    return {k: v for k, v in seen.items() if v is not None}


def discover_manifest(manifest: Path, columns: ColumnsConfig | None = None,
                      root: Path | None = None,
                      files: list[bytes] | None = None) -> list[Candidate]:  # fmt: skip
    """Candidates listed by a manifest. Inside a folder source (``root``, its image ``files``),
    relative paths start from the manifest's folder or a folder above it, or else are matched by
    file name; the split comes from a column, else from the manifest's name (train.csv)."""
    manifest, columns = Path(manifest), columns or ColumnsConfig()
    df = _read_table(manifest)
    cols = resolve(list(df.columns), columns, f"manifest {manifest}")
    labels = LabelMap(columns, cols.label).fit(df[cols.label].unique().tolist())
    rel = [text_or_none(v) or "" for v in df[cols.path].tolist()]
    base = _manifest_base(manifest, rel, root)
    names = _by_name(files or []) if base is None else {}
    base = base or os.fsencode(manifest.parent)
    paths = []
    for r in rel:
        m = re.fullmatch(r"(.*\.parquet)::(\d+)", r, flags=re.IGNORECASE)
        p = os.fsencode(m.group(1) if m else r)
        if names and not os.path.isabs(p):
            p = names.get(os.path.basename(p), os.path.join(base, p))
        p = p if os.path.isabs(p) else os.path.join(base, p)
        if m:  # a shard member, as the explorer exports it
            from .shards import image_columns, shard_schema

            schema = shard_schema(p)
            inside = image_columns(schema) if schema is not None else []
            p = member_ref(p, int(m.group(2)), columns.image_col or (inside or ["image"])[0])
        paths.append(p)
    default_source = (
        manifest.parent.name if root is not None and manifest.parent != root else "real"
    )
    words = re.split(r"[-_.]", manifest.stem.lower())
    split = next((SPLIT_DIRS[w] for w in words if w in SPLIT_DIRS), None)
    return _rows_to_candidates(df, cols, f"manifest {manifest}", labels, paths, split,
                               default_source)  # fmt: skip


def discover_shard(shard: Path, columns: ColumnsConfig | None = None,
                   root: Path | None = None, label_values=None) -> list[Candidate]:  # fmt: skip
    """Candidates for the images inside one Parquet shard, reading only its small columns.
    ``label_values``: the distinct labels of every shard of the set (else of this one)."""
    from .shards import image_columns, iter_columns, shard_schema

    columns = columns or ColumnsConfig()
    schema = shard_schema(shard)
    table = f"Parquet shard {shard}"
    cols = resolve(schema.names, columns, table, image_cols=image_columns(schema))
    labels = LabelMap(columns, cols.label, class_names(schema, cols.label))
    if label_values is None:
        label_values = label_set(shard, cols.label)
    labels.fit(label_values)
    wanted = list(dict.fromkeys(c for c in (cols.label, cols.generator, cols.source, cols.split)
                                if c))  # fmt: skip
    rel = shard.relative_to(root).parts if root is not None else (shard.name,)
    words = [*rel[:-1], *re.split(r"[-_.]", shard.stem)]
    split = next((SPLIT_DIRS[w.lower()] for w in words if w.lower() in SPLIT_DIRS), None)
    folder = next((w for w in rel[:-1] if w.lower() not in SPLIT_DIRS and w.lower() != "data"),
                  "real")  # fmt: skip
    out = []
    for start, n, part in iter_columns(shard, wanted):
        frame = part.to_pandas()
        paths = [member_ref(os.fsencode(shard), start + i, cols.image) for i in range(n)]
        out += _rows_to_candidates(frame, cols, table, labels, paths, split, folder)
    return out


def label_set(shard: Path, column: str) -> set:
    """The distinct values of a shard's label column (one small column, read once)."""
    return set(pq.read_table(shard, columns=[column]).column(0).unique().to_pylist())


def discover_source(source: str | os.PathLike,
                    columns: ColumnsConfig | None = None) -> Discovery:  # fmt: skip
    """Candidates from an image folder, a CSV/Parquet manifest or a Parquet image shard, and the
    layouts recognised."""
    from .shards import image_columns, is_image_shard, shard_schema

    columns = columns or ColumnsConfig()
    src = Path(source)
    if not src.exists():
        raise FileNotFoundError(f"image source {src} does not exist: pass a folder or a manifest")
    if src.is_file():
        if src.suffix.lower() not in TABLE_SUFFIXES:
            raise ValueError(
                f"{src} is a file but not a manifest ({', '.join(TABLE_SUFFIXES)}) or a Parquet "
                "image shard; pass the folder that holds your images, or a manifest"
            )
        if src.suffix.lower() == ".parquet" and is_image_shard(src):
            return Discovery(discover_shard(src, columns), ["a Parquet image shard"])
        return Discovery(discover_manifest(src, columns), ["a manifest"])

    files = _walk_files(src)
    images = [p for p in files if _looks_like_image(p)]
    layouts: list[str] = []
    cands = _folder_candidates(src, images, layouts)
    tables = [Path(os.fsdecode(p)) for p in files if _suffix(p) in TABLE_SUFFIXES]
    shards = [t for t in tables if t.suffix.lower() == ".parquet" and is_image_shard(t)]
    notes = []
    values = set()  # the distinct labels of all shards, so that every shard reads them alike
    for t in shards:
        try:
            cols = resolve(shard_schema(t).names, columns, str(t), image_columns(shard_schema(t)))
            values |= label_set(t, cols.label)
        except ValueError:
            pass  # reported below, shard by shard
    for t in shards:
        try:
            cands += discover_shard(t, columns, src, values)
        except MissingColumn as e:  # e.g. an unlabelled test shard: its images are rejects
            schema = shard_schema(t)
            column = columns.image_col or image_columns(schema)[0]
            rows = pq.ParquetFile(t).metadata.num_rows
            cands += [Candidate(member_ref(os.fsencode(t), i, column), None, "", "", None)
                      for i in range(rows)]  # fmt: skip
            notes.append(f"{t.relative_to(src)}: {e}")
    if shards:
        layouts.append(f"Parquet image shards ({len(shards)} files)")
    unlabelled = {c.path: i for i, c in enumerate(cands) if c.label is None}
    manifests = [t for t in tables if t not in shards]
    if unlabelled and manifests:
        # Tables in the folder label the images its folder names do not (ArtiFact's metadata.csv
        # per subset; train.csv/test.csv beside an images/ folder); a table that is not a
        # manifest is skipped, and said why when images stay unlabelled.
        used = []
        for m in manifests:
            try:
                listed = discover_manifest(m, columns, src, images)
            except ValueError as e:
                notes.append(f"{m.relative_to(src)} was not used: {e}")
                continue
            n = 0
            for c in listed:
                i = unlabelled.pop(c.path, None)
                if i is not None:
                    cands[i] = c
                    n += 1
            if n:
                used.append(m.name)
        if used:
            shown = ", ".join(sorted(set(used))[:3])
            layouts.append(f"folders described by manifests ({len(used)} files: {shown}; "
                           "ArtiFact-style)")  # fmt: skip
    return Discovery(cands, layouts, notes if unlabelled else [])


def discover(source: str | os.PathLike, columns: ColumnsConfig | None = None) -> list[Candidate]:
    """Candidates from an image folder, a manifest or Parquet image shards (see module doc)."""
    return discover_source(source, columns).candidates


def unlabelled_help(cands: list[Candidate], source, limit: int = 5, notes=()) -> str:
    """What to rename, for a source whose images ASAP could not label."""
    missing = [display_path(c.path) for c in cands if c.label is None]
    shown = "\n  ".join(missing[:limit])
    more = f"\n  ... and {len(missing) - limit} more" if len(missing) > limit else ""
    tables = "".join(f"\n{n}" for n in notes)
    return (
        f"{len(missing)} images under {source} have no label. {LAYOUT_HELP}. "
        f"The first unlabelled ones:\n  {shown}{more}{tables}\n"
        "Run `asap scan SOURCE` to see what ASAP recognises."
    )


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
            rejects.append((name, c.path, "ingest", NO_LABEL))
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
    return finalize_with_notes(images)[0]


def finalize_with_notes(images: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """finalize, and how the splits were made ({"held_out": ...})."""
    images = images.sort_values("path_bytes", kind="stable").reset_index(drop=True)
    images.insert(0, "id", np.arange(len(images), dtype=np.int64))
    has_split = images["split"] != ""
    explicit = set(images.loc[has_split, "split"])
    if explicit == {"train"}:
        # a layout with a train split only (a Hugging Face set exported as train-*.parquet): as
        # good as none, so all of it is split by content hash
        has_split = pd.Series(False, index=images.index)
        explicit = set()
    auto = images["sha"].map(hash_split)
    images["split"] = images["split"].where(has_split, auto)
    notes = {"splits": "from the layout" if explicit else "by content hash (70/10/20)",
             "held_out": "test"}  # fmt: skip
    if explicit and "test" not in explicit and "val" in explicit:
        # GenImage ships train/val only: its val is the held-out set that metrics are computed
        # on, and a validation split for early stopping and calibration is carved from train.
        images.loc[images["split"] == "val", "split"] = "test"
        explicit = (explicit - {"val"}) | {"test"}
        notes["held_out"] = "the layout's val split (it has no test split)"
    if explicit and "val" not in explicit:
        # Layout gave train/test but no val: hold out ~1/8 of train (by hash) for calibration.
        to_val = (images["split"] == "train") & (images["sha"].map(lambda s: int(s[8:12], 16) % 8)
                                                 == 0)  # fmt: skip
        images.loc[to_val, "split"] = "val"
        notes["val"] = "1/8 of the layout's train split, by content hash"
    first = images.groupby("sha")["id"].transform("min")
    images["duplicate_of"] = np.where(first != images["id"], first, -1).astype(np.int64)
    # Duplicates must share their original's split so that no image leaks across splits.
    dup = images["duplicate_of"] >= 0
    images.loc[dup, "split"] = images["split"].to_numpy()[images.loc[dup, "duplicate_of"]]
    return images[list(IMAGE_COLUMNS)], notes


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
