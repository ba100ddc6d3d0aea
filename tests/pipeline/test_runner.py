"""The Dask pipeline: the same rows and maps whatever the partitioning, a run killed with SIGKILL
resumes with nothing duplicated or missing, hostile inputs end in the rejects table, and the run
directory round-trips through the contract."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.config import PatternConfig, RunConfig
from pipeline.runner import run_pipeline
from pipeline.schema import (
    DISTILLED_COLUMNS,
    FEATURE_COLUMNS,
    RunDirectoryError,
    open_run,
    write_json,
)
from pipeline.synthetic import make_planted_dataset

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("small")
    make_planted_dataset(root, 40, 40, seed=3, generator="gen_a")
    make_planted_dataset(root, 0, 30, seed=4, generator="gen_b", artifact="stripes")
    return root


def _cfg(source, out, encoder, scheduler=None, **kw) -> RunConfig:
    # The random `bank` encoder scores every image fake (p 0.59-0.63), so each partition would
    # draw deletion/insertion curves for up to 32 images: 96% of a partition's encode time. A few
    # keep that path in every run here; tests/pipeline/test_patterns.py checks the curves.
    kw.setdefault("patterns", PatternConfig(faithfulness_images=8))
    return RunConfig(
        source=str(source),
        out=str(out),
        encoder_checkpoint=str(encoder),
        layout="pca",
        scheduler=scheduler,
        progress=False,
        **kw,
    )


def _maps(run) -> np.ndarray:
    return run.relevance.take(run.features["part"], run.features["row"])


def test_partitioning_does_not_change_results(small_set, random_encoder, dask_scheduler, tmp_path):
    runs = []
    for size in (110, 55, 28):  # 1, 2 and 4 partitions of 110 images
        out = tmp_path / f"p{size}"
        run_pipeline(_cfg(small_set, out, random_encoder, dask_scheduler, partition_size=size))
        runs.append(open_run(out))
    base = runs[0]
    assert len(base.features) == len(base.images) == 110
    assert sorted(base.features["part"].unique()) == [0]
    assert sorted(runs[2].features["part"].unique()) == [0, 1, 2, 3]
    for other in runs[1:]:
        assert other.features["id"].tolist() == base.features["id"].tolist()
        for col in [*DISTILLED_COLUMNS, "logit", "p_fake", "x", "y"]:
            np.testing.assert_allclose(other.features[col], base.features[col], atol=1e-5)
        np.testing.assert_allclose(_maps(other), _maps(base), atol=1e-3)  # float16 storage


def test_round_trip_through_the_contract(small_set, random_encoder, dask_scheduler, tmp_path):
    out = tmp_path / "rt"
    run_pipeline(_cfg(small_set, out, random_encoder, dask_scheduler, partition_size=32))
    run = open_run(out)
    assert list(run.features.columns) == list(FEATURE_COLUMNS)
    assert run.features["id"].is_unique and set(run.features["id"]) == set(run.images["id"])
    assert set(run.images["generator"]) == {"real", "gen_a", "gen_b"}
    maps = _maps(run)
    assert maps.shape == (110, 18, 8, 8) and np.isfinite(maps).all() and (maps >= 0).all()
    assert run.meta["model"]["sha256"] and run.meta["versions"]["torch"]
    m = run.metrics["test"]
    assert set(m["per_generator"]) == {"gen_a", "gen_b"}
    # metrics.json agrees with the tables it was computed from
    test = run.features.merge(run.images, on="id", validate="one_to_one")
    test = test[test["split"] == "test"]
    assert 0 < len(test) < 110 and run.metrics["n_test"] == len(test)
    correct = (test["p_fake"] >= 0.5).astype(int) == test["label"]
    assert m["overall"]["n"] == len(test) and m["overall"]["n_fake"] == test["label"].sum()
    assert m["overall"]["accuracy"] == pytest.approx(correct.mean(), abs=1e-9)
    # ... and so does its verdict on the detector (pipeline.trust)
    from pipeline.trust import auc_interval

    d, (auc, lo, hi) = run.metrics["detector"], auc_interval(test["label"], test["p_fake"])
    assert (d["auc"], d["auc_lo"], d["auc_hi"]) == pytest.approx((auc, lo, hi), abs=1e-12)
    assert d["verdict"] == ("detects" if lo > 0.5 else "below chance" if hi < 0.5 else "chance")
    assert run.meta["stages"]["layout"]["detector"] == d["verdict"] == run.detector["verdict"]
    reals = test[test["label"] == 0]
    for gen, got in m["per_generator"].items():
        fakes = test[(test["label"] == 1) & (test["generator"] == gen)]
        own = reals[reals["source"].isin(set(fakes["source"]))]
        assert got["n_fake"] == len(fakes) > 0
        assert got["n"] == len(fakes) + (len(own) if len(own) else len(reals))
        rows = pd.concat([own if len(own) else reals, fakes])
        expect = ((rows["p_fake"] >= 0.5).astype(int) == rows["label"]).mean()
        assert got["accuracy"] == pytest.approx(expect, abs=1e-9)
    # a second run over a finished directory recomputes nothing
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "parts").iterdir()}
    features_stamp = (out / "features.parquet").stat().st_mtime_ns
    run_pipeline(_cfg(small_set, out, random_encoder, dask_scheduler, partition_size=32))
    assert {p.name: p.stat().st_mtime_ns for p in (out / "parts").iterdir()} == stamps
    assert (out / "features.parquet").stat().st_mtime_ns == features_stamp
    # asking for another layout seed redoes the layout only
    run_pipeline(_cfg(small_set, out, random_encoder, dask_scheduler, partition_size=32, seed=1))
    assert (out / "features.parquet").stat().st_mtime_ns != features_stamp
    assert {p.name: p.stat().st_mtime_ns for p in (out / "parts").iterdir()} == stamps


def test_tiled_encoder_runs_end_to_end(small_set, dask_scheduler, tmp_path):
    """A 2 x 2 tiled encoder through the whole pipeline (encode, maps, layout, patterns): maps of
    the image's 16 x 16 patch grid, and each stored p(fake) is the model's on the image read at
    twice the tower's input."""
    import torch

    from pipeline.config import EncoderConfig
    from pipeline.encoder import create_encoder, save_encoder
    from pipeline.imageio import load_for_model, normalize

    torch.manual_seed(0)
    model = create_encoder(EncoderConfig(model_name="asap-micro-vit-64", tiles=2)).eval()
    save_encoder(model, tmp_path / "tiled.pt")
    out = tmp_path / "tiled"
    run_pipeline(_cfg(small_set, out, tmp_path / "tiled.pt", dask_scheduler, partition_size=64))
    run = open_run(out)
    maps = _maps(run)
    assert maps.shape == (110, 18, 16, 16) and np.isfinite(maps).all() and (maps >= 0).all()
    assert run.meta["model"]["tiles"] == 2 and run.meta["model"]["name"] == "asap-micro-vit-64"
    rows = run.features.merge(run.images, on="id").head(5)
    arr = np.stack([load_for_model(p, 128) for p in rows["path"]])
    x = normalize(arr, model.preprocess["mean"], model.preprocess["std"])
    with torch.no_grad():
        want = model.p_fake(model(x)[2]).numpy()
    np.testing.assert_allclose(rows["p_fake"], want, atol=1e-4)


def test_resume_refuses_different_settings(small_set, random_encoder, dask_scheduler, tmp_path):
    out = tmp_path / "r"
    run_pipeline(_cfg(small_set, out, random_encoder, dask_scheduler, partition_size=64))
    with pytest.raises(RunDirectoryError, match="partition_size"):
        run_pipeline(_cfg(small_set, out, random_encoder, dask_scheduler, partition_size=32))
    # nor mixes decoders: a residual detector's maps move with the decoder's pixels
    with pytest.raises(RunDirectoryError, match="decode"):
        run_pipeline(_cfg(small_set, out, random_encoder, dask_scheduler, partition_size=64,
                          decode="nvjpeg"))  # fmt: skip


def test_hostile_zoo_end_to_end(zoo, random_encoder, dask_scheduler, tmp_path):
    root, expect = zoo
    out = tmp_path / "zoo_run"
    run_pipeline(_cfg(root, out, random_encoder, dask_scheduler, partition_size=8))
    run = open_run(out)
    readable = {p for p, r in expect.items() if r is None}
    assert set(run.images["path_bytes"]) == readable
    assert set(run.rejects["path_bytes"]) == set(expect) - readable
    assert len(run.features) == len(readable)
    assert run.rejects["reason"].str.len().min() > 5


@pytest.mark.slow
def test_killed_run_resumes_without_duplicates_or_gaps(small_set, random_encoder, tmp_path):
    # One CPU worker with one thread: partitions run one after another, so the kill below lands
    # while the next partition computes, not while one is being written.
    args = ["--encoder", str(random_encoder), "--layout", "pca", "--partition-size", "8",
            "--maps", "all", "--quiet", "--workers", "1", "--device", "cpu",
            "--faithfulness-images", "8"]  # fmt: skip
    asap = [sys.executable, "-m", "pipeline.cli", "run", str(small_set)]
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    subprocess.run([*asap, "--out", str(ref), *args], check=True, cwd=REPO)
    # The runner's test hook SIGKILLs its own process group (driver, scheduler and workers: a new
    # session here) right after the 3rd of the 14 partition results came back.
    env = {**os.environ, "ASAP_TEST_KILL_AFTER_PARTS": "3"}
    died = subprocess.run([*asap, "--out", str(killed), *args], cwd=REPO, env=env,
                          start_new_session=True)  # fmt: skip
    assert died.returncode == -signal.SIGKILL
    done = len(list((killed / "parts").glob("features-*.parquet")))
    assert 3 <= done < 14, f"{done} of 14 partitions were written before the kill"
    assert not (killed / "features.parquet").exists()
    with pytest.raises(RunDirectoryError, match="partial"):
        open_run(killed)
    subprocess.run([*asap, "--out", str(killed), *args], check=True, cwd=REPO)
    a, b = open_run(ref), open_run(killed)
    assert b.meta["stages"]["encode"]["computed"] == 14 - done, "resume redid finished partitions"
    assert b.features["id"].is_unique and len(b.features) == len(a.features) == 110
    pd.testing.assert_frame_equal(a.features, b.features)
    np.testing.assert_array_equal(_maps(a), _maps(b))
    assert not list((killed / "parts").glob(".*tmp*")), "temporary files left behind"


def test_open_run_errors_say_what_is_wrong(tmp_path):
    with pytest.raises(RunDirectoryError, match="does not exist"):
        open_run(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunDirectoryError, match="not an ASAP run directory"):
        open_run(tmp_path / "empty")
    write_json(tmp_path / "empty" / "run.json", {"schema_version": 999})
    with pytest.raises(RunDirectoryError, match="schema version 999"):
        open_run(tmp_path / "empty")


def test_cli_help_and_errors(tmp_path):
    asap = [sys.executable, "-m", "pipeline.cli"]
    out = subprocess.run([*asap, "--help"], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0 and "run" in out.stdout and "info" in out.stdout
    out = subprocess.run([*asap, "run", "--help"], capture_output=True, text=True, cwd=REPO)
    for word in ("--pretrained", "--scheduler", "--maps", "0_real", "resumes"):
        assert word in out.stdout
    missing = tmp_path / "no_such_folder"
    out = subprocess.run(
        [*asap, "run", str(missing), "--out", str(tmp_path / "o"), "--quiet"],
        capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    assert out.returncode == 2 and str(missing) in out.stderr
    out = subprocess.run([*asap, "info", str(tmp_path)], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 2 and "not an ASAP run directory" in out.stderr


def test_background_returns_its_value_and_seconds_or_raises_its_error():
    """The layout's thread beside the pattern stage: its result, the seconds it ran (not the
    seconds until someone asked), and its error raised in the caller's thread."""
    import threading
    import time

    from pipeline.runner import Background

    gate = threading.Event()

    def slow(x):
        gate.wait(5)
        return x * 2, threading.current_thread().name

    job = Background(slow, 21)
    time.sleep(0.2)  # the caller works meanwhile; the job has not finished (the gate is shut)
    assert job._thread.is_alive() and not job.done()
    gate.set()
    (value, name), seconds = job.result()
    assert job.done()
    assert value == 42 and name == "asap-background" and name != threading.current_thread().name
    assert 0.1 < seconds

    def broken():
        raise ValueError("layout needs a 2-D array")

    with pytest.raises(ValueError, match="2-D array"):
        Background(broken).result()


def test_ingest_in_waves_gives_the_same_table(small_set, dask_scheduler, tmp_path, monkeypatch):
    """Ingest submits its tasks in waves (a single graph of 100,000 candidates made Dask warn);
    the images table is the same, row for row, whatever the chunk and wave sizes."""
    from distributed import Client

    from pipeline import runner
    from pipeline.schema import IMAGE_COLUMNS, RunPaths, read_table

    tables = []
    with Client(dask_scheduler) as client:
        for chunk, wave in ((256, 64), (7, 3), (1, 1)):
            monkeypatch.setattr(runner, "INGEST_CHUNK", chunk)
            monkeypatch.setattr(runner, "INGEST_WAVE", wave)
            paths = RunPaths(tmp_path / f"c{chunk}")
            paths.root.mkdir()
            cfg = RunConfig(source=str(small_set), out=str(paths.root), progress=False)
            info = runner.stage_ingest(cfg, paths, client)
            assert info["images"] == 110
            tables.append(read_table(paths.images, IMAGE_COLUMNS))
    for other in tables[1:]:
        pd.testing.assert_frame_equal(other, tables[0])


def test_every_lazy_scikit_learn_import_is_imported_before_background_stages():
    """Stages import scikit-learn lazily, some in a background thread beside another stage; two
    threads importing it at once can see it half-initialised, so the runner imports every such
    module first (pipeline.runner.SHARED_MODULES). A new lazy import must be listed there."""
    import ast
    import sys
    from pathlib import Path

    import pipeline
    from pipeline.runner import SHARED_MODULES, import_shared_modules

    found = set()
    for path in Path(pipeline.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sklearn"):
                found.add(node.module)
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.startswith("sklearn")}
    assert found and found <= set(SHARED_MODULES), sorted(found - set(SHARED_MODULES))
    import_shared_modules()
    assert all(name in sys.modules for name in SHARED_MODULES)
