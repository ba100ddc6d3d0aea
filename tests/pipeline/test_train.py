"""Training: early stopping keeps the best epoch and stops after `patience` epochs without
improvement; the temperature fit recovers a known temperature, also far below the old grid's
floor; a short training run on a frozen-order tiny set obeys both (properties, not accuracy)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.config import TrainConfig
from pipeline.train import LOG_T_RANGE, EarlyStopping, fit_calibration, fit_temperature


def test_early_stopping_keeps_the_best_and_stops_after_patience():
    stop = EarlyStopping(patience=3)
    losses = [1.0, 0.8, 0.7, 0.71, 0.7, 0.69995, 0.5, 0.6, 0.6, 0.6, 0.1]
    said = [stop.step(e, v) for e, v in enumerate(losses)]
    # 0.69995 is not a relative improvement of 1e-3 over 0.7; 0.5 is
    assert [imp for imp, _ in said[:7]] == [True, True, True, False, False, False, True]
    assert said[5] == (False, True), "three epochs without improvement: stop"
    stop = EarlyStopping(patience=3)
    for e, v in enumerate(losses[:3] + losses[6:10]):
        improved, halt = stop.step(e, v)
    assert stop.best_epoch == 3 and stop.best == 0.5 and halt


@pytest.mark.parametrize("t_true", [0.02, 0.3, 1.0, 4.0])
def test_temperature_fit_recovers_a_known_temperature(t_true):
    rng = np.random.default_rng(0)
    s = rng.normal(0, 3, 20000)  # calibrated logits
    y = (rng.random(len(s)) < 1 / (1 + np.exp(-s))).astype(np.float64)
    t = fit_temperature(s * t_true, y)  # the detector's logits are the calibrated ones times T
    assert math.isclose(t, t_true, rel_tol=0.1), t
    assert math.exp(LOG_T_RANGE[0]) < t < math.exp(LOG_T_RANGE[1])


def test_temperature_fit_stays_finite_on_a_separated_split():
    """Platt's targets: perfectly separated logits get a temperature inside the range, and the
    most confident p(fake) does not saturate (with the plain labels the fit runs to T -> 0)."""
    z = np.concatenate([np.linspace(5, 30, 50), -np.linspace(5, 30, 50)])
    y = np.array([1] * 50 + [0] * 50)
    t = fit_temperature(z, y)
    assert math.exp(LOG_T_RANGE[0]) * 1.01 < t < math.exp(LOG_T_RANGE[1])
    p = 1 / (1 + np.exp(-z / t))
    assert t > 1 and p.max() < 0.9999 and p.min() > 1e-4
    assert ((p >= 0.5) == y).all()


@pytest.mark.parametrize("t_true,b_true", [(0.3, 0.0), (2.0, 1.5), (0.05, -2.0)])
def test_platt_fit_recovers_a_known_temperature_and_shift(t_true, b_true):
    """Logits whose calibrated value is logit / T + b: the fit finds both, where the
    temperature alone cannot absorb the shift."""
    rng = np.random.default_rng(1)
    s = rng.normal(0, 3, 20000)
    y = (rng.random(len(s)) < 1 / (1 + np.exp(-s))).astype(np.float64)
    z = (s - b_true) * t_true
    t, b = fit_calibration(z, y)
    assert math.isclose(t, t_true, rel_tol=0.1), t
    assert abs(b - b_true) < 0.15, b

    def nll(t, b):
        p = np.clip(1 / (1 + np.exp(-(z / t + b))), 1e-12, 1 - 1e-12)
        return -(y * np.log(p) + (1 - y) * np.log(1 - p)).mean()

    assert nll(t, b) <= nll(fit_temperature(z, y), 0.0) + 1e-9


def test_platt_fit_on_a_separated_split_and_degenerate_inputs():
    z = np.concatenate([np.linspace(5, 30, 50), -np.linspace(5, 30, 50)])
    y = np.array([1] * 50 + [0] * 50)
    t, b = fit_calibration(z, y)
    p = 1 / (1 + np.exp(-(z / t + b)))
    assert np.isfinite(t) and t > 0 and abs(b) < 1.0
    assert ((p >= 0.5) == y).all() and p.max() < 0.9999 and p.min() > 1e-4
    assert fit_calibration(np.zeros(0), np.zeros(0)) == (1.0, 0.0)
    assert fit_calibration(np.ones(5), np.ones(5)) == (1.0, 0.0)


def test_platt_fit_weights_an_unbalanced_val_split_to_the_given_prior():
    """Equal numbers of fakes and reals whose log odds are 3 z + b_true; a val split that kept
    only a quarter of the reals by chance: unweighted, the shift absorbs the split's share (log 4
    higher: four fakes to a real); weighted to the data's prior of 0.5, it finds b_true again."""
    rng = np.random.default_rng(3)
    n, b_true = 40000, 0.7
    y = np.repeat([1.0, 0.0], n // 2)
    z = rng.normal(np.where(y == 1, 1.5, -1.5), 1.0) - b_true / 3  # log odds 3 z + b_true
    keep = (y == 1) | (rng.random(n) < 0.25)
    t_all, b_all = fit_calibration(z, y)
    t_w, b_w = fit_calibration(z[keep], y[keep], prior=0.5)
    t_u, b_u = fit_calibration(z[keep], y[keep])
    assert abs(b_w - b_all) < 0.1 and math.isclose(t_w, t_all, rel_tol=0.05), (b_w, b_all)
    assert abs(b_u - b_all - math.log(4)) < 0.15, (b_u, b_all)
    assert fit_calibration(z[keep], y[keep], prior=float(y[keep].mean())) == pytest.approx(
        (t_u, b_u), rel=1e-4, abs=1e-4
    )  # the split's own share is the unweighted fit
    with pytest.raises(ValueError, match="prior"):
        fit_calibration(z, y, prior=1.0)


def test_temperature_fit_degenerate_inputs():
    assert fit_temperature(np.zeros(0), np.zeros(0)) == 1.0
    assert fit_temperature(np.ones(5), np.ones(5)) == 1.0  # one class only: nothing to fit


def test_train_config_validates(capsys):
    for bad in ({"epochs": 0}, {"patience": 0}, {"batch_size": 0}, {"lr": 0.0},
                {"chance_images": -1}, {"ema_images": -1}):  # fmt: skip
        with pytest.raises(ValueError, match=">= 1|> 0|>= 0"):
            TrainConfig(**bad)
    from pipeline.cli import main  # a clear one-line error, exit code 2, before anything runs

    assert main(["run", "nowhere", "--out", "nowhere-run", "--patience", "0"]) == 2
    assert "patience=0" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("ema_images", [0, 64])
def test_training_stops_early_and_keeps_the_best_epoch(tmp_path, ema_images):
    import torch

    from pipeline import ingest
    from pipeline.config import EncoderConfig
    from pipeline.encoder import create_encoder
    from pipeline.imageio import normalize
    from pipeline.synthetic import make_planted_dataset
    from pipeline.train import load_images, train_encoder
    from tests.conftest import TINY

    make_planted_dataset(tmp_path, 60, 60, seed=5)
    images = ingest.finalize(ingest.inspect_candidates(ingest.discover(tmp_path), 10**8, 8)[0])
    torch.manual_seed(0)
    model = create_encoder(EncoderConfig(model_name=TINY))
    cfg = TrainConfig(epochs=12, patience=2, lr=5e-3, ema_images=ema_images)
    info = train_encoder(model, images, cfg)
    hist = [h["val_loss"] for h in info["history"]]
    best = info["best_round"]  # 72 train images: one validation round per epoch
    assert info["rounds_per_epoch"] == 1 and info["epochs_run"] == len(hist) <= 12
    assert info["best_epoch"] == best + 1
    assert hist[best] == min(hist[: best + 1])
    assert all(h >= hist[best] * (1 - 1e-3) for h in hist[best + 1 :])
    if info["stopped_early"]:
        assert len(hist) - 1 - best == 2
    # the kept weights are the best epoch's (with ema_images, the average validated then): its
    # validation loss is reproduced
    val = images[(images["split"] == "val") & (images["duplicate_of"] < 0)]
    arr, ok = load_images(val["path_bytes"].tolist(), model.image_size)
    assert ok.all()
    with torch.no_grad():
        logit = model.eval()(normalize(arr, model.preprocess["mean"], model.preprocess["std"]))[2]
    y = torch.as_tensor(val["label"].to_numpy(), dtype=torch.float32)
    loss = float(torch.nn.functional.binary_cross_entropy_with_logits(logit, y))
    assert math.isclose(loss, hist[best], rel_tol=1e-4), (loss, hist)
    # the calibration is the Platt fit of these val logits, stored in the model
    train = images[(images["split"] == "train") & (images["duplicate_of"] < 0)]
    t, b = fit_calibration(logit.numpy(), val["label"].to_numpy(), train["label"].mean())
    assert info["temperature"] == pytest.approx(t, rel=1e-4) == float(model.temperature)
    assert info["logit_shift"] == pytest.approx(b, abs=1e-4) == float(model.logit_shift)


@pytest.mark.slow
def test_weight_average_is_validated_while_the_raw_weights_train_on(tmp_path):
    """--ema-images changes what is validated and kept, not how the raw weights train: the
    training losses are the same step for step (until the validation loss, the average's here,
    makes the plateau schedule halve the rate at another round than without it; three epochs are
    too few for that), the validation losses are not."""
    import torch

    from pipeline import ingest
    from pipeline.config import EncoderConfig
    from pipeline.encoder import create_encoder
    from pipeline.synthetic import make_planted_dataset
    from pipeline.train import train_encoder
    from tests.conftest import TINY

    make_planted_dataset(tmp_path, 40, 40, seed=3)
    images = ingest.finalize(ingest.inspect_candidates(ingest.discover(tmp_path), 10**8, 8)[0])
    runs = {}
    for ema_images in (0, 32):
        torch.manual_seed(0)
        model = create_encoder(EncoderConfig(model_name=TINY))
        cfg = TrainConfig(epochs=3, patience=30, lr=5e-3, ema_images=ema_images)
        runs[ema_images] = train_encoder(model, images, cfg)["history"]
    raw, avg = runs[0], runs[32]
    assert len(raw) == len(avg) == 3
    assert [h["train_loss"] for h in raw] == [h["train_loss"] for h in avg]
    assert all(a["val_loss"] != b["val_loss"] for a, b in zip(raw, avg))


def test_val_separation_is_the_auc_and_the_lower_end_of_its_interval():
    from sklearn.metrics import roc_auc_score

    from pipeline.train import val_separation
    from pipeline.trust import auc_interval

    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 200)
    z = rng.normal(size=200) + 0.8 * y
    auc, lo = val_separation(z, y)
    assert auc == pytest.approx(roc_auc_score(y, z)) and lo == auc_interval(y, z)[1] < auc
    assert lo > 0.5  # 100 per label, shifted by 0.8 sd: AUC about 0.7
    tied = val_separation(np.zeros(40), np.r_[np.zeros(20), np.ones(20)])
    assert tied[0] == 0.5 and tied[1] < 0.5  # no signal: the interval holds 0.5
    assert val_separation(z, np.ones(200)) == (None, None)  # one label: not measured
    assert val_separation(z[:0], y[:0]) == (None, None)


def _chance_run(tmp_path, monkeypatch, seps, **cfg):
    """train_encoder on a tiny set whose validation rounds report the (auc, lo) pairs ``seps``
    (the last one repeated): the stopping rules' wiring, independent of what the model learns."""
    import torch

    from pipeline import ingest, train
    from pipeline.config import EncoderConfig
    from pipeline.encoder import create_encoder
    from pipeline.synthetic import make_planted_dataset

    root = tmp_path / "imgs"
    if not root.exists():
        make_planted_dataset(root, 16, 16, seed=2)
    images = ingest.finalize(ingest.inspect_candidates(ingest.discover(root), 10**8, 8)[0])
    calls = []

    def fake_separation(z, y):
        calls.append(len(z))
        return seps[min(len(calls), len(seps)) - 1]

    monkeypatch.setattr(train, "val_separation", fake_separation)
    n_train = int(((images["split"] == "train") & (images["duplicate_of"] < 0)).sum())
    cfg["chance_images"] = round(cfg.pop("chance_epochs") * n_train)  # one round per epoch here
    torch.manual_seed(0)
    model = create_encoder(EncoderConfig(model_name="asap-micro-vit-64"))
    return train.train_encoder(model, images, TrainConfig(**cfg)), calls


def test_training_gives_up_when_no_round_separates_the_val_labels(tmp_path, monkeypatch, caplog):
    import logging

    with caplog.at_level(logging.WARNING, logger="pipeline.train"):
        info, calls = _chance_run(tmp_path, monkeypatch, [(0.52, 0.41)],
                                  epochs=9, patience=50, chance_epochs=3)  # fmt: skip
    assert len(info["history"]) == 3 == len(calls) and info["stopped_early"]
    assert info["stop_reason"] == "no_signal" and info["val_signal"] is False
    assert [h["val_auc_lo"] for h in info["history"]] == [0.41] * 3
    assert "(3 validation rounds) no round told" in caplog.text
    assert "best val AUC 0.520" in caplog.text
    # the best round's weights are still the ones kept, and calibrated
    assert info["best_round"] in range(3) and info["temperature"] > 0


def test_one_separating_round_keeps_training_to_patience(tmp_path, monkeypatch):
    # round 2 clears 0.5: the detector has signal, so only patience or the epochs end it
    info, _ = _chance_run(tmp_path, monkeypatch, [(0.5, 0.4), (0.7, 0.55), (0.5, 0.4)],
                          epochs=6, patience=50, chance_epochs=3)  # fmt: skip
    assert len(info["history"]) == 6 and not info["stopped_early"]
    assert info["stop_reason"] is None and info["val_signal"] is True
    # turned off: the same chance-level rounds train on to the epochs
    info, _ = _chance_run(tmp_path, monkeypatch, [(0.5, 0.4)], epochs=5, patience=50,
                          chance_epochs=0)  # fmt: skip
    assert len(info["history"]) == 5 and info["stop_reason"] is None
    # a val split of one label says nothing either way: no stop for lack of signal
    info, _ = _chance_run(tmp_path, monkeypatch, [(None, None)], epochs=5, patience=50,
                          chance_epochs=2)  # fmt: skip
    assert len(info["history"]) == 5 and info["val_signal"] is False
    # patience still ends a run with signal, and says so
    info, _ = _chance_run(tmp_path, monkeypatch, [(0.9, 0.8)], epochs=40, patience=1,
                          chance_epochs=2, lr=1e-9)  # fmt: skip
    assert info["stop_reason"] == "patience" and len(info["history"]) < 40


def test_capped_sample_keeps_label_shares_and_is_reproducible():
    import pandas as pd

    from pipeline.train import capped_sample

    rows = pd.DataFrame({"label": [0] * 300 + [1] * 100, "id": range(400)}).sample(
        frac=1, random_state=1
    )
    a, b = capped_sample(rows, 40, seed=7), capped_sample(rows, 40, seed=7)
    assert a.equals(b) and len(a) == 40
    assert (a["label"] == 0).sum() == 30 and (a["label"] == 1).sum() == 10
    assert list(a.index) == sorted(a.index) and a.index.is_unique
    assert not a.equals(capped_sample(rows, 40, seed=8))
    assert capped_sample(rows, 1000, seed=7) is rows
    few = pd.DataFrame({"label": [0] * 99 + [1]})
    assert set(capped_sample(few, 10, seed=0)["label"]) == {0, 1}  # each label stays


def test_train_limit_caps_the_images_trained_on(tmp_path):
    import torch

    from pipeline import ingest
    from pipeline.config import EncoderConfig
    from pipeline.encoder import create_encoder
    from pipeline.synthetic import make_planted_dataset
    from pipeline.train import train_encoder

    make_planted_dataset(tmp_path, 40, 40, seed=6)
    images = ingest.finalize(ingest.inspect_candidates(ingest.discover(tmp_path), 10**8, 8)[0])
    n_train = int(((images["split"] == "train") & (images["duplicate_of"] < 0)).sum())
    torch.manual_seed(0)
    model = create_encoder(EncoderConfig(model_name="asap-micro-vit-64"))
    info = train_encoder(model, images, TrainConfig(epochs=1, train_limit=20))
    assert info["n_train"] == 20 and info["n_train_available"] == n_train > 20
    assert 1 <= info["n_val"] < int((images["split"] == "val").sum())
    with pytest.raises(ValueError, match="--train-limit"):
        TrainConfig(train_limit=1)


@pytest.mark.parametrize("tiles", [1, 2])
def test_forward_with_tokens_is_the_forward_pass(tiles):
    """The patch loss reads the tokens through the adapter: the same numbers as open_clip's
    forward, and one token per patch of every tile."""
    import torch

    from pipeline.config import EncoderConfig
    from pipeline.encoder import create_encoder

    torch.manual_seed(0)
    model = create_encoder(EncoderConfig(model_name="asap-micro-vit-64", tiles=tiles)).eval()
    x = torch.randn(3, 3, 64 * tiles, 64 * tiles)
    with torch.no_grad():
        emb, dist, logit = model(x)
        emb2, dist2, logit2, tokens = model.forward_with_tokens(x)
    torch.testing.assert_close(emb2, emb, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(logit2, logit, rtol=1e-4, atol=1e-5)
    gh, gw = model.visual.grid_size
    assert tokens.shape == (3, tiles * tiles * gh * gw, model.visual.transformer.width)


def test_tiled_encoder_trains_saves_and_loads(tmp_path, capsys):
    """A 2 x 2 tiled encoder trains on 128 px images (the loaders read them at native size) and
    keeps its tiles through save and load; the CLI refuses a tile count out of range."""
    import torch

    from pipeline import ingest
    from pipeline.cli import main
    from pipeline.config import EncoderConfig
    from pipeline.encoder import create_encoder, load_encoder, save_encoder
    from pipeline.synthetic import make_planted_dataset
    from pipeline.train import train_encoder

    make_planted_dataset(tmp_path / "set", 24, 24, seed=6, size=128)
    images = ingest.finalize(
        ingest.inspect_candidates(ingest.discover(tmp_path / "set"), 10**8, 8)[0]
    )
    torch.manual_seed(0)
    model = create_encoder(EncoderConfig(model_name="asap-micro-vit-64", tiles=2))
    assert model.image_size == 128 and model.tower_size == 64
    info = train_encoder(model, images, TrainConfig(epochs=1))
    assert info["epochs_run"] == 1 and np.isfinite(info["history"][0]["train_loss"])
    save_encoder(model, tmp_path / "enc.pt")
    back = load_encoder(tmp_path / "enc.pt")
    assert back.tiles == 2 and back.image_size == 128
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        torch.testing.assert_close(back(x)[2], model.eval()(x)[2])
    assert main(["run", "nowhere", "--out", "nowhere-run", "--tiles", "9"]) == 2
    assert "tiles must be an integer from 1 to 8" in capsys.readouterr().err


def test_patch_loss_is_a_training_scaffold(tmp_path, capsys):
    """The patch head trains beside the CLS head and is not part of the saved model; 0 turns the
    loss off, and a negative weight is refused with the option's name."""
    import torch

    from pipeline import ingest
    from pipeline.config import EncoderConfig
    from pipeline.encoder import create_encoder
    from pipeline.synthetic import make_planted_dataset
    from pipeline.train import train_encoder

    with pytest.raises(ValueError, match="patch loss"):
        TrainConfig(patch_loss=-1.0)
    from pipeline.cli import main

    assert main(["run", "nowhere", "--out", "nowhere-run", "--patch-loss", "-1"]) == 2
    assert "patch loss" in capsys.readouterr().err

    make_planted_dataset(tmp_path, 24, 24, seed=6)
    images = ingest.finalize(ingest.inspect_candidates(ingest.discover(tmp_path), 10**8, 8)[0])
    losses = {}
    for w in (0.0, 1.0):
        torch.manual_seed(0)
        model = create_encoder(EncoderConfig(model_name="asap-micro-vit-64"))
        keys = set(model.state_dict())
        info = train_encoder(model, images, TrainConfig(epochs=1, patch_loss=w, selfblend=0.0))
        assert set(model.state_dict()) == keys  # nothing added to what is saved
        losses[w] = info["history"][0]["train_loss"]
    # the same seed and batches: the train loss with the patch loss adds a positive BCE term
    assert losses[1.0] > losses[0.0]


@pytest.mark.parametrize(
    "n,every,bs",
    [
        (100, 2048, 32),
        (4000, 2048, 32),
        (4001, 1000, 32),
        (70, 10, 32),
        (65, 32, 32),
        (1, 5, 8),
        (96, 32, 32),
    ],
)
def test_round_bounds_cut_an_epoch_at_whole_batches(n, every, bs):
    from pipeline.train import round_bounds

    cuts = round_bounds(n, every, bs)
    assert cuts[0] == 0 and cuts[-1] == n and all(a < b for a, b in zip(cuts, cuts[1:]))
    assert all(c % bs == 0 for c in cuts[:-1])  # only the epoch's last batch may be short
    rounds = len(cuts) - 1
    # one round when an epoch fits in val_every; else as many as needed, no more than batches
    assert rounds == min(max(1, math.ceil(n / every)), math.ceil(n / bs))
    batches = [math.ceil(size / bs) for size in np.diff(cuts)]
    assert max(batches) - min(batches) <= 1  # about equal rounds


def test_validation_rounds_within_an_epoch(tmp_path, capsys):
    """val_every below the epoch's size validates several times per epoch: the history records
    epochs and images run and the best round; the updates are the same as with one validation
    per epoch (rounds cut at whole batches, validation draws no random numbers), so the rounds'
    train losses average to the epoch's."""
    import torch

    from pipeline import ingest
    from pipeline.cli import main
    from pipeline.config import EncoderConfig
    from pipeline.encoder import create_encoder
    from pipeline.synthetic import make_planted_dataset
    from pipeline.train import train_encoder

    make_planted_dataset(tmp_path, 40, 40, seed=7)
    images = ingest.finalize(ingest.inspect_candidates(ingest.discover(tmp_path), 10**8, 8)[0])
    n_train = int(((images["split"] == "train") & (images["duplicate_of"] < 0)).sum())
    infos = {}
    for every in (16, 10**6):
        torch.manual_seed(0)
        model = create_encoder(EncoderConfig(model_name="asap-micro-vit-64"))
        cfg = TrainConfig(epochs=2, patience=100, val_every=every, batch_size=8)
        infos[every] = train_encoder(model, images, cfg)
    many, one = infos[16], infos[10**6]
    rounds = many["rounds_per_epoch"]
    assert rounds == math.ceil(n_train / 16) > 1 and one["rounds_per_epoch"] == 1
    assert len(many["history"]) == 2 * rounds and many["epochs_run"] == 2
    assert [h["images"] for h in many["history"]][rounds - 1 :: rounds] == [n_train, 2 * n_train]
    hist = [h["val_loss"] for h in many["history"]]
    best = many["best_round"]  # the lowest loss, up to EarlyStopping's relative min_delta
    assert hist[best] == min(hist[: best + 1])
    assert all(h >= hist[best] * (1 - 1e-3) for h in hist[best + 1 :])
    assert many["best_epoch"] == many["history"][many["best_round"]]["epoch"]
    assert len(one["history"]) == 2 and [h["epoch"] for h in one["history"]] == [1, 2]
    assert not many["stopped_early"] and not one["stopped_early"]
    from pipeline.train import round_bounds

    per_round = [math.ceil(v / 8) for v in np.diff(round_bounds(n_train, 16, 8))]
    for e in range(2):
        rows = many["history"][e * rounds : (e + 1) * rounds]
        mean = sum(h["train_loss"] * b for h, b in zip(rows, per_round)) / sum(per_round)
        assert math.isclose(mean, one["history"][e]["train_loss"], rel_tol=1e-5)
    assert main(["run", "nowhere", "--out", "nowhere-run", "--val-every", "0"]) == 2
    assert "val_every=0" in capsys.readouterr().err


def test_workers_decode_the_training_images_with_the_same_result(tmp_path, dask_scheduler,
                                                                 monkeypatch):  # fmt: skip
    """A tower trained from scratch gets its images decoded by the Dask workers (issue 10: not in
    the driver), all at once when they fit in memory and batch by batch ahead of the step when
    they do not: the same batches in the same order, so the same training, loss for loss."""
    import torch
    from distributed import Client

    import pipeline.train as T
    from pipeline import ingest
    from pipeline.config import EncoderConfig
    from pipeline.encoder import create_encoder
    from pipeline.synthetic import make_planted_dataset

    make_planted_dataset(tmp_path, 40, 40, seed=8)
    images = ingest.finalize(ingest.inspect_candidates(ingest.discover(tmp_path), 10**8, 8)[0])
    calls = []
    real = T.load_images

    def counted(paths, size, threads=4):  # decodes in the driver, counted here
        calls.append(len(paths))
        return real(paths, size, threads)

    monkeypatch.setattr(T, "load_images", counted)
    monkeypatch.setattr(T, "DECODE_CHUNK", 16)  # several chunks: their order must hold
    runs = {}
    with Client(dask_scheduler) as client:
        for how, c, cache in (("driver", None, 2 << 30), ("workers", client, 2 << 30),
                              ("streamed", client, 0)):  # fmt: skip
            calls.clear()
            torch.manual_seed(0)
            model = create_encoder(EncoderConfig(model_name="asap-micro-vit-64"))
            cfg = TrainConfig(epochs=2, batch_size=16, cache_bytes=cache)
            info = T.train_encoder(model, images, cfg, client=c)
            runs[how] = ([(h["train_loss"], h["val_loss"]) for h in info["history"]],
                         info["temperature"], sum(calls))  # fmt: skip
    hist, temp, driver_decodes = runs["driver"]
    assert driver_decodes > 0 and len(hist) == 2
    for how in ("workers", "streamed"):
        assert runs[how][:2] == (hist, temp), how
        assert runs[how][2] == 0, f"{how}: the driver decoded {runs[how][2]} images itself"
