"""Held-out detection metrics: accuracy, average precision, ROC-AUC, expected calibration error,
overall and per generator (each generator's fakes against the reals of its source, or all reals)."""

from __future__ import annotations

import numpy as np
import pandas as pd


def expected_calibration_error(labels: np.ndarray, p: np.ndarray, bins: int = 15) -> float:
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            ece += m.mean() * abs(labels[m].mean() - p[m].mean())
    return float(ece)


def binary_metrics(labels: np.ndarray, p: np.ndarray) -> dict:
    from sklearn.metrics import average_precision_score, roc_auc_score

    labels = np.asarray(labels).astype(int)
    p = np.asarray(p, dtype=np.float64)
    out = {
        "n": int(len(labels)),
        "n_fake": int(labels.sum()),
        "accuracy": float(((p >= 0.5) == labels).mean()) if len(labels) else float("nan"),
        "ece": expected_calibration_error(labels, p) if len(labels) else float("nan"),
    }
    both = 0 < labels.sum() < len(labels)
    out["ap"] = float(average_precision_score(labels, p)) if both else float("nan")
    out["auc"] = float(roc_auc_score(labels, p)) if both else float("nan")
    return out


def detection_metrics(df: pd.DataFrame) -> dict:
    """``df`` has label, p_fake, generator, source. Returns overall and per-generator metrics."""
    out = {"overall": binary_metrics(df["label"].to_numpy(), df["p_fake"].to_numpy())}
    reals = df[df["label"] == 0]
    per = {}
    for gen, fakes in df[df["label"] == 1].groupby("generator", observed=True):
        sources = set(fakes["source"])
        own = reals[reals["source"].isin(sources)]
        rows = pd.concat([own if len(own) else reals, fakes])
        per[str(gen)] = binary_metrics(rows["label"].to_numpy(), rows["p_fake"].to_numpy())
    out["per_generator"] = per
    return out
