"""A command line that never leaves a user stuck: everything that can be checked is checked before
Dask starts or an image is read, errors are one line (the traceback with --debug and in the run's
asap.log), a failed start leaves nothing that blocks the corrected command, identical trainings
give identical checkpoints, and a cluster without workers is reported instead of waited on."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline import cli, runner
from pipeline.config import RunConfig
from pipeline.imageio import ImageRejected, decode_image
from pipeline.schema import RunDirectoryError, RunPaths, write_json
from tests.conftest import png_bytes
from tests.pipeline import layouts

REPO = Path(__file__).resolve().parents[2]


def _asap(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args], capture_output=True, text=True, cwd=REPO
    )


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("src")
    png = layouts.Pngs()
    for lab in ("0_real", "1_fake"):
        for i in range(3):
            png.write(root / "gen" / lab / f"{i}.png")
    return root


BAD = {  # extra arguments -> words the one-line error must contain
    "out-is-a-file": (["--out", "{file}"], "is a file"),
    "out-below-a-file": (["--out", "{file}/run"], "is a file"),
    "epochs-0": (["--epochs", "0"], "epochs"),
    "patience-0": (["--patience", "0"], "patience"),
    "lr-negative": (["--lr", "-1"], "learning rate"),
    "train-limit-1": (["--train-limit", "1"], "--train-limit"),
    "chance-images-negative": (["--chance-images", "-1"], "--chance-images"),
    "unknown-model": (["--model", "ViT-Nope-99"], "unknown model"),
    "resnet-model": (["--model", "RN50"], "ViT"),
    "missing-checkpoint": (["--pretrained", "{tmp}/nope.bin"], "does not exist"),
    "unknown-tag": (["--model", "ViT-B-32", "--pretrained", "nosuchtag"], "known tags"),
    "missing-encoder": (["--encoder", "{tmp}/nope.pt"], "--encoder"),
    "bad-scheduler": (["--scheduler", "not an address"], "tcp://HOST:PORT"),
    "bad-device": (["--device", "gpu7"], "--device"),
    "workers-0": (["--workers", "0"], "--workers"),
    "patterns-1": (["--patterns", "1"], "--patterns"),
    "partition-0": (["--partition-size", "0"], "--partition-size"),
    "batch-0": (["--batch-size", "0"], "--batch-size"),
    "max-pixels-0": (["--max-pixels", "0"], "--max-pixels"),
    "bad-maps": (["--maps", "magic"], "magic"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_settings_fail_in_one_line_before_anything_runs(
    case, source, tmp_path, capsys, monkeypatch
):
    """In-process (an exception escaping main would fail the test): one line, and no cluster."""
    import distributed

    def no_cluster(*a, **k):
        raise AssertionError("a Dask cluster was started for a run that cannot work")

    monkeypatch.setattr(distributed, "LocalCluster", no_cluster)
    monkeypatch.setattr(distributed, "Client", no_cluster)
    extra, words = BAD[case]
    (tmp_path / "afile").write_text("x")
    fill = {"file": str(tmp_path / "afile"), "tmp": str(tmp_path)}
    extra = [a.format(**fill) for a in extra]
    args = ["run", str(source), "--quiet", *extra]
    if "--out" not in extra:
        args += ["--out", str(tmp_path / "run")]
    rc = cli.main(args)
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("asap: error:"), err
    assert words in lines[0]
    assert not (tmp_path / "run").exists()  # nothing left behind


def test_debug_shows_the_traceback(tmp_path):
    out = _asap("run", str(tmp_path / "nowhere"), "--out", str(tmp_path / "run"), "--debug")
    assert out.returncode != 0 and "Traceback" in out.stderr and "nowhere" in out.stderr


def test_unlabelled_source_names_layouts_and_paths_and_leaves_no_run(tmp_path):
    png = layouts.Pngs()
    for i in range(7):
        png.write(tmp_path / "mine" / "pics" / f"{i}.png")
    out = _asap("run", str(tmp_path / "mine"), "--out", str(tmp_path / "run"), "--quiet")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "7 images under" in out.stderr and "0_real|1_fake" in out.stderr
    assert str(Path("pics") / "0.png") in out.stderr and "and 2 more" in out.stderr
    assert not (tmp_path / "run").exists()


def test_an_internal_error_keeps_its_traceback_in_the_run_log(
    source, tmp_path, monkeypatch, capsys
):
    def boom(cfg, fresh=False):
        raise RuntimeError("simulated CUDA out of memory")

    monkeypatch.setattr(runner, "run_pipeline", boom)
    out = tmp_path / "run"
    rc = cli.main(["run", str(source), "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 3
    assert "internal error: RuntimeError: simulated CUDA out of memory" in err
    assert str(out / "asap.log") in err and "Traceback" not in err
    log = (out / "asap.log").read_text()
    assert "Traceback" in log and "simulated CUDA out of memory" in log
    with pytest.raises(RuntimeError, match="simulated"):
        cli.main(["run", str(source), "--out", str(out), "--quiet", "--debug"])


def test_without_quiet_the_console_shows_progress_but_no_traceback(
    source, tmp_path, monkeypatch, capsys
):
    """Without --quiet the run's progress goes to the console too: an error there is still one
    line, and its traceback goes to the run's log only (it once reached the console as well)."""

    def boom(cfg, fresh=False):
        logging.getLogger("pipeline.runner").info("progress line")
        raise RunDirectoryError("holds a run with different encoder")

    monkeypatch.setattr(runner, "run_pipeline", boom)
    out = tmp_path / "run"
    out.mkdir()  # an existing run directory, as when a run is resumed with other settings
    rc = cli.main(["run", str(source), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "progress line" in err
    assert "asap: error: holds a run with different encoder" in err and "Traceback" not in err
    log = (out / "asap.log").read_text()
    assert "Traceback" in log and "different encoder" in log


def test_a_run_that_produced_nothing_does_not_block_the_corrected_command(tmp_path):
    """run.json from a start that failed before ingest finished: the next command may change its
    settings; once images exist, a changed source is refused as before."""
    out = tmp_path / "run"
    first = RunConfig(source=str(tmp_path / "wrong"), out=str(out))
    runner._init_meta(first, RunPaths(out), fresh=False)
    fixed = RunConfig(source=str(tmp_path / "right"), out=str(out))
    meta = runner._init_meta(fixed, RunPaths(out), fresh=False)
    assert meta["config"]["source"] == str(tmp_path / "right")
    RunPaths(out).images.write_bytes(b"")  # as if ingest had finished
    from pipeline.schema import RunDirectoryError

    with pytest.raises(RunDirectoryError, match="source"):
        runner._init_meta(first, RunPaths(out), fresh=False)


def test_old_run_json_without_columns_still_resumes(tmp_path):
    out = tmp_path / "run"
    cfg = RunConfig(source=str(tmp_path), out=str(out))
    runner._init_meta(cfg, RunPaths(out), fresh=False)
    meta = __import__("json").loads((out / "run.json").read_text())
    del meta["config"]["columns"]  # written before the option existed
    write_json(out / "run.json", meta)
    RunPaths(out).images.write_bytes(b"")
    assert (
        runner._init_meta(cfg, RunPaths(out), fresh=False)["config"]["columns"]["label_col"] is None
    )


def test_bomb_messages_quote_asaps_own_limit(monkeypatch):
    from PIL import Image

    data = png_bytes(np.zeros((100, 100, 3), np.uint8))
    with pytest.raises(ImageRejected, match=r"10,000 pixels is more than ASAP's limit of 5,000"):
        decode_image(data, max_pixels=5000)
    # PIL's own guard fires first for huge images; the message still names ASAP's limit
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageRejected, match=r"10,000 pixels is more than ASAP's limit of 64,000"):
        decode_image(data, max_pixels=64_000)


def test_identical_trainings_give_identical_checkpoints(tmp_path):
    import torch

    from pipeline import ingest
    from pipeline.config import EncoderConfig, TrainConfig
    from pipeline.encoder import create_encoder, save_encoder
    from pipeline.synthetic import make_planted_dataset
    from pipeline.train import train_encoder

    make_planted_dataset(tmp_path / "imgs", 24, 24, seed=5)
    images = ingest.finalize(
        ingest.inspect_candidates(ingest.discover(tmp_path / "imgs"), 10**8, 8)[0]
    )
    shas = []
    for i in range(2):
        torch.manual_seed(0)
        model = create_encoder(EncoderConfig(model_name="asap-micro-vit-64"))
        info = train_encoder(model, images, TrainConfig(epochs=1, seed=0), device="cpu")
        assert info["train_seconds"] > 0  # timings are measured, and kept out of the file:
        shas.append(save_encoder(model, tmp_path / f"enc{i}.pt", extra=runner.deterministic(info)))
    assert shas[0] == shas[1]


def test_a_cluster_without_workers_is_reported_not_waited_on():
    from distributed import Client, LocalCluster

    from pipeline.watch import WorkersGone, as_completed_watched

    with (
        LocalCluster(n_workers=0, processes=False, dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):
        fut = client.submit(sum, [1, 2], pure=False)
        with pytest.raises(WorkersGone, match="no worker"):
            list(as_completed_watched(client, [fut], poll_s=0.1, gone_s=0.5))


def test_a_run_on_a_cluster_that_lost_its_workers_stops_with_a_message(
    tmp_path, monkeypatch, source
):
    from distributed import LocalCluster

    from pipeline import watch

    monkeypatch.setattr(watch, "POLL_S", 0.1)
    monkeypatch.setattr(watch, "WORKERS_GONE_S", 0.5)
    with LocalCluster(n_workers=0, processes=False, dashboard_address=":0") as cluster:
        cfg = RunConfig(
            source=str(source),
            out=str(tmp_path / "run"),
            progress=False,
            scheduler=cluster.scheduler_address,
        )
        with pytest.raises(watch.WorkersGone, match="no worker for"):
            runner.run_pipeline(cfg)


def test_a_run_made_before_a_new_training_setting_still_resumes(tmp_path):
    out = tmp_path / "run"
    cfg = RunConfig(source=str(tmp_path), out=str(out))
    runner._init_meta(cfg, RunPaths(out), fresh=False)
    meta = __import__("json").loads((out / "run.json").read_text())
    del meta["config"]["train"]["train_limit"]  # written before --train-limit existed
    write_json(out / "run.json", meta)
    RunPaths(out).images.write_bytes(b"")
    assert (
        runner._init_meta(cfg, RunPaths(out), fresh=False)["config"]["train"]["train_limit"] is None
    )
    from dataclasses import replace

    from pipeline.config import TrainConfig
    from pipeline.schema import RunDirectoryError

    with pytest.raises(RunDirectoryError, match="train"):
        runner._init_meta(replace(cfg, train=TrainConfig(train_limit=10)), RunPaths(out), False)


def test_main_leaves_no_log_handlers_behind(tmp_path, capsys):
    """main() may run many times in one process (tests, a notebook): a handler left on a stream
    that was since closed made a later run's log record fail with a traceback on stderr."""
    import logging

    log = logging.getLogger("pipeline")
    before = list(log.handlers)
    assert cli.main(["run", str(tmp_path / "missing"), "--out", str(tmp_path / "r")]) == 2
    assert cli.main(["run", str(tmp_path / "missing"), "--out", str(tmp_path / "r"),
                     "--patience", "0"]) == 2  # fmt: skip
    assert log.handlers == before
    capsys.readouterr()


def test_too_few_stability_runs_are_refused_with_the_option(tmp_path, capsys):
    assert cli.main(["run", str(tmp_path), "--out", str(tmp_path / "r"),
                     "--stability-runs", "1"]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "--stability-runs must be >= 2" in err and "Traceback" not in err


def test_info_says_how_training_ended():
    from pipeline.cli import _training_info

    assert _training_info(None) is None
    assert _training_info({"trained": False, "encoder_sha256": "ab"}) == {"trained": False}
    hist = [{"val_auc": 0.51}, {"val_auc": 0.55}, {"val_auc": None}, {"val_auc": 0.49}]
    got = _training_info({"trained": True, "history": hist, "best_round": 1, "epochs_run": 2.0,
                          "stop_reason": "no_signal", "val_signal": False})  # fmt: skip
    assert got == {"trained": True, "rounds": 4, "best_round": 1, "epochs_run": 2.0,
                   "stop_reason": "no_signal", "val_signal": False,
                   "best_val_auc": 0.55}  # fmt: skip
    older = _training_info({"history": [{"val_loss": 0.6}], "best_round": 0})  # before val AUCs
    assert older["rounds"] == 1 and older["best_val_auc"] is None and older["stop_reason"] is None
