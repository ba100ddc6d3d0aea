"""How far a run's detector can be trusted before anyone reads its maps.

A map explains what the detector relies on; when the detector cannot tell the held-out fakes from
the reals, its maps and patterns show what the model attends to, not evidence of fakeness. On
100,000 256 px JPEGs with the 64 px tiny model (benchmarks/scale.py) the run trained for ten
minutes at chance, encoded every image and served maps, and nothing said so (issue 9, item 5:
the user sees how much to trust the maps). Two checks:

- ``detector_check``: the held-out ROC-AUC with a 95% interval (Hanley & McNeil, 1982) and a
  verdict: ``detects`` (the interval above 0.5), ``chance`` (it holds 0.5), ``below chance`` (under
  0.5: labels swapped?) or ``unknown`` (no held-out image of one label).
- ``resolution_gap``: the images' typical side against the pixels the model sees. Resizing a
  256 px image to 64 px averages a trace of a few pixels away (README, *Native resolution*), so
  a run that resizes by 2x or more is told about ``--tiles`` before it trains."""

from __future__ import annotations

import math

import numpy as np

Z95 = 1.959964  # two-sided 95% normal quantile
GAP_FACTOR = 2.0  # images at least this many times the model's side get the resizing note


def auc_interval(labels: np.ndarray, p: np.ndarray, z: float = Z95) -> tuple[float, float, float]:
    """ROC-AUC of scores ``p`` for binary ``labels`` and its normal-approximation interval
    (Hanley & McNeil's standard error), clipped to [0, 1]. Needs both labels."""
    from sklearn.metrics import roc_auc_score

    labels = np.asarray(labels).astype(int)
    n_fake = int(labels.sum())
    n_real = len(labels) - n_fake
    if n_fake == 0 or n_real == 0:
        raise ValueError("the AUC needs both real and fake images")
    a = float(roc_auc_score(labels, np.asarray(p, dtype=np.float64)))
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    var = (a * (1 - a) + (n_fake - 1) * (q1 - a * a) + (n_real - 1) * (q2 - a * a)) / (
        n_fake * n_real
    )
    se = math.sqrt(max(var, 0.0))
    return a, max(0.0, a - z * se), min(1.0, a + z * se)


def detector_check(labels: np.ndarray, p: np.ndarray, split: str = "test") -> dict:
    """The held-out detector's verdict (module docstring) with the figures and a message that
    says what to do when it is not ``detects``."""
    labels = np.asarray(labels).astype(int)
    n_fake = int(labels.sum())
    out = {"split": split, "n_real": len(labels) - n_fake, "n_fake": n_fake}
    if n_fake == 0 or n_fake == len(labels):
        return {**out, "verdict": "unknown", "auc": None, "auc_lo": None, "auc_hi": None,
                "message": f"no held-out ({split}) images of both labels: how well the detector "
                           "separates fakes from reals is not measured"}  # fmt: skip
    a, lo, hi = auc_interval(labels, p)
    out.update(auc=a, auc_lo=lo, auc_hi=hi)
    figures = (f"held-out ({split}) AUC {a:.3f}, 95% CI {lo:.3f}-{hi:.3f}, "
               f"{n_fake:,} fakes and {out['n_real']:,} reals")  # fmt: skip
    if lo > 0.5:
        return {**out, "verdict": "detects", "message": f"the detector separates fakes from reals "
                f"better than chance ({figures})"}  # fmt: skip
    if hi < 0.5:
        return {**out, "verdict": "below chance", "message": (
            f"the detector ranks reals above fakes ({figures}): check how the labels were read "
            "(asap scan SOURCE); its maps do not show evidence of fakeness")}  # fmt: skip
    return {**out, "verdict": "chance", "message": (
        f"the detector cannot tell the held-out fakes from the reals ({figures}): its maps and "
        "patterns show what the model attends to, not evidence of fakeness. Train longer or on "
        "more images, use a stronger --model, or keep the images' pixels with --tiles when they "
        "are larger than the model's input")}  # fmt: skip


def with_training(check: dict, train: dict | None) -> dict:
    """``check`` (``detector_check``) with a word on how training ended when it gave up for lack
    of signal (pipeline.train: no validation round separated the labels) and the held-out
    images do not show a detector either: the remedy is then to train on, not only longer."""
    train = train or {}
    if check.get("verdict") == "detects" or train.get("stop_reason") != "no_signal":
        return check
    hist = train.get("history") or [{}]
    seen = hist[-1].get("images")
    where = f"after {seen:,} training images " if seen else ""
    why = (f". Training stopped {where}because no validation round told the fakes from the "
           "reals (--chance-images 0 trains on until --patience rounds bring no better "
           "validation loss)")  # fmt: skip
    return {**check, "message": check["message"] + why}


def resolution_gap(widths: np.ndarray, heights: np.ndarray, tower_size: int, tiles: int) -> dict:
    """The images' median shorter side against the side the model sees (``tiles`` x its input);
    ``note`` says what resizing costs and which ``--tiles`` keeps the pixels when the images are
    ``GAP_FACTOR`` or more times larger, else it is None."""
    sides = np.minimum(np.asarray(widths, dtype=np.float64), np.asarray(heights, dtype=np.float64))
    sides = sides[np.isfinite(sides) & (sides > 0)]
    seen = tower_size * tiles
    if len(sides) == 0:
        return {"median_side": None, "model_side": seen, "factor": None, "note": None}
    median = float(np.median(sides))
    factor = median / seen
    out = {"median_side": median, "model_side": seen, "factor": round(factor, 3), "note": None}
    if factor >= GAP_FACTOR:
        k = min(8, max(2, math.ceil(median / tower_size - 1e-9)))  # config.MAX_TILES
        out["note"] = (
            f"the images' median shorter side is {median:.0f} px and the model sees {seen} px: "
            f"resizing by {factor:.1f}x averages away traces of a few pixels (periodic "
            f"upsampling artifacts, faint noise), which the detector then cannot learn. "
            f"--tiles {k} keeps the pixels ({k}x{k} tiles of {tower_size} px; about {k * k}x "
            "the compute); a larger --model sees more of them"
        )
    return out
