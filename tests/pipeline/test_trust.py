"""How far a run's detector can be trusted (pipeline.trust): the held-out AUC's interval and
verdict, the resizing note before training, and where the user reads them (metrics.json,
`asap info`, the log, the explorer)."""

import logging

import numpy as np
import pytest

from pipeline.trust import auc_interval, detector_check, resolution_gap


def test_the_interval_at_chance_is_the_mann_whitney_null_variance():
    # Hanley & McNeil's standard error at AUC 0.5 equals the exact null variance of the
    # Mann-Whitney statistic, (n1 + n2 + 1) / (12 n1 n2): an independent formula
    for n_real, n_fake in [(100, 100), (30, 300), (1000, 7)]:
        labels = np.r_[np.zeros(n_real), np.ones(n_fake)]
        a, lo, hi = auc_interval(labels, np.full(len(labels), 0.3))  # every score tied
        se = np.sqrt((n_real + n_fake + 1) / (12 * n_real * n_fake))
        assert a == 0.5
        assert lo == pytest.approx(0.5 - 1.959964 * se, rel=1e-9)
        assert hi == pytest.approx(0.5 + 1.959964 * se, rel=1e-9)


def test_the_interval_narrows_with_more_images_and_stays_in_0_1():
    rng = np.random.default_rng(0)
    widths = []
    for n in (50, 500, 5000):
        labels = np.r_[np.zeros(n), np.ones(n)]
        p = np.r_[rng.normal(0, 1, n), rng.normal(0.5, 1, n)]
        a, lo, hi = auc_interval(labels, p)
        assert lo < a < hi
        widths.append(hi - lo)
    assert widths[0] > widths[1] > widths[2]
    assert auc_interval([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == (1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="both"):
        auc_interval([1, 1], [0.2, 0.3])


def test_verdicts():
    labels = np.r_[np.zeros(200), np.ones(200)]
    sep = np.r_[np.linspace(0, 0.6, 200), np.linspace(0.4, 1, 200)]
    tied = detector_check(labels, np.full(400, 0.5))
    assert tied["verdict"] == "chance" and tied["auc_lo"] < 0.5 < tied["auc_hi"]
    assert "not evidence" in tied["message"] and "--tiles" in tied["message"]
    good = detector_check(labels, sep)
    assert good["verdict"] == "detects" and good["auc_lo"] > 0.5
    assert (good["n_real"], good["n_fake"]) == (200, 200)
    bad = detector_check(labels, 1 - sep)
    assert bad["verdict"] == "below chance" and bad["auc_hi"] < 0.5
    assert "asap scan" in bad["message"]
    none = detector_check(np.zeros(10), np.linspace(0, 1, 10), "val+test")
    assert none["verdict"] == "unknown" and none["auc"] is None and "val+test" in none["message"]


@pytest.mark.parametrize(
    "w, h, tiles, factor, note",
    [
        ([256] * 5, [256] * 5, 1, 4.0, "--tiles 4"),  # the scale benchmark's images
        ([256] * 5, [256] * 5, 4, 1.0, None),  # already tiled
        ([100, 100, 100], [120, 90, 100], 1, 100 / 64, None),  # under 2x: no note
        ([300, 640, 500], [200, 480, 375], 1, 375 / 64, "--tiles 6"),  # shorter sides
        ([4000], [3000], 1, 3000 / 64, "--tiles 8"),  # capped at MAX_TILES
    ],
)
def test_resolution_gap(w, h, tiles, factor, note):
    gap = resolution_gap(np.array(w), np.array(h), 64, tiles)
    assert gap["factor"] == pytest.approx(factor, abs=1e-3)
    assert gap["model_side"] == 64 * tiles
    if note is None:
        assert gap["note"] is None
    else:
        assert note in gap["note"] and "averages away" in gap["note"]
    assert resolution_gap(np.array([]), np.array([]), 64, 1)["note"] is None


def test_training_on_large_images_says_so_before_it_trains(tmp_path, caplog):
    import torch

    from pipeline import ingest, runner
    from pipeline.config import EncoderConfig, RunConfig, TrainConfig
    from pipeline.schema import RunPaths
    from pipeline.synthetic import make_planted_dataset

    make_planted_dataset(tmp_path / "imgs", 12, 12, size=160, seed=5)
    images = ingest.finalize(
        ingest.inspect_candidates(ingest.discover(tmp_path / "imgs"), 10**8, 8)[0]
    )
    (tmp_path / "run" / "model").mkdir(parents=True)
    cfg = RunConfig(source=str(tmp_path / "imgs"), out=str(tmp_path / "run"), progress=False,
                    encoder=EncoderConfig(model_name="asap-micro-vit-64"),
                    train=TrainConfig(epochs=1, seed=0))  # fmt: skip
    torch.manual_seed(0)
    with caplog.at_level(logging.WARNING, logger="pipeline.runner"):
        info = runner.stage_train(cfg, RunPaths(tmp_path / "run"), images)
    notes = [r.getMessage() for r in caplog.records if "averages away" in r.getMessage()]
    assert len(notes) == 1 and "160 px" in notes[0] and "--tiles 3" in notes[0]
    assert info["resolution"]["factor"] == pytest.approx(2.5)


def test_a_chance_verdict_says_when_training_gave_up_for_lack_of_signal():
    from pipeline.trust import detector_check, with_training

    y = np.r_[np.zeros(50), np.ones(50)]
    tied = detector_check(y, np.full(100, 0.5))
    gave_up = {"stop_reason": "no_signal", "history": [{"images": 2000}, {"images": 26000}]}
    got = with_training(tied, gave_up)
    assert got["verdict"] == "chance" and got["message"].startswith(tied["message"])
    assert "after 26,000 training images" in got["message"]
    assert "--chance-images 0" in got["message"]
    # patience, an encoder given with --encoder, or a detector that works: the message as it was
    assert with_training(tied, {"stop_reason": "patience", "history": []}) == tied
    assert with_training(tied, {"trained": False}) == tied == with_training(tied, None)
    works = detector_check(y, y * 0.8 + 0.1)
    assert works["verdict"] == "detects" and with_training(works, gave_up) == works
