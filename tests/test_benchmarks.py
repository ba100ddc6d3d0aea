"""The benchmark scripts run end to end on tiny sizes and print their summary line (no timing is
asserted: speed is measured by running the scripts, not by tests)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _last_line(args: list[str]) -> str:
    out = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, cwd=REPO, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip().splitlines()[-1]


def test_pipeline_benchmark_runs():
    line = _last_line(["benchmarks/pipeline.py", "--models", "asap-micro-vit-64",
                       "--n-tiny", "64", "--repeats", "1"])  # fmt: skip
    assert re.fullmatch(r"relevance_overhead=\d+\.\d+ pipeline_efficiency=\d+\.\d+", line), line


def test_faithfulness_benchmark_runs():
    methods = "attention,chefer_last,occlusion"
    line = _last_line(["benchmarks/faithfulness.py", "--quick", "--n-real", "12", "--n-fake", "3",
                       "--epochs", "1", "--methods", methods])  # fmt: skip
    want = r"pointing=\d+\.\d+ deletion=\d+\.\d+ random=\d+\.\d+ cost=\d+\.\d+"
    assert re.fullmatch(want, line), line


def test_blur_benchmark_runs():
    line = _last_line(["benchmarks/blur.py", "--n", "64", "--parts", "1", "--repeats", "1"])
    assert re.fullmatch(r"blur_speedup=\d+\.\d+ partition_speedup=\d+\.\d+", line), line


def test_pattern_stability_benchmark_runs():
    line = _last_line(["benchmarks/pattern_stability.py", "--build", "192", "--seeds", "1",
                       "--noise", "1e-3"])  # fmt: skip
    want = r"ari_seeds=-?\d\.\d+ ari_noise=-?\d\.\d+ stability=\d\.\d+ significant_stable=\d+"
    assert re.fullmatch(want, line), line


def test_layout_benchmark_runs():
    line = _last_line(["benchmarks/layout.py", "--n", "1200", "--fit-sample", "600"])
    want = r"full_s=\d+\.\d sample_s=\d+\.\d knn_kept_full=\d\.\d+ knn_kept_sample=\d\.\d+"
    assert re.fullmatch(want, line), line
    line = _last_line(["benchmarks/layout.py", "--n", "1200", "--fit-sample", "600",
                       "--workers", "1", "--no-full"])  # fmt: skip
    want = r"full_s=nan sample_s=\d+\.\d knn_kept_full=nan knn_kept_sample=\d\.\d+ "
    assert re.fullmatch(want + r"workers_s=\d+\.\d same=1", line), line


def test_explorer_benchmark_runs():
    line = _last_line(["benchmarks/explorer.py", "--sizes", "20000", "--repeats", "1"])
    want = r"first_frame_ms=\d+ reaggregate_ms=\d+ glyphs_ms=\d+ select_1m_ms=\d+ rss_mb=\d+"
    assert re.fullmatch(want, line), line


@pytest.mark.browser
def test_browser_benchmark_runs():
    """Every action of the browser benchmark changes the page's pixels (a wait that never sees a
    change prints inf and fails the pattern)."""
    line = _last_line(["benchmarks/browser.py", "--run", "", "--sizes", "20000", "--repeats", "1",
                       "--sessions", "2", "--quiet", "500", "--timeout", "120"])  # fmt: skip
    want = r"load_ms=\d+ zoom_ms=\d+ select_ms=\d+ filter_ms=\d+ sessions20_p95_ms=\d+"
    assert re.fullmatch(want, line), line


def test_scale_benchmark_runs(tmp_path):
    """The scale benchmark writes its images, runs `asap run` in a fresh process and prints the
    stages and its summary line; the run it made records what the workers ran on."""
    images, out = tmp_path / "images", tmp_path / "run"
    line = _last_line(["benchmarks/scale.py", "--n", "240", "--images", str(images), "--out",
                       str(out), "--model", "asap-micro-vit-64", "--ceiling-seconds", "1", "--",
                       "--epochs", "1",
                       "--partition-size", "64", "--no-patterns", "--layout", "pca"])  # fmt: skip
    want = r"e2e_img_per_s=\d+\.\d+ encode_efficiency=\d+\.\d+ driver_rss_mb=\d+"
    assert re.fullmatch(want, line), line
    assert len(list(images.rglob("*.jpg"))) == 240
    meta = json.loads((out / "run.json").read_text())
    assert meta["stages"]["encode"]["images"] == 240
    assert meta["stages"]["encode"]["device"] == ["cpu"]
    assert meta["stages"]["encode"]["precision"] == ["fp32"]
    for stage in ("ingest", "train", "encode", "layout"):
        assert meta["resources"][stage]["driver_peak_rss_mb"] > 0
        assert meta["resources"][stage]["worker_peak_rss_mb"] > 0


def test_visibility_benchmark_runs():
    """Fixed statistics, no training: the energy channel sees a strong checkerboard on the smooth
    textures (a deterministic computation, no margin on a trained model)."""
    args = ["benchmarks/visibility.py", "--families", "checker,hue", "--n", "40"]
    out = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=REPO,
                         timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    assert re.fullmatch(r"photo_best_auc=checker:\d\.\d{3},hue:\d\.\d{3}", lines[-1]), lines[-1]
    row = next(ln for ln in lines if ln.startswith("| checker | texture |"))
    assert float(row.split("|")[3]) > 0.9, row


def test_new_user_benchmark_runs(tmp_path):
    """The new-user check writes a planted set with its truth beside it, runs `asap run` in a fresh
    process and scores the run against the truth; re-scored with every trace mask covering the
    whole image, every detected fake's map points at its trace; --methods re-draws their maps."""
    images, out = tmp_path / "images", tmp_path / "run"
    args = ["benchmarks/new_user.py", "--n-real", "16", "--n-fake", "8", "--images", str(images),
            "--out", str(out), "--", "--model", "asap-micro-vit-64", "--epochs", "1",
            "--partition-size", "64", "--layout", "pca"]  # fmt: skip
    line = _last_line(args)
    num = r"(\d+\.\d+|nan)"
    want = (rf"detected_min={num} pointing_min={num} deletion={num} random={num} "
            rf"attention={num} strong=\d+ strong_literal=\d+")  # fmt: skip
    assert re.fullmatch(want, line), line
    assert len(list(images.rglob("*.png"))) == 2 * 16 + 2 * 2 * 8
    masks_file = tmp_path / "images-masks.npy"
    masks = np.load(masks_file)
    assert (
        masks.shape == (64, 64, 64) and masks[:32].sum() == 0 and masks[32:].any(axis=(1, 2)).all()
    )
    np.save(masks_file, np.ones_like(masks))
    out2 = subprocess.run([sys.executable, "benchmarks/new_user.py", "--score-only", "--images",
                           str(images), "--out", str(out), "--methods", "attention,occlusion"],
                          capture_output=True, text=True, cwd=REPO, timeout=300)  # fmt: skip
    assert out2.returncode == 0, out2.stderr[-2000:]
    before = dict(kv.split("=") for kv in line.split())
    after = dict(kv.split("=") for kv in out2.stdout.strip().splitlines()[-1].split())
    assert after["detected_min"] == before["detected_min"]
    if float(before["detected_min"]) > 0:  # the detected fakes' maps re-drawn by each method
        for name in ("attention", "occlusion"):
            assert re.search(rf"^\| (photo|texture) \| {name} \| \d\.\d\d \(\d+\) \|", out2.stdout,
                             re.M), out2.stdout  # fmt: skip
    zero = re.search(r"fake map is all zero: (\S+)", out2.stdout).group(1)
    if float(before["detected_min"]) > 0 and zero == "0.000":
        # some fake of every family detected, none with an empty map: each map's peak is on "it"
        assert after["pointing_min"] == "1.000", out2.stdout


def test_token_probe_benchmark_runs():
    """The probe reads the tokens after the embedding and after every block of a kept encoder
    (here the committed golden one, on a tiny suite), and a family it does not know is refused
    with a one-line error."""
    from pipeline.encoder import load_encoder

    golden = "tests/fixtures/golden-micro.pt"
    args = ["benchmarks/token_probe.py", "--encoder", golden, "--n-real", "24", "--n-fake", "6"]
    out = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=REPO,
                         timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    assert re.fullmatch(r"head=(\d\.\d{3}|nan) probe_best=(\d\.\d{3}|nan) block=\d+",
                        lines[-1]), lines[-1]  # fmt: skip
    depth = len(load_encoder(REPO / golden).visual.transformer.resblocks)
    probes = [ln for ln in lines if ln.startswith("| embedding probe") or ln.startswith("| block ")]
    assert len(probes) == depth + 1, lines
    bad = subprocess.run([sys.executable, *args, "--only", "nosuch"], capture_output=True,
                         text=True, cwd=REPO, timeout=300)  # fmt: skip
    assert bad.returncode != 0 and "--only must be one of" in bad.stderr
    assert "Traceback" not in bad.stderr
