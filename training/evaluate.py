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

Per offer family (:func:`by_family`; an offer's family when the catalogue names one, else its kind):
a slate rarely holds two offers of one family, so ranking metrics inside a family would be over
one-row groups. Instead each scorer gets the family's AUC (does it tell the members who claim from those
who do not?) and its claim rate among the family's top 20% rows by score, with the model's margins over
the baselines (paired DeLong 95% interval for the AUC margin). Popularity scores one offer alike for
everyone, so within a one-offer family its AUC is 0.5: the model's margin there is what the member's
features add.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import rankdata
from sklearn.metrics import log_loss, roc_auc_score

from features.offers import OFFER_KINDS, Offer

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


# --- per offer family ------------------------------------------------------------------------------------

#: Share of a family's rows whose claim rate :func:`by_family` reports per scorer ("claim rate @ 20%").
TOP_SHARE = 0.2


def offer_group(offer: Offer) -> str:
    """The offer's group in per-family reports: its family when the catalogue names one, else its kind."""
    return offer.family if offer.family else offer.kind


def offer_groups(offers: list[Offer], offer_ids: np.ndarray) -> np.ndarray:
    """:func:`offer_group` of each row's offer (``"unknown"`` for an offer not in ``offers``)."""
    groups = {o.offer_id: offer_group(o) for o in offers}
    return np.array([groups.get(str(o), "unknown") for o in offer_ids], dtype=object)


def delong(y: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    """AUC of ``a``, AUC of ``b`` and the standard error of their difference on the same rows (DeLong's
    paired estimate, by midranks). NaNs when ``y`` has a single class."""
    pos, neg = y == 1, y == 0
    m, n = int(pos.sum()), int(neg.sum())
    if m == 0 or n == 0:
        return float("nan"), float("nan"), float("nan")
    v10, v01, aucs = [], [], []
    for s in (a, b):
        tx, ty, tz = rankdata(s[pos]), rankdata(s[neg]), rankdata(np.r_[s[pos], s[neg]])
        aucs.append(float((tz[:m].sum() - m * (m + 1) / 2.0) / (m * n)))
        v10.append((tz[:m] - tx) / n)
        v01.append(1.0 - (tz[m:] - ty) / m)
    sx = np.cov(np.array(v10)) if m > 1 else np.zeros((2, 2))
    sy = np.cov(np.array(v01)) if n > 1 else np.zeros((2, 2))
    cov = sx / m + sy / n
    var = float(cov[0, 0] + cov[1, 1] - 2.0 * cov[0, 1])
    return aucs[0], aucs[1], float(np.sqrt(max(var, 0.0)))


def claim_rate_at(y: np.ndarray, s: np.ndarray, share: float = TOP_SHARE, seed: int = 0) -> float:
    """Observed claim rate among the ``share`` of rows scored highest (ties in random order)."""
    if len(y) == 0:
        return float("nan")
    k = max(1, round(share * len(y)))
    tie = np.random.default_rng(seed).random(len(y))
    top = np.lexsort((tie, -s))[:k]
    return float(y[top].mean())


def by_family(y: np.ndarray, scores: dict[str, np.ndarray], families: np.ndarray) -> dict[str, Any]:
    """Per family: rows, claims, claim rate; per scorer AUC and claim rate @ :data:`TOP_SHARE`; and the
    model's margins over every other scorer (AUC with a 95% interval, claim rate @ top share). Families
    named by the catalogue come first, then the kinds (offers without a family)."""
    names = sorted(pd.unique(families), key=lambda f: (f in OFFER_KINDS, str(f)))
    out: dict[str, Any] = {}
    for fam in names:
        m = families == fam
        yf = y[m]
        entry: dict[str, Any] = {
            "rows": int(m.sum()),
            "claims": int(yf.sum()),
            "claim_rate": float(yf.mean()),
            "scorers": {
                name: {"auc": auc(yf, s[m]), "claim_rate@top": claim_rate_at(yf, s[m])}
                for name, s in scores.items()
            },
        }
        if "model" in scores:
            mo = entry["scorers"]["model"]
            margins: dict[str, Any] = {}
            for name, s in scores.items():
                if name == "model":
                    continue
                _, _, se = delong(yf, scores["model"][m], s[m])
                diff = mo["auc"] - entry["scorers"][name]["auc"]
                margins[name] = {
                    "auc": diff,
                    "auc_ci": [diff - 1.96 * se, diff + 1.96 * se],
                    "claim_rate@top": mo["claim_rate@top"] - entry["scorers"][name]["claim_rate@top"],
                }
            entry["margins"] = margins
        out[str(fam)] = entry
    return out


def family_lines(families: dict[str, Any]) -> list[str]:
    """``benefits train``'s per-family table (model vs popularity and oracle; "-" where undefined, e.g. a
    family without a claim in the held-out rows)."""
    if not families:
        return []
    top = f"claim@{TOP_SHARE:.0%}"

    def num(v: float, sign: bool = False) -> str:
        return (f"{v:+.3f}" if sign else f"{v:.3f}") if np.isfinite(v) else "-"

    names = ("model", "popularity", "oracle")
    lines = [
        f"  per family (held-out): AUC model / popularity / oracle, model - popularity [95% CI], {top} "
        "model / popularity / oracle"
    ]
    for fam, e in families.items():
        sc, pop = e["scorers"], e.get("margins", {}).get("popularity")
        aucs = " / ".join(num(sc[n]["auc"]) if n in sc else "-" for n in names)
        rates = " / ".join(num(sc[n]["claim_rate@top"]) if n in sc else "-" for n in names)
        margin = (
            f"{num(pop['auc'], True)} [{num(pop['auc_ci'][0], True)}, {num(pop['auc_ci'][1], True)}]"
            if pop and np.isfinite(pop["auc"])
            else "-"
        )
        lines.append(
            f"    {fam:<14} {e['rows']:>7,} rows {e['claims']:>6,} claims  auc {aucs}  {margin}"
            f"  {top} {rates}"
        )
    return lines
