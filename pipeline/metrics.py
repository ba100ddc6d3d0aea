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


# p(fake) from which a detection counts as confident when faithfulness is split by confidence:
# on the planted suite the maps of confident detections pointed at the trace far more often than
# those of detections between 0.5 and this (benchmarks/faithfulness.py, README)
SURE_P_FAKE = 0.9


def faithfulness_summary(faith: pd.DataFrame, method: str, n_boot: int = 1000) -> dict:
    """Per method of a long faithfulness table (id, method, p_fake, deletion_auc,
    insertion_auc): mean areas, and the paired difference of deletion areas against the random
    order and against plain attention (negative = the map finds the evidence sooner), each with
    its number of images, standard error and 95% bootstrap interval over images; the difference
    against random also split by the detector's confidence ("sure": p(fake) >= SURE_P_FAKE,
    "unsure": below). ``method`` (the run's) is listed first."""
    wide = faith.pivot_table(index="id", columns="method", values="deletion_auc")
    ins = faith.pivot_table(index="id", columns="method", values="insertion_auc")
    p_fake = faith.groupby("id")["p_fake"].first().reindex(wide.index)
    bands = {"sure": p_fake >= SURE_P_FAKE, "unsure": p_fake < SURE_P_FAKE}
    rng = np.random.default_rng(0)

    def paired(a: str, b: str, rows=None) -> dict | None:
        if a not in wide or b not in wide or a == b:
            return None
        d = wide[a] - wide[b]
        d = (d if rows is None else d[rows]).dropna().to_numpy(np.float64)
        if len(d) < 2:
            return None
        boot = d[rng.integers(0, len(d), size=(n_boot, len(d)))].mean(axis=1)
        se = float(d.std(ddof=1) / np.sqrt(len(d)))
        lo, hi = (float(v) for v in np.percentile(boot, [2.5, 97.5]))
        return {"mean": float(d.mean()), "se": se, "lo": lo, "hi": hi, "images": len(d)}

    order = [method, *sorted(c for c in wide.columns if c != method)]
    out = {}
    for m in order:
        if m not in wide:
            continue
        out[m] = {
            "images": int(wide[m].notna().sum()),
            "deletion": float(wide[m].mean()),
            "insertion": float(ins[m].mean()),
            "vs_random": paired(m, "random"),
            "vs_attention": paired(m, "attention"),
            "vs_random_by_confidence": {b: paired(m, "random", r) for b, r in bands.items()},
        }
    return out
