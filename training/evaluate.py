"""Offline evaluation on the held-out (latest) time slice, against baselines.

Metrics per scorer: ROC AUC, log loss, NDCG@5 per request (binary gain, requests with at least one
positive, ties broken at random so that a constant scorer gets no free credit), calibration (10
quantile bins of the prediction: mean predicted vs observed; expected calibration error) and the same
per segment when the data has one.

Baselines:

- ``random``: uniform random order; its "probability" is the training base rate (for log loss).
- ``popularity``: the offer's claim rate in the training window, smoothed toward the base rate
  (what a non-personalised "most claimed" ranking does).
- ``promoted``: the model currently promoted in the registry, scored through onnxruntime on the same
  rows (only when its feature schema matches the code's).
- ``oracle``: the simulator's true claim probability (simulated data only): the ceiling.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import log_loss, roc_auc_score

log = logging.getLogger(__name__)

_EPS = 1e-6


def auc(y: np.ndarray, s: np.ndarray) -> float:
    if len(np.unique(y)) < 2:
        return float("nan")
    return float(roc_auc_score(y, s))


def logloss(y: np.ndarray, p: np.ndarray) -> float:
    if len(y) == 0:
        return float("nan")
    return float(log_loss(y, np.clip(p, _EPS, 1 - _EPS), labels=[0, 1]))


def ndcg_at_k(y: np.ndarray, s: np.ndarray, groups: np.ndarray, k: int = 5, seed: int = 0) -> float:
    """Mean NDCG@k over groups with at least one positive and at least two rows (binary gains); NaN when
    there is no such group (a one-row request has nothing to rank: it would score 1.0 for any scorer)."""
    if len(y) == 0:
        return float("nan")
    tie = np.random.default_rng(seed).random(len(y))
    order = np.lexsort((tie, -s, groups))
    g, yy = groups[order], y[order]
    first = np.r_[True, g[1:] != g[:-1]]
    start = np.maximum.accumulate(np.where(first, np.arange(len(g)), 0))
    rank = np.arange(len(g)) - start
    disc = np.where(rank < k, 1.0 / np.log2(rank + 2.0), 0.0)
    dcg = np.bincount(g, weights=yy * disc, minlength=int(groups.max()) + 1)
    # Ideal: positives first within each group.
    pos = np.bincount(groups, weights=y, minlength=int(groups.max()) + 1)
    ideal_disc = np.cumsum(1.0 / np.log2(np.arange(k) + 2.0))
    sizes = np.bincount(groups, minlength=int(groups.max()) + 1)
    has = (pos > 0) & (sizes > 1)
    idcg = ideal_disc[np.minimum(pos[has], k).astype(np.int64) - 1]
    return float(np.mean(dcg[has] / idcg)) if has.any() else float("nan")


def calibration(y: np.ndarray, p: np.ndarray, bins: int = 10) -> dict[str, Any]:
    """Quantile-binned reliability: mean predicted vs observed per bin, and the expected calibration error."""
    if len(y) == 0:
        return {"bins": [], "ece": float("nan")}
    edges = np.unique(np.quantile(p, np.linspace(0, 1, bins + 1)))
    idx = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, max(len(edges) - 2, 0))
    out = []
    ece = 0.0
    for b in range(max(len(edges) - 1, 1)):
        m = idx == b
        if not m.any():
            continue
        mp, mo = float(p[m].mean()), float(y[m].mean())
        out.append({"pred": mp, "obs": mo, "n": int(m.sum())})
        ece += abs(mp - mo) * m.sum() / len(y)
    return {"bins": out, "ece": float(ece)}


def score_metrics(y: np.ndarray, p: np.ndarray, groups: np.ndarray) -> dict[str, Any]:
    return {
        "auc": auc(y, p),
        "logloss": logloss(y, p),
        "ndcg@5": ndcg_at_k(y, p, groups, 5),
        "calibration": calibration(y, p),
        "mean_pred": float(np.mean(p)) if len(p) else float("nan"),
        "base_rate": float(np.mean(y)) if len(y) else float("nan"),
        "n": len(y),
    }


def popularity(
    train_offers: np.ndarray, train_y: np.ndarray, test_offers: np.ndarray, prior_weight: float = 50.0
) -> np.ndarray:
    """Each test row's offer claim rate in the training window, smoothed toward the base rate."""
    base = float(train_y.mean()) if len(train_y) else 0.0
    df = pd.DataFrame({"o": train_offers, "y": train_y})
    agg = df.groupby("o")["y"].agg(["sum", "count"])
    rate = (agg["sum"] + base * prior_weight) / (agg["count"] + prior_weight)
    return pd.Series(test_offers).map(rate).fillna(base).to_numpy(dtype=np.float64)


def random_scores(n: int, base_rate: float, seed: int = 0) -> np.ndarray:
    # A constant probability (for log loss) plus an order-only jitter far below any real difference.
    return base_rate + np.random.default_rng(seed).random(n) * 1e-9


def evaluate(
    y: np.ndarray,
    groups: np.ndarray,
    scores: dict[str, np.ndarray],
    segments: np.ndarray | None = None,
) -> dict[str, Any]:
    """Metrics for every scorer, overall and per segment; ``margins`` = model minus each baseline."""
    # Compact group ids so that bincount stays small on a test slice.
    _, g = np.unique(groups, return_inverse=True)
    result: dict[str, Any] = {"overall": {}, "segments": {}, "notes": []}
    if len(g) and int(np.bincount(g).max()) < 2:
        result["notes"].append("NDCG@5 skipped: every request has a single row, so there is nothing to rank")
    for name, s in scores.items():
        result["overall"][name] = score_metrics(y, s, g)
    if segments is not None:
        for seg in sorted(pd.unique(segments)):
            m = segments == seg
            _, gs = np.unique(g[m], return_inverse=True)
            result["segments"][str(seg)] = {
                name: {
                    "auc": auc(y[m], s[m]),
                    "logloss": logloss(y[m], s[m]),
                    "ndcg@5": ndcg_at_k(y[m], s[m], gs, 5),
                    "n": int(m.sum()),
                    "positives": int(y[m].sum()),
                }
                for name, s in scores.items()
            }
    if "model" in scores:
        mo = result["overall"]["model"]
        result["margins"] = {
            name: {
                "auc": mo["auc"] - met["auc"],
                "ndcg@5": mo["ndcg@5"] - met["ndcg@5"],
                "logloss": met["logloss"] - mo["logloss"],  # positive = model better
            }
            for name, met in result["overall"].items()
            if name != "model"
        }
    return result


def summary_line(result: dict[str, Any]) -> str:
    parts = []
    for name, m in result["overall"].items():
        parts.append(f"{name}: auc={m['auc']:.4f} ndcg@5={m['ndcg@5']:.4f} logloss={m['logloss']:.4f}")
    return "; ".join(parts)
