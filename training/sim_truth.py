"""The latent response model: the true claim probability of an offer shown to a member (the oracle).

Ordinary offers respond to segment x subtype tastes, the member's recent interest in the offer's
category, the page, value against basket, the birthday month, the sales day and fatigue. Lifecycle
offers (the catalogue's families in :data:`features.demo_catalog.LIFECYCLE_FAMILIES`) respond to the
member's lifecycle instead: how long a silent member has been away, how close a paid membership is to
its end (or how long ago it lapsed), how far the next tier is against the usual basket, how many points
are about to expire and how new a member is. Those are the facts the lifecycle features show the model;
segment tastes are what it has to infer from behaviour.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from features import lifecycle as lc
from features.demo_catalog import LIFECYCLE_FAMILIES
from features.offers import ALL_SUBTYPES, OFFER_KINDS
from features.state import MemberState
from training.sim_population import LIFECYCLE, SEG, SEGMENTS

SUB = {s: i for i, s in enumerate(ALL_SUBTYPES)}
BASE_LOGIT = -4.1


def _affinity() -> np.ndarray:
    """Segment x subtype additive logit: the part of the truth no feature shows directly."""
    a = np.zeros((len(SEGMENTS), len(ALL_SUBTYPES)))

    def put(seg: str, **kw: float) -> None:
        for sub, v in kw.items():
            a[SEG[seg], SUB[sub]] = v

    put("trend_seeker", limited=1.9, category=0.4, beauty=0.8, stylist=1.2, partner_perk=0.9)
    put("trend_seeker", no_threshold=0.2)
    put("trend_seeker", health=-1.2, financial_planning=-0.8, home_pickup_returns=-0.6, nutrition=-0.5)
    put("price_sensitive", threshold=1.0, no_threshold=1.5, category=1.0, shipping=1.1, points_multiplier=0.9)
    put("price_sensitive", limited=0.3, stylist=-1.0, priority_delivery=-0.8, partner_perk=-0.6)
    put("senior_home", health=2.2, nutrition=1.4, home_pickup_returns=1.6, dedicated_service=1.0)
    put("senior_home", limited=-1.2, stylist=-0.8, beauty=-0.5, partner_perk=-0.5, threshold=-0.2)
    put("vip_paid", free_shipping=1.6, priority_delivery=1.9, shipping=0.6, dedicated_service=1.1)
    put("vip_paid", financial_planning=1.0, partner_perk=0.8, no_threshold=-0.5, threshold=-0.3)
    put("casual", no_threshold=0.5, free_shipping=0.4, threshold=0.1)
    return a


AFFINITY = _affinity()

#: Families whose response is the lifecycle model below (the birthday gift is an ordinary benefit whose
#: birthday-month lift is part of the ordinary model).
LIFECYCLE_LOGIT_FAMILIES: tuple[str, ...] = tuple(f for f in LIFECYCLE_FAMILIES if f != "birthday")
#: Segment lift per lifecycle family (segments in SEGMENTS order).
_LIFE_SEG = {
    "wake_up": np.array([0.2, 0.8, -0.2, -0.3, 0.4]),
    "welcome": np.array([0.3, 0.6, -0.1, 0.0, 0.2]),
    "renewal": np.array([0.0, -0.4, 0.1, 1.0, -0.2]),
    "tier_nudge": np.array([0.3, 0.1, 0.0, 0.5, -0.2]),
    "points_expiry": np.array([-0.1, 0.9, 0.3, -0.4, 0.1]),
}


@dataclass(frozen=True)
class LifeFacts:
    """The member's lifecycle at a request, as the lifecycle truth reads it."""

    stage: str
    #: Days since the visit before this request (a page request's own page view left out).
    idle_days: float
    tenure_days: float
    paid_days_left: float | None
    paid_days_lapsed: float | None
    tier_gap: float | None
    points_expiring: int
    points_days: float  # days until the earliest expiring lot within 30 days (30 when none)


def life_facts(state: MemberState, now: float, idle_days: float) -> LifeFacts:
    joined = state.joined_ts or state.first_seen_ts
    lots = [exp for exp, _ in state.points_expiring if now < exp <= now + 30 * 86400.0]
    return LifeFacts(
        stage=lc.stage(state, now, LIFECYCLE),
        idle_days=idle_days,
        tenure_days=(now - joined) / 86400.0 if joined else 0.0,
        paid_days_left=lc.paid_days_left(state, now),
        paid_days_lapsed=lc.paid_days_since_lapse(state, now),
        tier_gap=lc.tier_progress(state, now, LIFECYCLE.tiers).gap,
        points_expiring=lc.points_expiring_within(state, now, 30.0),
        points_days=(min(lots) - now) / 86400.0 if lots else 30.0,
    )


def lifecycle_logit(family: str, seg: int, facts: LifeFacts, value: float, basket: float) -> float:
    """Logit of a lifecycle offer's claim (before the member's intercept, fatigue and time of day)."""
    z = float(_LIFE_SEG[family][seg])
    if family == "wake_up":
        # Silent members respond; the longer away, the less.
        z += -1.9 + 0.02 * value - 0.01 * max(0.0, min(facts.idle_days, 150.0) - 30.0)
        z += 0.3 if facts.stage == "returning" else 0.0
    elif family == "welcome":
        z += -1.7 + 0.02 * value - 0.04 * min(facts.tenure_days, 60.0)
    elif family == "renewal":
        if facts.paid_days_left is not None:
            # Members decide close to the end: the nearer, the likelier.
            z += -1.8 + 0.6 * (1.0 - min(facts.paid_days_left, 7.0) / 7.0)
        else:
            lapsed = facts.paid_days_lapsed if facts.paid_days_lapsed is not None else 60.0
            z += -2.5 - 0.03 * lapsed
        z += 0.015 * value
    elif family == "tier_nudge":
        gap = facts.tier_gap if facts.tier_gap is not None else 1000.0
        z += -2.2 + 1.3 * (1.0 - min(gap, 600.0) / 300.0) + (0.4 if basket >= gap else -0.2)
    elif family == "points_expiry":
        z += -2.5 + 0.45 * math.log1p(facts.points_expiring / 100.0)
        z += 0.4 * (1.0 - min(facts.points_days, 30.0) / 30.0)
    else:
        raise ValueError(f"no lifecycle response for family {family!r}")
    return z


def true_logit(
    seg: int,
    member_intercept: float,
    basket: float,
    subtype_idx: np.ndarray,
    kind_idx: np.ndarray,
    cat_idx: np.ndarray,
    value: np.ndarray,
    threshold: np.ndarray,
    interest_1d: np.ndarray,
    page_match: np.ndarray,
    shown_before: np.ndarray,
    birthday: bool,
    sales: bool,
    evening: bool,
) -> np.ndarray:
    """The latent response model (logit of the claim probability) for one member and some offers."""
    z = BASE_LOGIT + member_intercept + AFFINITY[seg, subtype_idx]
    # Recent interest in the offer's category: saturating in decayed views (1-day half-life).
    has_cat = cat_idx >= 0
    z = z + np.where(has_cat, 1.8 * np.tanh(interest_1d / 2.0) - 0.35, 0.0)
    z = z + 0.5 * page_match
    coupon = kind_idx == OFFER_KINDS.index("coupon")
    rel_value = value / np.maximum(threshold, 40.0)
    value_weight = 1.6 if seg == SEG["price_sensitive"] else 0.3
    z = z + np.where(coupon, value_weight * np.minimum(rel_value, 1.0), 0.0)
    # Threshold far above the usual basket: unreachable, hence unattractive.
    z = z - np.where(threshold > 1.5 * basket, 0.9, 0.0)
    if birthday:
        z = z + np.where(subtype_idx == SUB["birthday_gift"], 2.5, 0.0)
    if sales:
        z = z + np.where(coupon, 0.7, 0.0)
    if evening:
        z = z + 0.15
    return z - 0.35 * np.minimum(shown_before, 6)


def offer_logits(
    seg: int,
    member_intercept: float,
    basket: float,
    generic: np.ndarray,
    life_family: list[str | None],
    value: np.ndarray,
    shown_before: np.ndarray,
    evening: bool,
    facts: LifeFacts | None,
) -> np.ndarray:
    """``generic`` (from :func:`true_logit`) with each lifecycle offer's entry replaced by its
    lifecycle response; ``facts`` must be given when any ``life_family`` entry is set."""
    z = generic.copy()
    for j, fam in enumerate(life_family):
        if fam is None:
            continue
        assert facts is not None
        zj = lifecycle_logit(fam, seg, facts, float(value[j]), basket)
        z[j] = zj + member_intercept + (0.15 if evening else 0.0) - 0.35 * min(float(shown_before[j]), 6.0)
    return z
