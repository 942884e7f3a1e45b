"""The ranking objective, written down once: what a slot is worth for one offer shown to one member.

For eligible offer ``i`` with calibrated claim probability ``p_i`` (the model's, or the offer's
smoothed prior claim rate when no model scores)::

    score_i = p_i * member_value_i * pacing_i  -  cost_weight * p_i * cost_i

    member_value_i = claim_value + value_weight * value_i        (currency)

- ``value_i`` is what the member gets (discount, worth of a benefit), ``cost_i`` what one claim costs
  the business (drawn from the budget); both in currency, from the offer.
- ``claim_value`` (currency) is what the programme gains from one claim beyond the member's own
  value (an engaged member); ``value_weight`` and ``cost_weight`` trade the three off. Costs are only
  paid when a claim happens, hence ``p_i * cost_i``: an expected cost, like the expected gain.
- ``pacing_i`` in ``[floor, 1]`` damps the gain (never the cost, so a damped offer can only fall) of
  a budgeted offer that (a) spends ahead of its campaign schedule (share of budget left below the
  share of time left: ``budget_left / time_left``), or (b) has nearly spent its budget (share left
  below ``reserve_fraction``: ``budget_left / reserve_fraction``); the smaller factor wins.
  Unbudgeted offers have pacing 1.

Consequences the tests hold the code to: for the same ``p`` a higher cost ranks lower; for the same
``p`` and offer, a budget nearly spent ranks lower; with ``cost_weight = 0`` and no budgets the order
is ``p * member_value``.

Vectorised over the eligible offers (numpy, a handful of array operations: microseconds at 500 offers).
Pure (no service, no clock): the service ranks with it and training evaluates the same policy offline
(``training.counterfactual``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from features.offers import Offer


@dataclass(frozen=True)
class Objective:
    """Weights of the objective (settings ``objective_claim_value``, ``value_weight``, ``cost_weight``,
    ``pacing_*``)."""

    #: Currency the programme gains from one claim, besides the member's value.
    claim_value: float = 20.0
    #: Weight of the member's value of the offer (per currency of ``Offer.value``).
    value_weight: float = 0.3
    #: Weight of the expected cost (per currency of ``Offer.cost``).
    cost_weight: float = 1.0
    #: Lowest pacing factor (an offer far ahead of schedule keeps this share of its gain).
    pacing_floor: float = 0.1
    #: Share of budget below which an offer's gain is damped whatever the schedule.
    pacing_reserve_fraction: float = 0.1


def pacing(
    budget_left: np.ndarray,
    time_left: np.ndarray,
    objective: Objective,
) -> np.ndarray:
    """Pacing factor per offer in ``[pacing_floor, 1]``.

    ``budget_left``: share of the budget not yet spent, in [0, 1] (1 for unbudgeted offers);
    ``time_left``: share of the campaign still to run, in [0, 1] (0 for offers without a campaign
    window, so the schedule never damps them).
    """
    # np.minimum/np.maximum rather than np.clip/np.where: a few microseconds less per request.
    b = np.minimum(np.maximum(budget_left, 0.0), 1.0)
    t = np.maximum(time_left, 1e-9)
    # Ahead of schedule when less budget than time is left (b / t < 1); on or behind schedule -> 1.
    schedule = b / t
    nearly_spent = b / max(objective.pacing_reserve_fraction, 1e-9)
    out: np.ndarray = np.maximum(np.minimum(np.minimum(schedule, nearly_spent), 1.0), objective.pacing_floor)
    return out


def score(
    p: np.ndarray,
    value: np.ndarray,
    cost: np.ndarray,
    pace: np.ndarray,
    objective: Objective,
) -> np.ndarray:
    """``p * (claim_value + value_weight * value) * pace - cost_weight * p * cost`` per offer."""
    member_value = objective.claim_value + objective.value_weight * value
    out: np.ndarray = p * (member_value * pace - objective.cost_weight * cost)
    return out


def time_left_share(end: np.ndarray, inv_duration: np.ndarray, now: float) -> np.ndarray:
    """Share of each campaign still to run at ``now``, in [0, 1].

    ``end`` is the campaign end and ``inv_duration`` 1 / its length; both 0 for an offer without a
    campaign window, whose share is then 0 (the schedule never damps it).
    """
    out: np.ndarray = np.minimum(np.maximum((end - now) * inv_duration, 0.0), 1.0)
    return out


def shares_left(offers: Sequence[Offer], cost_used: np.ndarray) -> np.ndarray:
    """Share of each offer's budget not yet spent, in [0, 1] (1 for unbudgeted offers), given the
    budget spent per offer (aligned with ``offers``)."""
    out = np.ones(len(offers), dtype=np.float64)
    for i, o in enumerate(offers):
        if o.budget is not None:
            out[i] = max(0.0, 1.0 - float(cost_used[i]) / o.budget) if o.budget > 0 else 0.0
    return out


def campaign_windows(offers: Sequence[Offer]) -> tuple[np.ndarray, np.ndarray]:
    """(campaign end, 1 / campaign length) per offer, both 0 for an offer without a campaign window:
    the inputs of :func:`time_left_share`."""
    end = np.zeros(len(offers), dtype=np.float64)
    inv_duration = np.zeros(len(offers), dtype=np.float64)
    for i, o in enumerate(offers):
        if o.campaign_start_ts is not None and o.campaign_end_ts is not None:
            end[i] = o.campaign_end_ts
            inv_duration[i] = 1.0 / (o.campaign_end_ts - o.campaign_start_ts)  # validated end > start
    return end, inv_duration
