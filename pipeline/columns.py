"""Which columns of a manifest or a Parquet image shard hold the path (or the image), the label, the
generator, the source and the split, and what a label value means.

Detected by name (case-insensitive) unless set explicitly (`asap run --path-col ...`); labels are
0/1, real/fake words, booleans, or integer classes where 0 is real and any other class is fake
(ArtiFact's ``target``); ``--real-values`` lists the values that mean real, every other value is
then fake.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import ColumnsConfig
from .schema import LABEL_FAKE, LABEL_REAL

PATH_NAMES = (
    "path",
    "image_path",
    "filepath",
    "file_path",
    "img_path",
    "filename",
    "file_name",
    "file",
    "image",
    "img",
    "image_name",
    "image_file",
    "image_filename",
    "img_name",
    "relative_path",
    "rel_path",
)
IMAGE_NAMES = (
    "image",
    "image_data",
    "image_bytes",
    "img",
    "img_bytes",
    "bytes",
    "jpg",
    "png",
    "webp",
    "content",
    "data",
)
LABEL_NAMES = (
    "label",
    "target",
    "is_fake",
    "fake",
    "is_generated",
    "is_ai",
    "class",
    "labels",
    "is_real",
    "real",
    "generated",
    "is_ai_generated",
    "ai_generated",
    "is_synthetic",
    "synthetic",
    "class_name",
    "label_name",
    "gt",
    "ground_truth",
)
GENERATOR_NAMES = (
    "generator",
    "model",
    "model_name",
    "generator_name",
    "generator_model",
    "gen_model",
    "generation_model",
    "source_model",
    "model_id",
    "method",
    "algorithm",
    "category",
)
SOURCE_NAMES = ("source", "dataset", "data_source", "domain", "category", "subset")
SPLIT_NAMES = ("split", "partition")
NAME_NAMES = ("image_name", "filename", "file_name", "name", "path", "image_path")

REAL_WORDS = {
    "0",
    "real",
    "0_real",
    "nature",
    "natural",
    "authentic",
    "human",
    "genuine",
    "pristine",
    "original",
    "photo",
    "false",
}
FAKE_WORDS = {
    "1",
    "fake",
    "1_fake",
    "ai",
    "generated",
    "synthetic",
    "ai-generated",
    "ai_generated",
    "aigenerated",
    "aigc",
    "gen",
    "true",
}


@dataclass(frozen=True)
class Columns:
    """The resolved columns of one table (None: absent)."""

    label: str
    path: str | None = None  # a file path (manifests)
    image: str | None = None  # image bytes or a {bytes, path} struct (shards)
    generator: str | None = None
    source: str | None = None
    split: str | None = None
    name: str | None = None  # a file name stored beside the bytes (shards; for display only)


class MissingColumn(ValueError):
    """A table lacks a column ASAP needs (and none was named on the command line)."""


def _pick(names, available, explicit, what, table, required=False, exclude=()):
    low = {c.lower(): c for c in available}
    if explicit:
        if explicit in available:
            return explicit
        if explicit.lower() in low:
            return low[explicit.lower()]
        raise ValueError(
            f"{table} has no column {explicit!r} (--{what}-col); its columns are {list(available)}"
        )
    for n in names:
        if n in low and low[n] not in exclude:
            return low[n]
    if required:
        raise MissingColumn(
            f"{table} has no {what} column: looked for {', '.join(names[:6])}, ... among its "
            f"columns {list(available)}; name it with --{what}-col"
        )
    return None


def resolve(available: list[str], cfg: ColumnsConfig, table: str, image_cols=()) -> Columns:
    """Columns of a table with ``available`` column names. ``image_cols``: those holding image
    bytes (a shard); without any, a path column is required (a manifest)."""
    if image_cols:
        if cfg.image_col and cfg.image_col not in image_cols:
            raise ValueError(
                f"{table}: column {cfg.image_col!r} (--image-col) does not hold image bytes; "
                f"these do: {list(image_cols)}"
            )
        image = cfg.image_col or next(
            (c for n in IMAGE_NAMES for c in image_cols if c.lower() == n), image_cols[0]
        )
        path = None
    else:
        image = None
        path = _pick(PATH_NAMES, available, cfg.path_col, "path", table, required=True)
    taken = {path, image}
    label = _pick(LABEL_NAMES, available, cfg.label_col, "label", table, True, taken)
    taken.add(label)
    gen = _pick(GENERATOR_NAMES, available, cfg.generator_col, "generator", table, exclude=taken)
    taken.add(gen)
    src = _pick(SOURCE_NAMES, available, cfg.source_col, "source", table, exclude=taken)
    split = _pick(SPLIT_NAMES, available, cfg.split_col, "split", table, exclude=taken)
    name = None
    if image_cols:
        name = next(
            (
                available[i]
                for i, c in enumerate(map(str.lower, available))
                if c in NAME_NAMES and available[i] not in taken
            ),
            None,
        )
    return Columns(
        label=label, path=path, image=image, generator=gen, source=src, split=split, name=name
    )


class LabelMap:
    """Label values -> LABEL_REAL / LABEL_FAKE, or the values it could not place."""

    def __init__(self, cfg: ColumnsConfig, column: str, names: list[str] | None = None):
        self.real = {str(v).strip().lower() for v in cfg.real_values}
        self.column = column
        self.true_means_real = "real" in column.lower()
        self.names = names  # a Hugging Face ClassLabel's names: class i is names[i]
        # a label column of "real" and generator names (real, sdxl, midjourney): see fit
        self.others_fake = False

    def fit(self, values) -> LabelMap:
        """Look at all of a column's distinct values once: when some mean real, none is a fake
        word and the rest are unknown, the column names the generator of each fake."""
        placed = [self._place(v) for v in values if text_or_none(v)]
        labels = {label for label, _ in placed}
        self.others_fake = not self.real and LABEL_REAL in labels and None in labels and (
            LABEL_FAKE not in labels
        )  # fmt: skip
        return self

    def generator_of(self, value) -> str | None:
        """The generator a label value names (fit found a real/generator-name column)."""
        label, text = self._place(value)
        return text_or_none(value) if self.others_fake and label is None and text else None

    def __call__(self, value) -> int | None:
        label, text = self._place(value)
        if label is None and text and self.others_fake:
            return LABEL_FAKE
        return label

    def _place(self, value) -> tuple[int | None, str]:
        if value is None or (isinstance(value, float) and value != value):
            return None, ""
        if self.names and not isinstance(value, bool):
            try:
                i = int(value)
            except (TypeError, ValueError):
                i = -1
            if 0 <= i < len(self.names) and str(i) not in self.real:
                value = self.names[i]  # 0 may well mean "fake": the data set says which
        if isinstance(value, bool):
            real = value if self.true_means_real else not value
            return (LABEL_REAL if real else LABEL_FAKE), str(value)
        text = str(value).strip().lower()
        if isinstance(value, float) and value.is_integer():
            text = str(int(value))
        if self.real:
            return (LABEL_REAL if text in self.real else LABEL_FAKE), text
        if text in REAL_WORDS:
            return LABEL_REAL, text
        if text in FAKE_WORDS:
            return LABEL_FAKE, text
        try:  # integer classes: 0 is real, every other class is a kind of fake (ArtiFact)
            return (LABEL_REAL if int(text) == 0 else LABEL_FAKE), text
        except ValueError:
            return None, text

    def shown(self, value) -> str:
        """A value as the user knows it: a class index with its name."""
        try:
            i = int(value)
            if self.names and 0 <= i < len(self.names):
                return f"{i} ({self.names[i]})"
        except (TypeError, ValueError):
            pass
        return str(value)

    def error(self, table: str, values: list) -> ValueError:
        shown = ", ".join(repr(self.shown(v)) for v in values[:8])
        return ValueError(
            f"{table}: label column {self.column!r} has values ASAP cannot read as real or fake: "
            f"{shown}. Labels may be 0/1, real/fake (and synonyms such as nature/ai, human/"
            "generated), booleans, or integer classes with 0 = real; or pass --real-values "
            "V1,V2 to say which values mean real (every other value is then fake)"
        )


def text_or_none(value) -> str | None:
    if value is None or (isinstance(value, float) and value != value):
        return None
    text = str(value).strip()
    return text or None


def class_names(schema, column: str) -> list[str] | None:
    """The class names of ``column`` when a Parquet file carries Hugging Face ``datasets``
    features saying it is a ClassLabel (its integers then index these names)."""
    import json

    raw = (schema.metadata or {}).get(b"huggingface")
    if not raw:
        return None
    try:
        meta = json.loads(raw)
        features = meta.get("info", meta).get("features", {})
        feature = features.get(column) or {}
        names = feature.get("names") if feature.get("_type") == "ClassLabel" else None
    except (ValueError, AttributeError):
        return None
    return [str(n) for n in names] if isinstance(names, list) and names else None
