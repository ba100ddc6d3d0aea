"""The planted suites of benchmarks/faithfulness.py: every family's mask is where its pixels
changed (the pointing game measures against it), and a suite is the same for the same seed."""

import numpy as np
import pytest

from pipeline.synthetic import (
    PLANTERS,
    SUITE_FAMILIES,
    UNSEEN_FAMILIES,
    PhotoCrops,
    make_suite,
    texture,
)


@pytest.mark.parametrize("family", [*SUITE_FAMILIES, *UNSEEN_FAMILIES])
def test_each_family_changes_its_masked_pixels_and_no_others(family):
    photos = PhotoCrops()
    for seed in range(6):
        rng = np.random.default_rng(seed)
        base = (texture(rng, 64) if seed % 2 else photos(rng, 64)).astype(np.float32)
        arr = base.copy()
        mask = PLANTERS[family](rng, arr)
        assert mask.shape == (64, 64) and mask.dtype == bool
        assert 10 <= mask.sum() <= 600, mask.sum()  # a local trace, not the whole image
        change = np.abs(arr - base).max(axis=2)
        # outside the mask at most a faint rim (the hue disc's soft edge: < 3 grey levels)
        assert change[~mask].max() < 3.0, change[~mask].max()
        assert (change[mask] >= 1.0).any()  # and something changed inside it


def test_unseen_families_are_new_and_a_suite_is_the_same_for_a_seed(tmp_path):
    assert not set(UNSEEN_FAMILIES) & set(SUITE_FAMILIES)
    a, ma = make_suite(tmp_path / "a", 2, 1, families=UNSEEN_FAMILIES, seed=3)
    b, mb = make_suite(tmp_path / "b", 2, 1, families=UNSEEN_FAMILIES, seed=3)
    assert sorted(a["family"].unique()) == sorted(["real", *UNSEEN_FAMILIES])
    assert (a["label"] == (a["family"] != "real")).all()
    for pa, pb in zip(a["path"], b["path"]):
        assert open(pa, "rb").read() == open(pb, "rb").read()
        assert np.array_equal(ma[pa], mb[pb])
    fakes = a[a["label"] == 1]
    for _, r in fakes.iterrows():  # the recorded box bounds the mask
        ys, xs = np.nonzero(ma[r["path"]])
        assert (r["top"], r["left"], r["bottom"], r["right"]) == (
            ys.min(),
            xs.min(),
            ys.max() + 1,
            xs.max() + 1,
        )
