"""The embedded demo data set: reproducible, in the layout ingest reads, both labels in each domain
with one size/mode/format per domain, and the demo command's steps run end to end on it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from pipeline.imageio import content_hash
from pipeline.schema import open_run

REPO = Path(__file__).resolve().parents[2]
BUILD = [sys.executable, str(REPO / "data" / "build_demo.py")]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo200(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "d"
    subprocess.run([*BUILD, "--n", "200", "--out", str(out), "--ae-steps", "40"], check=True)
    return out


def test_layout_manifest_and_domains(demo200):
    m = pd.read_csv(demo200 / "manifest.csv")
    assert len(m) == 200 and m["label"].sum() == 100
    files = {str(p.relative_to(demo200)) for p in demo200.rglob("*.png")}
    assert set(m["path"]) == files
    for row in m.sample(20, random_state=0).itertuples():
        assert content_hash((demo200 / row.path).read_bytes()) == row.sha
        assert ("1_fake" if row.label else "0_real") in row.path
    assert set(m["generator"]) == {"real", "dcgan", "ae-deconv", "ae-upsample"}
    assert m["licence"].str.len().min() > 3
    for domain, grp in m.groupby("domain"):
        assert set(grp["label"]) == {0, 1}, f"{domain} lacks a class"
        looks = {(im.size, im.mode, im.format)
                 for im in (Image.open(demo200 / p) for p in grp["path"])}  # fmt: skip
        assert len(looks) == 1, f"{domain}: trivial cue in size/mode/format: {looks}"
    baseline = json.loads((demo200 / "build.json").read_text())["trivial_baseline_accuracy"]
    assert 0.3 <= baseline["all_cues"] <= 1.0


def test_same_seed_same_bytes(tmp_path):
    args = ["--n", "40", "--ae-steps", "5", "--no-baseline"]
    a, b = tmp_path / "a", tmp_path / "b"
    subprocess.run([*BUILD, *args, "--out", str(a)], check=True)
    subprocess.run([*BUILD, *args, "--out", str(b)], check=True)
    ma, mb = pd.read_csv(a / "manifest.csv"), pd.read_csv(b / "manifest.csv")
    pd.testing.assert_frame_equal(ma, mb)


def test_demo_steps_end_to_end(demo200, tmp_path):
    out = tmp_path / "run"
    subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "run", str(demo200), "--out", str(out),
         "--epochs", "2", "--layout", "pca", "--quiet"],
        check=True, cwd=REPO,
    )  # fmt: skip
    run = open_run(out)
    assert len(run.features) == 200 and run.rejects.empty
    assert set(run.images["generator"]) == {"real", "dcgan", "ae-deconv", "ae-upsample"}
    assert set(run.images["source"]) >= {"lfw", "photos"}
    assert set(run.metrics["test"]["per_generator"]) <= {"dcgan", "ae-deconv", "ae-upsample"}
