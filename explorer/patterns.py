"""The pattern tables of a run, as the explorer reads them: which patterns occur in a selection,
how often in real vs fake images and per generator, where in the image, and their exemplars."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipeline.schema import PATTERN_COLUMNS, PATTERN_MEMBER_COLUMNS, read_table


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
