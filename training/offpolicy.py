"""Off-policy (counterfactual) estimates of a target policy's value from logged, propensity-scored slates.

Input: one row per *shown slot* — the action logged at a position, its reward (claim or click, 0/1 or a
value), the logging policy's probability of that action at that position given what was above it
(``p_log``, what the service logs as ``propensity``), the target policy's probability of the same
action at the same position (``p_target``), and for the doubly robust estimator a reward model's
prediction for the logged action (``q_logged``) and its expectation under the target policy at that
position (``q_target``).

Slot-aware: every position is its own contextual-bandit decision (the position-based / "independent"
estimator of slate OPE), so the estimate is the value *per shown slot*; per view it is that times the
slots per view. This is unbiased when a slot's reward depends on its own item and position only (no
interaction between items of a slate), the usual approximation for short slates; the slate
pseudo-inverse estimator (``vw-estimators``' ``slates.pseudo_inverse``, product-form logging policy) is
reported beside it where the per-slot target probabilities are given.

Estimators (IPS and SNIPS and their intervals come from Vowpal Wabbit's ``vw-estimators`` package; DR is
written here on top of the same weights, since the package has none):

- ``ips``: mean of w r, w = p_target / p_log; Gaussian interval (``bandits.gaussian``).
- ``snips``: sum(w r) / sum(w) (self-normalised: lower variance, small bias); Cressie-Read empirical
  likelihood interval (``bandits.cressieread``), which is tighter than Gaussian for heavy weights.
- ``dr``: mean of q_target + w (r - q_logged); normal interval on the per-row terms (CLT). Unbiased
  when either the propensities or the reward model are right; the reward model should be fitted on
  other rows than those it corrects (cross-fitting) to avoid its own bias.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from estimators.bandits import cressieread, gaussian, ips, snips
from scipy import stats


@dataclass(frozen=True)
class Estimate:
    name: str
    value: float
    low: float
    high: float
    n: int

    def as_dict(self) -> dict[str, Any]:
        return {"estimate": self.value, "ci_low": self.low, "ci_high": self.high, "n": self.n}


def _check(p_log: np.ndarray, reward: np.ndarray, p_target: np.ndarray) -> None:
    if not (len(p_log) == len(reward) == len(p_target)) or len(p_log) == 0:
        raise ValueError("p_log, reward and p_target must be non-empty and of one length")
    if np.any(p_log <= 0) or np.any(p_log > 1):
        raise ValueError("logged propensities must be in (0, 1]: a zero propensity cannot be reweighted")
    if np.any(p_target < 0) or np.any(p_target > 1):
        raise ValueError("target probabilities must be in [0, 1]")


def ips_estimate(
    p_log: np.ndarray, reward: np.ndarray, p_target: np.ndarray, alpha: float = 0.05
) -> Estimate:
    _check(p_log, reward, p_target)
    est, ci = ips.Estimator(), gaussian.Interval()
    for pl, r, pt in zip(p_log.tolist(), reward.tolist(), p_target.tolist(), strict=True):
        est.add_example(pl, r, pt)
        ci.add_example(pl, r, pt)
    low, high = ci.get(alpha)
    return Estimate("ips", float(est.get() or 0.0), float(low or 0.0), float(high or 0.0), len(p_log))


def snips_estimate(
    p_log: np.ndarray, reward: np.ndarray, p_target: np.ndarray, alpha: float = 0.05, rmax: float = 1.0
) -> Estimate:
    _check(p_log, reward, p_target)
    est = snips.Estimator()
    # Cressie-Read needs the reward range; the weights' true range is [0, max 1/p_log].
    ci = cressieread.Interval(wmin=0.0, wmax=float(np.max(p_target / p_log)) + 1.0, rmin=0.0, rmax=rmax)
    for pl, r, pt in zip(p_log.tolist(), reward.tolist(), p_target.tolist(), strict=True):
        est.add_example(pl, r, pt)
        ci.add_example(pl, r, pt)
    low, high = ci.get(alpha)
    return Estimate("snips", float(est.get() or 0.0), float(low or 0.0), float(high or 0.0), len(p_log))


def dr_estimate(
    p_log: np.ndarray,
    reward: np.ndarray,
    p_target: np.ndarray,
    q_logged: np.ndarray,
    q_target: np.ndarray,
    alpha: float = 0.05,
) -> Estimate:
    """Doubly robust: the reward model's value under the target, corrected by weighted residuals."""
    _check(p_log, reward, p_target)
    w = p_target / p_log
    terms = q_target + w * (reward - q_logged)
    n = len(terms)
    mean = float(terms.mean())
    se = float(terms.std(ddof=1) / math.sqrt(n)) if n > 1 else float("inf")
    z = float(stats.norm.ppf(1 - alpha / 2))
    return Estimate("dr", mean, mean - z * se, mean + z * se, n)


def all_estimates(
    p_log: np.ndarray,
    reward: np.ndarray,
    p_target: np.ndarray,
    q_logged: np.ndarray | None = None,
    q_target: np.ndarray | None = None,
    alpha: float = 0.05,
    rmax: float = 1.0,
) -> dict[str, Estimate]:
    out = {
        "ips": ips_estimate(p_log, reward, p_target, alpha),
        "snips": snips_estimate(p_log, reward, p_target, alpha, rmax),
    }
    if q_logged is not None and q_target is not None:
        out["dr"] = dr_estimate(p_log, reward, p_target, q_logged, q_target, alpha)
    return out


def cross_fit_rates(
    keys: np.ndarray, reward: np.ndarray, folds: np.ndarray, prior_weight: float = 20.0
) -> tuple[np.ndarray, dict[int, dict[Any, float]], float]:
    """A simple reward model: the reward rate per key (e.g. item x position), smoothed toward the mean,
    fitted on the *other* fold of each row (cross-fitting). Returns (prediction per row, per-fold
    tables key -> rate, overall mean) so the caller can also predict for unlogged actions."""
    base = float(reward.mean())
    pred = np.empty(len(reward))
    tables: dict[int, dict[Any, float]] = {}
    for f in np.unique(folds):
        train = folds != f
        sums: dict[Any, float] = {}
        counts: dict[Any, int] = {}
        for k, r in zip(keys[train].tolist(), reward[train].tolist(), strict=True):
            sums[k] = sums.get(k, 0.0) + r
            counts[k] = counts.get(k, 0) + 1
        table = {k: (sums[k] + base * prior_weight) / (counts[k] + prior_weight) for k in sums}
        tables[int(f)] = table
        idx = np.flatnonzero(folds == f)
        pred[idx] = [table.get(k, base) for k in keys[idx].tolist()]
    return pred, tables, base
