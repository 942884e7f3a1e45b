"""The estimates of ``benefits evaluate`` from the logged slots and each policy's targets on them
(:mod:`training.counterfactual` builds both): per policy and metric IPS, SNIPS and DR per view, the
paired difference, the logging policy's own rate, the oracle when the log knows the truth."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

from training.offpolicy import (
    Estimate,
    SlotLog,
    SlotTarget,
    slot_estimates,
    unmatched_slots,
    view_difference,
    view_estimates,
)


@dataclass
class Slots:
    """The logged slots (one row each) with, per role, the policy's targets on them."""

    view: list[np.ndarray]
    slot: list[np.ndarray]
    claim: list[np.ndarray]
    value: list[np.ndarray]
    p_log: list[np.ndarray]
    targets: dict[str, dict[str, list[np.ndarray]]]
    oracle: dict[str, list[tuple[float, float]]]
    logged_truth: list[float]
    capped: int = 0


def mean_interval(x: np.ndarray, alpha: float) -> dict[str, float]:
    n = len(x)
    mean = float(x.mean()) if n else float("nan")
    se = float(x.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
    z = float(stats.norm.ppf(1 - alpha / 2))
    return {"estimate": mean, "ci_low": mean - z * se, "ci_high": mean + z * se, "n": n}


def estimates(sl: Slots, labels: dict[str, str], alpha: float, notes: list[str]) -> dict[str, Any]:
    """Per role and metric the per-view estimates (with the oracle when known), the paired difference,
    the logging policy's own rate and the candidate's per-slot breakdown."""
    cat = np.concatenate
    n_views = len(sl.view)
    view, slot, p_log = cat(sl.view), cat(sl.slot), cat(sl.p_log)
    per_metric = {
        "claims_per_view": SlotLog(view, slot, cat(sl.claim), p_log, n_views),
        "value_per_view": SlotLog(view, slot, cat(sl.value), p_log, n_views),
    }
    tgt = {
        role: {
            "claims_per_view": SlotTarget(cat(tg["p"]), cat(tg["qc"]), cat(tg["dc"])),
            "value_per_view": SlotTarget(cat(tg["p"]), cat(tg["qv"]), cat(tg["dv"])),
        }
        for role, tg in sl.targets.items()
    }

    def as_dict(est: dict[str, Estimate]) -> dict[str, Any]:
        return {k: e.as_dict() for k, e in est.items()}

    out: dict[str, Any] = {}
    for role, label in labels.items():
        empty = unmatched_slots(per_metric["claims_per_view"], tgt[role]["claims_per_view"])
        if empty:
            notes.append(f"{role} {label}: no logged slot at positions {empty} carries its weight (0 there)")
        block: dict[str, Any] = {"policy": label}
        for metric, log in per_metric.items():
            block[metric] = as_dict(view_estimates(log, tgt[role][metric], alpha))
        if sl.oracle[role]:
            orc = np.asarray(sl.oracle[role])
            block["oracle"] = {
                "claims_per_view": float(orc[:, 0].mean()),
                "value_per_view": float(orc[:, 1].mean()),
            }
        out[role] = block
    diff: dict[str, Any] = {
        metric: as_dict(view_difference(log, tgt["candidate"][metric], tgt["baseline"][metric], alpha))
        for metric, log in per_metric.items()
    }
    if "oracle" in out["candidate"] and "oracle" in out["baseline"]:
        diff["oracle"] = {m: out["candidate"]["oracle"][m] - out["baseline"]["oracle"][m] for m in per_metric}
    out["difference"] = diff
    logging_policy: dict[str, Any] = {
        metric: mean_interval(np.bincount(log.view, weights=log.reward, minlength=n_views), alpha)
        for metric, log in per_metric.items()
    }
    if sl.logged_truth:
        logging_policy["oracle"] = {"claims_per_view": float(np.mean(sl.logged_truth))}
    out["logging_policy"] = logging_policy
    out["per_slot"] = slot_estimates(
        per_metric["claims_per_view"], tgt["candidate"]["claims_per_view"], alpha
    )
    return out
