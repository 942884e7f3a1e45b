"""A ranking policy's probabilities on logged views, and the reward model of the doubly robust estimator.

For one logged view (its eligible offers, their objective scores under the policy, the offers shown at
its slots), :func:`view_targets` gives per logged slot what :mod:`training.offpolicy` needs:

- ``marginal`` mode (the log carries each shown offer's marginal probability at its position):
  ``p_target`` = the policy's probability of showing the logged offer *at that position*; the direct
  method term is the reward model's expectation over the policy's offer at that position.
- ``sequential`` mode (only the conditional propensities): ``p_target`` = the product, from the top
  down to the slot, of the policy's probability of each logged offer given the logged offers above it
  (``features.slate.Slate.distribution`` after taking them, so the slate rules apply to the logged
  prefix), to be divided by the product of the logged propensities; the direct-method term is the
  same as above (the doubly robust estimator for sequential decisions of Jiang & Li, 2016: the
  reward model's value of the policy's whole slate plus the prefix-weighted residuals).

A greedy policy's position marginals are exact (its slate); a softmax policy's are estimated from
``samples`` Plackett-Luce draws (unbiased, so the estimators stay unbiased; the draws add a little
variance). With the simulator's true claim probability of every eligible offer, the same marginals give
the policy's exact (greedy) value on the logged views: the oracle.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import lightgbm as lgb
import numpy as np

from features import slate

#: Plackett-Luce draws per view for a softmax policy's position marginals.
SOFTMAX_SAMPLES = 200

#: The reward model: a small LightGBM classifier of the claim, cross-fitted by member.
REWARD_PARAMS = {
    "objective": "binary",
    "learning_rate": 0.05,
    "num_leaves": 15,
    "min_data_in_leaf": 50,
    "feature_fraction": 0.8,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "lambda_l2": 1.0,
    "verbose": -1,
    "num_threads": 2,
    "seed": 0,
    "deterministic": True,
}
REWARD_ROUNDS = 80


@dataclass
class ViewTargets:
    """Per logged slot of one view: the policy's probability, and the direct-method terms (claims,
    value: the reward model's value of the policy at that slot); with the truth, the policy's true
    claims and value on the view."""

    p_target: np.ndarray
    dm_claims: np.ndarray
    dm_value: np.ndarray
    oracle: tuple[float, float] | None


def position_marginals(
    cand: slate.Candidates,
    limit: int,
    policy: slate.SlatePolicy,
    explore: bool,
    rng: np.random.Generator,
    samples: int = SOFTMAX_SAMPLES,
) -> np.ndarray:
    """(candidates, limit): the policy's probability of each candidate at each position."""
    out = np.zeros((len(cand), limit))
    order = cand.order()
    if not explore:
        for j, (i, _) in enumerate(slate.select(cand, limit, policy, None, order)):
            out[i, j] = 1.0
        return out
    return slate.sample_marginals(cand, limit, policy, rng, samples)


def view_targets(
    cand: slate.Candidates,
    logged: list[int],
    p_cond: np.ndarray,
    policy: slate.SlatePolicy,
    explore: bool,
    sequential: bool,
    q_claim: np.ndarray,
    worth: np.ndarray,
    slot_factor: np.ndarray,
    rng: np.random.Generator,
    true_p: np.ndarray | None = None,
) -> ViewTargets:
    """See the module docstring. ``logged``: per slot, the index of the shown offer among ``cand``
    (-1 when it is not among the eligible offers: the policy cannot show it); ``p_cond``: the logged
    conditional propensities; ``q_claim``: the reward model's claim probability per candidate (before
    the slot factor); ``worth``: a claim's value per candidate."""
    n_slots = len(logged)
    marg = position_marginals(cand, n_slots, policy, explore, rng) if len(cand) else np.zeros((0, n_slots))
    q_value = q_claim * worth
    oracle = None
    if true_p is not None:
        oracle = (float((marg * true_p[:, None]).sum()), float((marg * (true_p * worth)[:, None]).sum()))
    # The direct method: the reward model's value of the policy's own slate, slot by slot (in both
    # modes: for the sequential estimator this is the doubly robust form of Jiang & Li (2016), whose
    # continuation values telescope to the value of the whole slate plus weighted residuals).
    dm_c, dm_v = (q_claim @ marg) * slot_factor, (q_value @ marg) * slot_factor
    if not sequential:
        idx = np.asarray(logged)
        p = (
            np.where(idx >= 0, marg[np.maximum(idx, 0), np.arange(n_slots)], 0.0)
            if len(cand)
            else np.zeros(n_slots)
        )
        return ViewTargets(p, dm_c, dm_v, oracle)
    p_target = np.zeros(n_slots)
    s = slate.Slate(cand, n_slots, policy) if len(cand) else None
    p_prefix = 1.0
    for j in range(n_slots):
        dist = s.distribution(explore) if s is not None else None
        if dist is None:
            break  # the policy shows nothing more here
        offers, probs = dist
        a = logged[j]
        pi = float(probs[offers.index(a)]) if a in offers else 0.0
        p_prefix *= pi
        p_target[j] = p_prefix
        if pi == 0.0:
            break  # the policy would never show this prefix: the slots below carry no weight
        assert s is not None
        s.take(a, pi)
    return ViewTargets(p_target, dm_c, dm_v, oracle)


def member_fold(member_id: str, folds: int = 2) -> int:
    """A member's cross-fitting fold (stable across runs and machines)."""
    return zlib.crc32(member_id.encode()) % folds


class RewardModel:
    """Claim probability of a shown offer from its point-in-time features, fitted per fold on the
    *other* folds' logged impressions (cross-fitting: a view is never corrected by a model that saw
    it), with a per-slot factor (observed claims / predicted at that slot) for position effects."""

    def __init__(
        self, X: np.ndarray, y: np.ndarray, folds: np.ndarray, slots: np.ndarray, n_folds: int = 2
    ) -> None:
        self.models: list[lgb.Booster] = []
        self.factors: list[np.ndarray] = []
        n_slots = int(slots.max()) + 1 if len(slots) else 1
        for f in range(n_folds):
            train = folds != f
            if not train.any() or len(np.unique(y[train])) < 2:
                raise ValueError(
                    "too little logged data to fit the doubly robust reward model: every fold needs "
                    "claims and non-claims from other members"
                )
            booster = lgb.train(
                REWARD_PARAMS, lgb.Dataset(X[train], label=y[train]), num_boost_round=REWARD_ROUNDS
            )
            pred = np.asarray(booster.predict(X[train]), dtype=np.float64)
            obs = np.bincount(slots[train], weights=y[train], minlength=n_slots)
            exp = np.bincount(slots[train], weights=pred, minlength=n_slots)
            factor = np.where(exp > 0, obs / np.maximum(exp, 1e-12), 1.0)
            self.models.append(booster)
            self.factors.append(np.clip(factor, 0.25, 4.0))

    def predict(self, fold: int, X: np.ndarray) -> np.ndarray:
        if len(X) == 0:
            return np.zeros(0)
        return np.asarray(self.models[fold].predict(X), dtype=np.float64)

    def slot_factor(self, fold: int, n_slots: int) -> np.ndarray:
        f = self.factors[fold]
        return np.r_[f, np.ones(max(0, n_slots - len(f)))][:n_slots]
