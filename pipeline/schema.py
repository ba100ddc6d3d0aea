"""The run-directory contract: schema version, file names, columns, dtypes, array shapes, and the
functions that validate and open a run directory. Nothing else in ASAP spells a path or column name.

Layout of a run directory (schema version 2)::

    run.json                       metadata: schema version, config, seed, model, timings, stages
    images.parquet                 every accepted image (IMAGE_COLUMNS), ordered by id
    rejects.parquet                every file that could not be used, with a reason (REJECT_COLUMNS)
    model/encoder.pt               encoder weights + config (pipeline.encoder.save_encoder)
    model/metrics.json             held-out metrics: accuracy, AP, ROC-AUC, ECE, per generator
    parts/features-NNNNN.parquet   per-partition features (FEATURE_COLUMNS without x, y)
    parts/relevance-NNNNN.npy      per-partition maps, float16, shape (n, len(MAP_NAMES), gh, gw):
                                   fake and real by the run's method (config "maps"), d00..d15 by
                                   the last-block rule
    parts/compare-NNNNN.npy        the fake map of each comparison method (config "compare_maps"),
                                   float16, shape (n, len(compare_maps), gh, gw)
    features.parquet               all features ordered by id, with the layout x, y
    patterns.parquet               discovered patterns, one row each (PATTERN_COLUMNS)
    pattern_members.parquet        the patches assigned to each pattern (PATTERN_MEMBER_COLUMNS)
    faithfulness.parquet           per-image deletion/insertion areas (FAITHFULNESS_COLUMNS)
    parts/patches-NNNNN.npz        per-partition top patches and their features (pattern stage)

A partition is complete when its features file exists: the relevance file is written first, and
both are written atomically (temporary name, then ``os.replace``), so a killed run never leaves a
half-written file under a final name.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SCHEMA_VERSION = 2  # 2: explanation methods, long faithfulness table, pattern significance

N_DISTILLED = 16
DISTILLED_COLUMNS = [f"d{i:02d}" for i in range(N_DISTILLED)]
# Relevance map channels: the fake logit, its negation (authenticity), and each distilled dimension.
MAP_NAMES = ["fake", "real", *DISTILLED_COLUMNS]

# the method of the 16 dimension maps (pipeline.explain registers it; the explorer names it)
DIMS_METHOD = "chefer_last"

LABEL_REAL, LABEL_FAKE = 0, 1
LABEL_NAMES = {LABEL_REAL: "real", LABEL_FAKE: "fake"}
SPLITS = ("train", "val", "test")

RUN_JSON = "run.json"
IMAGES_FILE = "images.parquet"
REJECTS_FILE = "rejects.parquet"
FEATURES_FILE = "features.parquet"
MODEL_DIR = "model"
ENCODER_FILE = "model/encoder.pt"
METRICS_FILE = "model/metrics.json"
PARTS_DIR = "parts"
PATTERNS_FILE = "patterns.parquet"
PATTERN_MEMBERS_FILE = "pattern_members.parquet"
FAITHFULNESS_FILE = "faithfulness.parquet"

# column -> numpy/pandas dtype. `path` is for display (undecodable bytes escaped); `path_bytes`
# holds the exact file-system name so that non-UTF-8 names still open.
IMAGE_COLUMNS = {
    "id": "int64",
    "path": "string",
    "path_bytes": "object",
    "label": "int8",
    "generator": "string",  # generator name for fakes, "real" for real images
    "source": "string",  # data-set folder the image came from (groups reals with their fakes)
    "split": "string",
    "width": "int32",
    "height": "int32",
    "format": "string",
    "mode": "string",
    "file_size": "int64",
    "sha": "string",  # blake2b-128 of the file bytes
    "duplicate_of": "int64",  # id of the first identical file, -1 when unique
}
REJECT_COLUMNS = {"path": "string", "path_bytes": "object", "stage": "string", "reason": "string"}
PART_FEATURE_COLUMNS = {
    "id": "int64",
    **{c: "float32" for c in DISTILLED_COLUMNS},
    "logit": "float32",
    "p_fake": "float32",  # calibrated probability of "fake" (Platt: temperature + shift)
    "pred": "int8",
    "part": "int32",  # partition number
    "row": "int32",  # row inside the partition's relevance array
}
FEATURE_COLUMNS = {**PART_FEATURE_COLUMNS, "x": "float32", "y": "float32"}
# what a lean open (the explorer) reads of the images table
LEAN_IMAGE_COLUMNS = {c: IMAGE_COLUMNS[c] for c in ("id", "path_bytes", "label", "generator")}
PATTERN_COLUMNS = {
    "pattern": "int32",
    "n_patches": "int64",
    "n_images": "int64",  # distinct member images
    "n_fake_images": "int64",
    "fake_share": "float32",  # n_fake_images / n_images
    "impact": "float32",  # mean drop in p(fake) when the pattern's patches are masked
    "impact_lo": "float32",  # 95% bootstrap interval of impact
    "impact_hi": "float32",
    "random_impact": "float32",  # same images, the same number of random patches masked
    "random_lo": "float32",
    "random_hi": "float32",
    # the same with the pattern's own patches only, without their neighbours (and as many random
    # patches): above its control, the evidence is in the pattern's patches; near 0 while the
    # impact above is large, it is spread over the image (a whole-image generator's trace)
    "local_impact": "float32",
    "local_lo": "float32",
    "local_hi": "float32",
    "local_random_impact": "float32",
    "local_random_hi": "float32",
    "top_dims": "string",  # distilled dimensions most associated, e.g. "d03,d11,d07"
    "mean_gy": "float32",  # mean patch position, in grid cells
    "mean_gx": "float32",
    # the impact interval excludes 0 and lies above the random control's interval
    "significant": "bool",
    # mean best Jaccard overlap with the patterns of k-means fits on other subsets of the sample
    # (Hennig's clusterwise stability): >= STABLE_PATTERN reproducible, ~0.5 dissolves
    "stability": "float32",
}
STABLE_PATTERN = 0.75  # Hennig (2007): clusters below this stability are not reliably found
# columns a reader fills with this value when a run written before them lacks them
OPTIONAL_COLUMNS = {
    "stability": float("nan"),
    **{
        c: float("nan")
        for c in ("local_impact", "local_lo", "local_hi", "local_random_impact", "local_random_hi")
    },  # fmt: skip
}
PATTERN_MEMBER_COLUMNS = {
    "pattern": "int32",
    "id": "int64",  # image id
    "gy": "int16",  # patch row / column in the relevance grid
    "gx": "int16",
    "relevance": "float32",  # the patch's fake-map relevance
    "distance": "float32",  # distance of the patch feature to the pattern centre
    "exemplar": "int8",  # 1: among the most central, 2: among the most extreme, 0: other
}
# One row per (image, order): the run's method, each comparison method, and "random".
FAITHFULNESS_COLUMNS = {
    "id": "int64",
    "method": "string",  # explanation method whose fake map ordered the patches, or "random"
    "p_fake": "float32",  # before any patch is removed
    "deletion_auc": "float32",  # area under p(fake) as the most relevant patches are removed
    "insertion_auc": "float32",  # area as they are revealed on a blurred image
}
RANDOM_ORDER = "random"


class RunDirectoryError(RuntimeError):
    """A run directory is missing, partial, or of another schema version."""


def part_name(kind: str, index: int, suffix: str) -> str:
    return f"{kind}-{index:05d}{suffix}"


@dataclass(frozen=True)
class RunPaths:
    """Every path inside one run directory."""

    root: Path

    @property
    def run_json(self) -> Path:
        return self.root / RUN_JSON

    @property
    def images(self) -> Path:
        return self.root / IMAGES_FILE

    @property
    def rejects(self) -> Path:
        return self.root / REJECTS_FILE

    @property
    def features(self) -> Path:
        return self.root / FEATURES_FILE

    @property
    def encoder(self) -> Path:
        return self.root / ENCODER_FILE

    @property
    def metrics(self) -> Path:
        return self.root / METRICS_FILE

    @property
    def parts(self) -> Path:
        return self.root / PARTS_DIR

    @property
    def patterns(self) -> Path:
        return self.root / PATTERNS_FILE

    @property
    def pattern_members(self) -> Path:
        return self.root / PATTERN_MEMBERS_FILE

    @property
    def faithfulness(self) -> Path:
        return self.root / FAITHFULNESS_FILE

    def part_patches(self, index: int) -> Path:
        return self.parts / part_name("patches", index, ".npz")

    def part_features(self, index: int) -> Path:
        return self.parts / part_name("features", index, ".parquet")

    def part_relevance(self, index: int) -> Path:
        return self.parts / part_name("relevance", index, ".npy")

    def part_compare(self, index: int) -> Path:
        return self.parts / part_name("compare", index, ".npy")

    def part_rejects(self, index: int) -> Path:
        return self.parts / part_name("rejects", index, ".parquet")

    def create(self) -> RunPaths:
        (self.root / MODEL_DIR).mkdir(parents=True, exist_ok=True)
        self.parts.mkdir(exist_ok=True)
        return self


def atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)`` then rename onto ``path``, so readers never see a partial file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json(path: Path, obj: dict) -> None:
    def _write(tmp: Path) -> None:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str))

    atomic_write(path, _write)


def write_table(path: Path, df, columns: dict) -> None:
    """Write ``df`` as Parquet with exactly ``columns`` (order and dtypes), atomically."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"table for {path.name} lacks columns {missing}")
    out = df[list(columns)].astype({c: t for c, t in columns.items() if t != "object"})
    atomic_write(path, lambda tmp: out.to_parquet(tmp, index=False))


def _arrow_text(pa_type):
    """Keep text and bytes columns Arrow-backed when converting to pandas (lean reads)."""
    import pandas as pd
    import pyarrow as pa

    if (
        pa.types.is_string(pa_type)
        or pa.types.is_large_string(pa_type)
        or pa.types.is_binary(pa_type)
    ):
        return pd.ArrowDtype(pa_type)
    return None


def read_table(path: Path, columns: dict, lean: bool = False):
    """A contract table, validated. ``lean``: text and bytes columns stay Arrow-backed (no Python
    object per cell), which keeps tens of millions of image paths in a few hundred MB."""
    import pandas as pd

    if lean:  # read only the contract's columns, and check for them before reading
        import pyarrow.parquet as pq

        names = set(pq.read_schema(path).names)
        missing = [c for c in columns if c not in names and c not in OPTIONAL_COLUMNS]
        df = pd.DataFrame()
        if not missing:  # column by column, freeing Arrow buffers as they convert (peak ~1x)
            table = pq.read_table(path, columns=[c for c in columns if c in names])
            df = table.to_pandas(split_blocks=True, self_destruct=True, types_mapper=_arrow_text)
            del table
    else:
        df = pd.read_parquet(path)
    for c in columns:
        if c not in df.columns and c in OPTIONAL_COLUMNS:
            df[c] = OPTIONAL_COLUMNS[c]
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise RunDirectoryError(
            f"{path} lacks columns {missing}; it was written by another ASAP version. "
            "Re-run `asap run` with --fresh to rebuild it."
        )
    keep_arrow = ("string", "object") if lean else ("object",)
    return df.astype({c: t for c, t in columns.items() if t not in keep_arrow})


def read_columns(path: Path, columns: dict, stack: tuple = ()) -> dict:
    """Lean read of a numeric contract table: each column straight into a numpy array, one column
    in flight at a time; the ``stack`` columns go into one (n, len(stack)) float32 array under the
    key "stack" (the distilled values, without a second copy)."""
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    missing = [c for c in columns if c not in pf.schema_arrow.names]
    if missing:
        raise RunDirectoryError(
            f"{path} lacks columns {missing}; it was written by another ASAP version. "
            "Re-run `asap run` with --fresh to rebuild it."
        )
    out: dict = {}
    if stack:
        out["stack"] = np.empty((pf.metadata.num_rows, len(stack)), np.float32)
    for c, dtype in columns.items():
        col = pf.read(columns=[c]).column(0).to_numpy()
        if c in stack:
            out["stack"][:, stack.index(c)] = col
        else:
            out[c] = col.astype(dtype, copy=False)
    return out


def empty_table(columns: dict):
    import pandas as pd

    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in columns.items()})


def read_run_json(root: Path) -> dict:
    path = Path(root) / RUN_JSON
    if not path.exists():
        raise RunDirectoryError(
            f"{root} is not an ASAP run directory (no {RUN_JSON}). "
            "Create one with `asap run IMAGES --out DIR`."
        )
    meta = json.loads(path.read_text())
    version = meta.get("schema_version")
    if version != SCHEMA_VERSION:
        raise RunDirectoryError(
            f"{root} has schema version {version}, this ASAP reads version {SCHEMA_VERSION}. "
            "Re-run the pipeline with this version (`asap run ... --fresh`)."
        )
    return meta


def map_methods(meta: dict) -> list[str]:
    """The explanation methods whose fake maps a run stored: its own method first."""
    cfg = meta.get("config", {})
    return [cfg.get("maps") or "unknown", *cfg.get("compare_maps", [])]


class RelevanceStore:
    """Memory-mapped access to the per-partition relevance arrays by (part, row)."""

    def __init__(self, paths: RunPaths, parts: list[int], methods: list[str] | None = None):
        self._arrays = {p: np.load(paths.part_relevance(p), mmap_mode="r") for p in parts}
        shapes = {a.shape[1:] for a in self._arrays.values()}
        if len(shapes) > 1:
            raise RunDirectoryError(f"relevance parts disagree on map shape: {sorted(shapes)}")
        self.map_shape = shapes.pop() if shapes else (len(MAP_NAMES), 0, 0)
        self.methods = list(methods or ["unknown"])  # the run's method first, then comparisons
        self._paths, self._compare = paths, {}
        self._random = False

    def random_access(self) -> None:
        """Tell the kernel these maps are read a few scattered rows at a time (the explorer's
        cell glyphs and galleries): no read-ahead around each row. With read-ahead, reading the
        maps of 340 scattered images of a 10 M run took 1.4 s; without, milliseconds (a sparse
        generated run; on real files each row then costs one page read, not 32)."""
        self._random = True
        for arr in [*self._arrays.values(), *self._compare.values()]:
            _advise_random(arr)

    def _compare_part(self, part: int) -> np.ndarray:
        if part not in self._compare:
            path = self._paths.part_compare(part)
            if not path.exists():
                raise RunDirectoryError(f"{path} is missing: re-run `asap run` to rebuild it")
            self._compare[part] = np.load(path, mmap_mode="r")
            if self._random:
                _advise_random(self._compare[part])
        return self._compare[part]

    def fake_maps(self, parts, rows, method: str | None = None) -> np.ndarray:
        """The fake maps (n, gh, gw) float32 of ``method`` (default: the run's own)."""
        if method is None or method == self.methods[0]:
            return self.take(parts, rows, channel=0)
        if method not in self.methods:
            raise KeyError(f"this run has no {method!r} maps; it has {self.methods}")
        j = self.methods.index(method) - 1
        return _gather(self._compare_part, parts, rows, j, self.map_shape[1:])

    def get(self, part: int, row: int) -> np.ndarray:
        """Maps of one image, shape (len(MAP_NAMES), gh, gw), float32."""
        return np.asarray(self._arrays[int(part)][int(row)], dtype=np.float32)

    def take(self, parts, rows, channel: int | None = None) -> np.ndarray:
        """Maps of many images, shape (n, len(MAP_NAMES), gh, gw) float32, or (n, gh, gw) of one
        ``channel`` (reading only that channel)."""
        shape = self.map_shape if channel is None else self.map_shape[1:]
        return _gather(self._arrays.__getitem__, parts, rows, channel, shape)


def _advise_random(arr) -> None:
    """MADV_RANDOM on a memory-mapped array (where the platform has it; otherwise nothing)."""
    import mmap

    m = getattr(arr, "_mmap", None)
    if m is None or not hasattr(mmap, "MADV_RANDOM"):
        return
    try:
        m.madvise(mmap.MADV_RANDOM)
    except (OSError, ValueError):  # an empty or closed map
        pass


def _gather(part_array, parts, rows, channel: int | None, shape) -> np.ndarray:
    """Rows of memory-mapped per-partition arrays, one fancy-indexed read per partition (a loop
    over images read every map at a time; the cell glyphs' maps took 80 ms at 1 M images)."""
    parts, rows = np.asarray(parts, np.int64), np.asarray(rows, np.int64)
    out = np.empty((len(parts), *shape), dtype=np.float32)
    for p in np.unique(parts):
        at = np.flatnonzero(parts == p)
        arr = part_array(int(p))
        out[at] = arr[rows[at]] if channel is None else arr[rows[at], channel]
    return out


@dataclass
class Run:
    """An opened, validated run directory."""

    paths: RunPaths
    meta: dict
    images: object  # pandas.DataFrame, IMAGE_COLUMNS
    features: object  # pandas.DataFrame, FEATURE_COLUMNS (a dict of numpy columns when lean)
    rejects: object  # pandas.DataFrame, REJECT_COLUMNS
    relevance: RelevanceStore

    @property
    def metrics(self) -> dict:
        return json.loads(self.paths.metrics.read_text()) if self.paths.metrics.exists() else {}

    @property
    def test_metrics(self) -> dict[str, float]:
        """The held-out split's overall figures (accuracy, ap, auc, ece, ...) that are numbers;
        {} when the run has none (an encoder given, no labels)."""
        overall = self.metrics.get("test", {}).get("overall", {})
        return {k: float(v) for k, v in overall.items() if isinstance(v, (int, float))}

    @property
    def detector(self) -> dict | None:
        """Whether the detector beats chance on the held-out images (pipeline.trust): the
        figures metrics.json records, else computed from the tables (a run made before they
        were recorded); None when neither can say (a lean run without them)."""
        if "detector" in self.metrics:
            return self.metrics["detector"]
        images, feats = self.images, self.features
        if not hasattr(feats, "merge") or "split" not in images or "p_fake" not in feats:
            return None
        from .trust import detector_check

        held_out = self.meta.get("stages", {}).get("ingest", {}).get("held_out", "test")
        test = feats[["id", "p_fake"]].merge(images[["id", "label", "split"]], on="id")
        test = test[test["split"] == "test"]
        return detector_check(test["label"].to_numpy(), test["p_fake"].to_numpy(), held_out)

    @property
    def source(self) -> str | None:
        """The folder or manifest the run's images were ingested from."""
        return self.meta.get("config", {}).get("source")


def open_run(root, lean: bool = False) -> Run:
    """Open a finished run directory, or raise RunDirectoryError saying what is missing.
    ``lean`` (the explorer): only LEAN_IMAGE_COLUMNS of the images table, text kept Arrow-backed,
    and the features as a dict of numpy columns (see read_columns)."""
    root = Path(root)
    if not root.is_dir():
        raise RunDirectoryError(f"run directory {root} does not exist")
    meta = read_run_json(root)
    paths = RunPaths(root)
    for path, stage in ((paths.images, "ingest"), (paths.features, "layout")):
        if not path.exists():
            raise RunDirectoryError(
                f"{root} is partial: {path.name} is missing (stage '{stage}' has not finished). "
                f"Resume it with `asap run {meta.get('config', {}).get('source', 'IMAGES')} "
                f"--out {root}`."
            )
    images = read_table(paths.images, LEAN_IMAGE_COLUMNS if lean else IMAGE_COLUMNS, lean=lean)
    if lean:  # a dict of numpy columns; the distilled values stacked under "stack"
        features = read_columns(paths.features, FEATURE_COLUMNS, tuple(DISTILLED_COLUMNS))
    else:
        features = read_table(paths.features, FEATURE_COLUMNS)
    rejects = (
        read_table(paths.rejects, REJECT_COLUMNS)
        if paths.rejects.exists()
        else empty_table(REJECT_COLUMNS)
    )
    parts = sorted(int(p) for p in np.unique(np.asarray(features["part"])))
    missing = [p for p in parts if not paths.part_relevance(p).exists()]
    if missing:
        raise RunDirectoryError(f"{root} is partial: relevance for partitions {missing} missing")
    relevance = RelevanceStore(paths, parts, map_methods(meta))
    return Run(paths, meta, images, features, rejects, relevance)
