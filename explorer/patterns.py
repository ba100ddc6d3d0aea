"""The pattern-stage tables of a run, as the explorer reads them: which patterns occur in a
selection, how often in real vs fake images and per generator, where in the image, their
exemplars, and how faithful the run's relevance maps measured (deletion/insertion areas)."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.metrics import faithfulness_summary
from pipeline.schema import (
    DIMS_METHOD,
    FAITHFULNESS_COLUMNS,
    PATTERN_COLUMNS,
    PATTERN_MEMBER_COLUMNS,
    RANDOM_ORDER,
    read_table,
)

DIMENSION_MAPS_METHOD = DIMS_METHOD  # the explanation method of the 16 dimension maps
ATTENTION_METHOD = "attention"  # plain attention: the baseline a gradient-based map must beat


@dataclass
class PatternTables:
    patterns: pd.DataFrame  # PATTERN_COLUMNS, ranked by impact
    members: pd.DataFrame  # PATTERN_MEMBER_COLUMNS joined with label and generator


def load_patterns(run) -> PatternTables | None:
    """The run's patterns, or None when the pattern stage has not been run."""
    if not (run.paths.patterns.exists() and run.paths.pattern_members.exists()):
        return None
    pats = read_table(run.paths.patterns, PATTERN_COLUMNS)
    pats = pats.sort_values("impact", ascending=False).reset_index(drop=True)
    mem = read_table(run.paths.pattern_members, PATTERN_MEMBER_COLUMNS)
    mem = mem.merge(run.images[["id", "label", "generator"]], on="id", how="left")
    return PatternTables(pats, mem)


def patterns_in(tables: PatternTables, image_ids: np.ndarray) -> pd.DataFrame:
    """Per pattern, restricted to ``image_ids``: images with the pattern, real and fake counts,
    and the run-wide impact; ranked by impact."""
    mem = tables.members[tables.members["id"].isin(image_ids)]
    per_image = mem.drop_duplicates(["pattern", "id"])
    counts = per_image.groupby("pattern").agg(
        images=("id", "size"), fake=("label", lambda s: int((s == 1).sum()))
    )
    out = tables.patterns.set_index("pattern").join(counts, how="inner")
    out["real"] = out["images"] - out["fake"]
    return out.reset_index().sort_values("impact", ascending=False)


def generator_counts(tables: PatternTables, pattern: int, image_ids: np.ndarray) -> pd.Series:
    mem = tables.members[
        (tables.members["pattern"] == pattern) & tables.members["id"].isin(image_ids)
    ]
    return mem.drop_duplicates("id")["generator"].value_counts()


def location_map(tables: PatternTables, pattern: int, grid: tuple[int, int]) -> np.ndarray:
    """Share of the pattern's patches at each grid position, shape ``grid``."""
    mem = tables.members[tables.members["pattern"] == pattern]
    out = np.zeros(grid, np.float64)
    np.add.at(out, (mem["gy"].to_numpy(), mem["gx"].to_numpy()), 1.0)
    return out / max(out.sum(), 1.0)


def exemplars(tables: PatternTables, pattern: int, kind: int, k: int = 6) -> pd.DataFrame:
    """Up to k member patches: kind 1 = most central, 2 = most extreme."""
    mem = tables.members[
        (tables.members["pattern"] == pattern) & (tables.members["exemplar"] == kind)
    ]
    return mem.sort_values("distance", ascending=(kind == 1)).head(k)


@dataclass(frozen=True)
class Difference:
    """Paired difference of deletion areas over images (this method minus the other); negative:
    the map finds the evidence sooner."""

    mean: float
    se: float  # standard error over images
    lo: float  # 95% bootstrap interval
    hi: float
    images: int = 0  # paired images


@dataclass(frozen=True)
class MethodFaithfulness:
    """One patch order's deletion/insertion areas (pipeline.metrics.faithfulness_summary)."""

    method: str  # explanation method, or RANDOM_ORDER
    images: int  # images measured
    deletion: float  # mean area under p(fake) as the top patches are removed; lower = faithful
    insertion: float  # mean area as they are revealed on a blurred image; higher = faithful
    vs_random: Difference | None  # None when not measurable (same order, < 2 paired images)
    vs_attention: Difference | None
    # vs_random split by the detector's confidence: "sure" (p(fake) >= SURE_P_FAKE), "unsure"
    vs_random_by_confidence: dict[str, Difference | None] = field(default_factory=dict)


@dataclass(frozen=True)
class Faithfulness:
    """How faithful each stored fake map measured on this run, the run's method first."""

    run_method: str
    methods: dict[str, MethodFaithfulness]  # includes RANDOM_ORDER when measured

    def of(self, method: str) -> MethodFaithfulness | None:
        return self.methods.get(method)

    @property
    def random(self) -> MethodFaithfulness | None:
        return self.methods.get(RANDOM_ORDER)

    @property
    def attention(self) -> MethodFaithfulness | None:
        return self.methods.get(ATTENTION_METHOD)


def load_faithfulness(run) -> Faithfulness | None:
    """The run's measured faithfulness, or None when the pattern stage has not written it. Cached
    by the table's path and modification time, so a page reloaded after `asap patterns` sees it."""
    path = run.paths.faithfulness
    try:
        mtime = path.stat().st_mtime_ns
    except FileNotFoundError:
        return None
    return _faithfulness(str(path), mtime, run.relevance.methods[0])


@lru_cache(maxsize=8)
def _faithfulness(path: str, mtime_ns: int, run_method: str) -> Faithfulness:
    summary = faithfulness_summary(read_table(Path(path), FAITHFULNESS_COLUMNS), run_method)
    return Faithfulness(run_method, {m: _method(m, v) for m, v in summary.items()})


def _difference(d: dict | None) -> Difference | None:
    return None if d is None else Difference(d["mean"], d["se"], d["lo"], d["hi"], d["images"])


def _method(name: str, v: dict) -> MethodFaithfulness:
    """One entry of faithfulness_summary's dict as a MethodFaithfulness."""
    bands = {b: _difference(d) for b, d in v.get("vs_random_by_confidence", {}).items()}
    return MethodFaithfulness(name, v["images"], v["deletion"], v["insertion"],
                              _difference(v["vs_random"]), _difference(v["vs_attention"]),
                              bands)  # fmt: skip
