"""Off-policy (counterfactual) estimates of a target policy's value from logged, propensity-scored slates.

Two levels:

- **Rows** (:func:`ips_estimate`, :func:`snips_estimate`, :func:`dr_estimate`, :func:`all_estimates`):
  one row per logged decision with its reward, the logging policy's probability of the logged action
  (``p_log``) and the target policy's (``p_target``), and for the doubly robust estimator a reward
  model's prediction for the logged action (``q_logged``) and its expectation under the target
  (``q_target``). IPS and SNIPS and their intervals come from Vowpal Wabbit's ``vw-estimators``
  package; DR is written here on top of the same weights, since the package has none.
- **Views** (:func:`view_estimates`, :func:`view_difference`): a page view shows a slate; each shown
  slot is one row (:class:`SlotLog`, :class:`SlotTarget`) and the value *per view* is the sum over its
  slots. Slot-aware: every position is its own decision, so ``p_log`` must be the probability of the
  logged offer *at that position*: either its marginal probability there (the position-based estimator;
  unbiased when a slot's reward depends on its own offer, position and context only, not on the other
  offers of the slate), or the product of the conditional propensities from the top down to it with
  ``p_target`` the same product under the target (the sequential estimator: no such assumption, but
  only slates whose prefix the target would also have shown carry weight, so it is noisy below the
  first slot for a deterministic target; its DR form, Jiang & Li 2016, is the reward model's value of
  the target's slate plus the weighted residuals). ``training.counterfactual`` builds both.
  The slots of one view are correlated (one member, one moment): the intervals are therefore computed
  over views (the per-view sums, and a delta-method linearisation for SNIPS), not over slots as if
  they were independent, which is why they are not the library's per-row intervals. The per-slot
  breakdown (:func:`slot_estimates`) is the library's.

Estimators:

- ``ips``: mean of w r, w = p_target / p_log; Gaussian interval.
- ``snips``: sum(w r) / sum(w) per slot (self-normalised: lower variance, small bias); per rows a
  Cressie-Read empirical likelihood interval (``bandits.cressieread``, tighter than Gaussian for heavy
  weights), per view a delta-method interval.
- ``dr``: mean of q_target + w (r - q_logged); normal interval (CLT). Unbiased when either the
  propensities or the reward model are right; the reward model should be fitted on other rows than
  those it corrects (cross-fitting) to avoid its own bias.

Not implemented: the slate pseudo-inverse estimator. ``vw-estimators``' ``slates.pseudo_inverse``
assumes a Cartesian-product slate space with a logging policy that draws each slot independently
(Swaminathan et al. 2017, example 4); the service and the simulator draw slates without replacement
under slate rules (Plackett-Luce), where that form does not hold. With the per-slot rewards the logs
carry, the position-based estimator above uses the same additivity assumption with lower variance.
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


@dataclass(frozen=True)
class SlotLog:
    """Logged slots: one row per shown slot of ``n_views`` logged views (page views with a slate)."""

    view: np.ndarray  # index of the slot's view, 0 .. n_views - 1
    slot: np.ndarray  # position, 0 = top
    reward: np.ndarray
    p_log: np.ndarray  # the logging policy's probability of this slot's decision (see module docstring)
    n_views: int

    def __post_init__(self) -> None:
        n = len(self.view)
        if not (len(self.slot) == len(self.reward) == len(self.p_log) == n):
            raise ValueError("view, slot, reward and p_log must be of one length")
        if n and (self.view.min() < 0 or self.view.max() >= self.n_views):
            raise ValueError("view indices must be in [0, n_views)")
        if np.any(~np.isfinite(self.p_log)) or np.any(self.p_log <= 0) or np.any(self.p_log > 1):
            raise ValueError("logged propensities must be in (0, 1]: a zero propensity cannot be reweighted")


@dataclass(frozen=True)
class SlotTarget:
    """A target policy on the logged slots: its probability of each logged decision, and for DR the
    reward model at the logged offer (``q_logged``) and the reward model's value of the target at that
    slot (``dm``)."""

    p_target: np.ndarray
    q_logged: np.ndarray
    dm: np.ndarray

    def weights(self, log: SlotLog) -> np.ndarray:
        if len(self.p_target) != len(log.p_log):
            raise ValueError("the target and the log must have one row per slot")
        return np.asarray(self.p_target / log.p_log, dtype=np.float64)


def _influences(log: SlotLog, target: SlotTarget) -> dict[str, tuple[float, np.ndarray]]:
    """(estimate, per-view influence) per estimator: the estimate's variance is var(influence) / n."""
    n = log.n_views
    w = target.weights(log)
    wr = w * log.reward
    out: dict[str, tuple[float, np.ndarray]] = {}
    x = np.bincount(log.view, weights=wr, minlength=n)
    out["ips"] = (float(x.mean()), x - x.mean())
    x = np.bincount(log.view, weights=target.dm + w * (log.reward - target.q_logged), minlength=n)
    out["dr"] = (float(x.mean()), x - x.mean())
    # SNIPS per view: sum over slots j of C_j * A_j / B_j (share of views with slot j, weighted reward
    # and weight means); its influence by the delta method.
    est, infl = 0.0, np.zeros(n)
    for j in np.unique(log.slot).tolist():
        m = log.slot == j
        c = np.bincount(log.view[m], minlength=n).astype(np.float64)
        a = np.bincount(log.view[m], weights=wr[m], minlength=n)
        b = np.bincount(log.view[m], weights=w[m], minlength=n)
        if not b.sum() > 0:
            continue  # no logged slot here has weight under the target: it adds 0 (as in IPS)
        r = a.sum() / b.sum()
        cj, bj = c.mean(), b.mean()
        est += cj * r
        infl += (c - cj) * r + cj * (a - r * b) / bj
    out["snips"] = (est, infl)
    return out


def unmatched_slots(log: SlotLog, target: SlotTarget) -> list[int]:
    """Positions where no logged slot has weight under the target: SNIPS counts them as 0 (as IPS
    does), which is an estimate only as good as the log's coverage of the target there."""
    w = target.weights(log)
    return [int(j) for j in np.unique(log.slot) if not w[log.slot == j].sum() > 0]


def _interval(name: str, value: float, infl: np.ndarray, alpha: float) -> Estimate:
    n = len(infl)
    if n < 2 or not np.isfinite(value):
        return Estimate(name, value, float("nan"), float("nan"), n)
    se = float(np.std(infl, ddof=1) / math.sqrt(n))
    z = float(stats.norm.ppf(1 - alpha / 2))
    return Estimate(name, value, value - z * se, value + z * se, n)


def view_estimates(log: SlotLog, target: SlotTarget, alpha: float = 0.05) -> dict[str, Estimate]:
    """IPS, SNIPS and DR estimates of the target's value per view, with intervals over views."""
    return {k: _interval(k, v, i, alpha) for k, (v, i) in _influences(log, target).items()}


def view_difference(
    log: SlotLog, target: SlotTarget, baseline: SlotTarget, alpha: float = 0.05
) -> dict[str, Estimate]:
    """Target minus baseline per view, paired on the same logged views (a tighter interval than the
    two intervals apart)."""
    a, b = _influences(log, target), _influences(log, baseline)
    return {k: _interval(k, a[k][0] - b[k][0], a[k][1] - b[k][1], alpha) for k in a}


def slot_estimates(
    log: SlotLog, target: SlotTarget, alpha: float = 0.05, rmax: float = 1.0
) -> list[dict[str, Any]]:
    """Per slot, the value *per view showing that slot* by ``vw-estimators``' IPS and SNIPS (each slot
    as a contextual bandit over its rows)."""
    out = []
    for j in np.unique(log.slot).tolist():
        m = log.slot == j
        row: dict[str, Any] = {"slot": int(j), "views": int(m.sum())}
        if target.p_target[m].sum() > 0:
            est = all_estimates(log.p_log[m], log.reward[m], target.p_target[m], alpha=alpha, rmax=rmax)
            row |= {k: e.as_dict() for k, e in est.items()}
        out.append(row)
    return out
