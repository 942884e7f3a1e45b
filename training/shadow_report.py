"""The shadow report: how the shadow model's slates differ from the live ones, from the shadow log
(``service.shadow``): overlap@k, rank correlation (Kendall's tau over the offers both slates share) and
both score distributions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import kendalltau


def load(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in Path(path).read_text().splitlines():
        if line.strip():
            out.append(json.loads(line))
    return out


def _quantiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    a = np.asarray(values, dtype=np.float64)
    return {
        "mean": float(a.mean()),
        **{f"p{q}": float(np.percentile(a, q)) for q in (5, 25, 50, 75, 95)},
        "n": len(a),
    }


def report(records: list[dict[str, Any]], k: int = 5) -> dict[str, Any]:
    overlaps, taus = [], []
    live_scores: list[float] = []
    shadow_scores: list[float] = []
    identical = 0
    for rec in records:
        live, shadow = rec["live"]["slate"][:k], rec["shadow"]["slate"][:k]
        live_scores.extend(rec["live"]["scores"][:k])
        shadow_scores.extend(rec["shadow"]["scores"][:k])
        if not live and not shadow:
            continue
        common = [o for o in live if o in shadow]
        overlaps.append(len(common) / max(len(live), len(shadow)))
        identical += live == shadow
        if len(common) >= 2:
            tau = kendalltau([live.index(o) for o in common], [shadow.index(o) for o in common]).statistic
            if np.isfinite(tau):
                taus.append(float(tau))
    versions = sorted({(r["live"]["model_version"], r["shadow"]["model_version"]) for r in records}, key=str)
    return {
        "requests": len(records),
        "k": k,
        "versions": [{"live": lv, "shadow": sv} for lv, sv in versions],
        f"overlap@{k}": float(np.mean(overlaps)) if overlaps else None,
        "identical_slates": identical / len(overlaps) if overlaps else None,
        "kendall_tau_shared": float(np.mean(taus)) if taus else None,
        "kendall_tau_requests": len(taus),
        "scores": {"live": _quantiles(live_scores), "shadow": _quantiles(shadow_scores)},
    }
