"""The simulated members: segments, tastes, membership attributes and where each member's lifecycle
stands when the horizon starts (active, lapsing, silent, new, or joining during the horizon).

Everything is drawn once, vectorised, from the run's generator; the run then changes only the
lifecycle arrays (``active_from``/``active_until``: a silent member woken up, a member who stops
visiting).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from features import events as ev
from features import lifecycle as lc
from features.decay import DAY
from features.offers import CATEGORIES

SEGMENTS: tuple[str, ...] = ("trend_seeker", "price_sensitive", "senior_home", "vip_paid", "casual")
SEGMENT_SHARE = np.array([0.22, 0.28, 0.18, 0.12, 0.20])
SHOP_CATEGORIES: tuple[str, ...] = tuple(c for c in CATEGORIES if c != "other")
REGIONS: tuple[str, ...] = ("tier1_city", "tier2_city", "tier3_city", "county")
DEVICES: tuple[str, ...] = ("ios", "android", "desktop")
SIM_CHANNELS: tuple[str, ...] = ("app", "mini_program", "web")
SEG = {s: i for i, s in enumerate(SEGMENTS)}

#: Where a member's lifecycle stands at the start of the horizon (``Members.start_stage``).
START_STAGES: tuple[str, ...] = ("active", "lapsing", "silent", "new", "joins")
ACTIVE, LAPSING, SILENT, NEW, JOINS = range(len(START_STAGES))

#: The programme's rules the simulated members live under (the features' defaults).
LIFECYCLE = lc.DEFAULT_CONFIG
PLAN = "PLUS"


def _cat_weights(**w: float) -> list[float]:
    return [w.get(c, 0.5) for c in SHOP_CATEGORIES]


# Long-run category preference (Dirichlet means, before normalisation) per segment.
_CAT_BASE = np.array(
    [
        _cat_weights(fashion=4, beauty=3, electronics=3, sports=2, toys=1, outdoor=1),
        _cat_weights(grocery=4, home=3, baby=2, pets=2, toys=1.5),
        _cat_weights(health=4, grocery=3, home=3, books=2, outdoor=1, baby=0.2, toys=0.3, fashion=0.3),
        _cat_weights(electronics=3, fashion=2, home=2, outdoor=2, sports=1.5, beauty=1.5),
        _cat_weights(),
    ]
)
_TIER_P = np.array(
    [
        [0.5, 0.3, 0.15, 0.05],
        [0.6, 0.3, 0.1, 0.0],
        [0.3, 0.4, 0.25, 0.05],
        [0.0, 0.15, 0.45, 0.4],
        [0.6, 0.25, 0.12, 0.03],
    ]
)
_PAID_P = np.array([0.15, 0.05, 0.15, 0.85, 0.08])
_REGION_P = np.array(
    [
        [0.5, 0.35, 0.1, 0.05],
        [0.05, 0.2, 0.45, 0.3],
        [0.25, 0.35, 0.25, 0.15],
        [0.6, 0.3, 0.08, 0.02],
        [0.3, 0.3, 0.3, 0.1],
    ]
)
_DEVICE_P = np.array(
    [[0.5, 0.45, 0.05], [0.15, 0.75, 0.1], [0.2, 0.4, 0.4], [0.6, 0.2, 0.2], [0.34, 0.33, 0.33]]
)
_CHANNEL_P = np.array([[0.7, 0.2, 0.1], [0.4, 0.5, 0.1], [0.5, 0.2, 0.3], [0.7, 0.1, 0.2], [0.5, 0.25, 0.25]])
SESSIONS_PER_DAY = np.array([1.2, 0.9, 0.6, 1.0, 0.5])
PAGES_MEAN = np.array([3.5, 2.5, 2.0, 2.5, 2.0])
_BASKET_MEAN = np.array([120.0, 70.0, 110.0, 300.0, 100.0])
_TENURE_MEAN_DAYS = np.array([300.0, 500.0, 1200.0, 900.0, 400.0])
CART_P = np.array([0.3, 0.3, 0.25, 0.35, 0.2])
_PARENT_P = np.array([0.2, 0.2, 0.02, 0.1, 0.12])

# --- lifecycle at the start ------------------------------------------------------------------------------
#: Share of established members who are silent (no visit for 30-150 days) / lapsing (14-30 days).
_SILENT_P = np.array([0.12, 0.14, 0.12, 0.06, 0.24])
_LAPSING_P = np.array([0.06, 0.07, 0.06, 0.04, 0.10])
#: Mean days until a silent / lapsing member comes back by themself (most do not within the horizon).
SILENT_RETURN_DAYS = 90.0
LAPSING_RETURN_DAYS = 30.0
#: Share of members who join during the horizon, and of active members who stop visiting in it.
JOIN_P = 0.06
CHURN_P = 0.05
#: Paid members on a monthly plan (else annual); members whose paid membership lapsed in the 30 days
#: before the horizon, per segment.
MONTHLY_PLAN_P = 0.6
_LAPSED_PAID_P = np.array([0.05, 0.03, 0.05, 0.10, 0.03])
#: Members with a lot of points expiring within the horizon's first weeks.
POINTS_EXPIRING_P = 0.5
#: History is at most this old (inside the tier window, so the growth value is exactly the drawn one).
HISTORY_DAYS = 350.0
HISTORY_ORDERS_MAX = 30


def tier_band(tier: int) -> tuple[float, float]:
    """The growth values a tier holds under :data:`LIFECYCLE` (the top tier's band is open: x2.5)."""
    th = LIFECYCLE.tiers.thresholds
    edges = [0.0, *(float(th[t]) for t in ev.TIERS[1:])]  # type: ignore[index]
    lo = edges[tier]
    hi = edges[tier + 1] if tier + 1 < len(edges) else lo * 2.5
    return lo, hi


@dataclass
class Members:
    member_id: list[str]
    segment: np.ndarray
    tier: np.ndarray
    paid: np.ndarray
    points: np.ndarray
    region: np.ndarray
    birth_month: np.ndarray
    joined_ts: np.ndarray
    device: np.ndarray
    channel: np.ndarray
    rate: np.ndarray
    basket: np.ndarray
    prefs: np.ndarray  # (n, len(SHOP_CATEGORIES)) rows sum to 1
    intercept: np.ndarray
    parent_ts: np.ndarray  # 0 = not a parent; start_ts = parent all along; later = becomes one then
    # Lifecycle at the start of the horizon.
    start_stage: np.ndarray  # index into START_STAGES
    last_visit_ts: np.ndarray  # latest visit before the horizon (0: joins during it)
    growth: np.ndarray  # growth value over the tier window at the start (history orders sum to it)
    paid_expires_ts: np.ndarray  # paid members: when the membership ends unless renewed (else 0)
    paid_period_days: np.ndarray  # 30 (monthly) or 365 (annual) for current and lapsed paid members
    paid_lapsed_ts: np.ndarray  # ex-paid members: when it lapsed, before the horizon (else 0)
    lot_points: np.ndarray  # points of the balance that expire at lot_expires_ts (0 = none)
    lot_expires_ts: np.ndarray
    # Mutable during the run: the member visits only within [active_from, active_until).
    active_from: np.ndarray
    active_until: np.ndarray

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "member_id": self.member_id,
                "segment": [SEGMENTS[s] for s in self.segment],
                "tier": [ev.TIERS[t] for t in self.tier],
                "paid_member": self.paid,
                "points": self.points,
                "region": [REGIONS[r] for r in self.region],
                "birth_month": self.birth_month,
                "joined_ts": self.joined_ts,
                "device": [DEVICES[d] for d in self.device],
                "channel": [SIM_CHANNELS[c] for c in self.channel],
                "sessions_per_day": self.rate,
                "basket_mean": self.basket,
                "new_parent_ts": self.parent_ts,
                "start_stage": [START_STAGES[s] for s in self.start_stage],
                "last_visit_ts": self.last_visit_ts,
                "growth_value": self.growth,
                "paid_expires_ts": self.paid_expires_ts,
                "paid_period_days": self.paid_period_days,
                "paid_lapsed_ts": self.paid_lapsed_ts,
                "points_expiring": self.lot_points,
                "points_expire_ts": self.lot_expires_ts,
            }
        )


def pick(rng: np.random.Generator, probs: np.ndarray) -> np.ndarray:
    """One categorical draw per row of ``probs`` (vectorised inverse CDF)."""
    cdf = np.cumsum(probs, axis=1)
    cdf /= cdf[:, -1:]
    u = rng.random(len(probs))[:, None]
    return np.minimum((u > cdf).sum(axis=1), probs.shape[1] - 1)


def make_members(n: int, start_ts: float, days: float, rng: np.random.Generator) -> Members:
    seg = rng.choice(len(SEGMENTS), size=n, p=SEGMENT_SHARE)
    prefs = rng.gamma(_CAT_BASE[seg] * 2.0) + 1e-6
    parent = rng.random(n) < _PARENT_P[seg]
    # 40% of parents become parents during the horizon: their baby browsing starts then (directional).
    late = parent & (rng.random(n) < 0.4)
    parent_ts = np.where(parent, start_ts, 0.0)
    parent_ts = np.where(late, start_ts + rng.uniform(0.3, 0.7, n) * days * DAY, parent_ts)
    prefs[:, SHOP_CATEGORIES.index("baby")] *= np.where(parent & ~late, 6.0, 1.0)
    prefs /= prefs.sum(axis=1, keepdims=True)
    tier = pick(rng, _TIER_P[seg])
    points = np.round(rng.lognormal(np.log(200.0 * (1 + 2 * tier)), 0.8)).astype(np.int64)
    m = Members(
        member_id=[f"m{i:07d}" for i in range(n)],
        segment=seg,
        tier=tier,
        paid=rng.random(n) < _PAID_P[seg],
        points=points,
        region=pick(rng, _REGION_P[seg]),
        birth_month=rng.integers(1, 13, n),
        # Capped at 15 years: event timestamps before 2000 are refused by the event schema.
        joined_ts=start_ts - np.minimum(rng.exponential(_TENURE_MEAN_DAYS[seg]), 15 * 365.0) * DAY - DAY,
        device=pick(rng, _DEVICE_P[seg]),
        channel=pick(rng, _CHANNEL_P[seg]),
        rate=SESSIONS_PER_DAY[seg] * rng.lognormal(-0.125, 0.5, n),
        basket=_BASKET_MEAN[seg] * rng.lognormal(-0.18, 0.6, n),
        prefs=prefs,
        intercept=rng.normal(0.0, 0.5, n),
        parent_ts=parent_ts,
        start_stage=np.zeros(n, dtype=np.int64),
        last_visit_ts=np.zeros(n),
        growth=np.zeros(n),
        paid_expires_ts=np.zeros(n),
        paid_period_days=np.zeros(n),
        paid_lapsed_ts=np.zeros(n),
        lot_points=np.zeros(n, dtype=np.int64),
        lot_expires_ts=np.zeros(n),
        active_from=np.full(n, start_ts),
        active_until=np.full(n, np.inf),
    )
    _lifecycle(m, start_ts, days, rng)
    return m


def _lifecycle(m: Members, start_ts: float, days: float, rng: np.random.Generator) -> None:
    """Draw where each member's lifecycle stands at ``start_ts`` (in place)."""
    n = len(m.member_id)
    seg = m.segment
    # Draws first, all of them, so that each array's draws do not depend on another's outcome.
    u_stage, u_join, u_churn = rng.random(n), rng.random(n), rng.random(n)
    join_at = start_ts + rng.uniform(0.05, 0.8, n) * days * DAY
    churn_at = start_ts + rng.uniform(0.1, 0.9, n) * days * DAY
    silent_gap = rng.uniform(30.5, 150.0, n)
    lapsing_gap = rng.uniform(14.5, 29.5, n)
    active_gap = rng.uniform(0.05, 4.0, n)
    back_silent = rng.exponential(SILENT_RETURN_DAYS, n)
    back_lapsing = rng.exponential(LAPSING_RETURN_DAYS, n)
    u_growth = rng.random(n)
    u_plan, plan_left, u_lapsed, lapsed_ago = (
        rng.random(n),
        rng.random(n),
        rng.random(n),
        rng.uniform(1, 29, n),
    )
    u_lot, lot_share, lot_days = rng.random(n), rng.uniform(0.2, 0.6, n), rng.uniform(1.0, 45.0, n)

    joins = u_join < JOIN_P
    m.joined_ts = np.where(joins, join_at, m.joined_ts)
    tenure = (start_ts - m.joined_ts) / DAY
    new = ~joins & (tenure < LIFECYCLE.new_days)
    silent = ~joins & ~new & (u_stage < _SILENT_P[seg]) & (tenure > silent_gap + 1)
    lapsing = ~joins & ~new & ~silent & (u_stage > 1 - _LAPSING_P[seg]) & (tenure > lapsing_gap + 1)
    stage = np.full(n, ACTIVE)
    stage[lapsing], stage[silent], stage[new], stage[joins] = LAPSING, SILENT, NEW, JOINS
    m.start_stage = stage
    gap = np.where(silent, silent_gap, np.where(lapsing, lapsing_gap, np.minimum(active_gap, tenure * 0.5)))
    m.last_visit_ts = np.where(joins, 0.0, start_ts - gap * DAY)
    m.active_from = np.where(
        joins,
        m.joined_ts,
        np.where(
            silent,
            start_ts + back_silent * DAY,
            np.where(lapsing, start_ts + back_lapsing * DAY, start_ts),
        ),
    )
    m.active_until = np.where((stage == ACTIVE) & (u_churn < CHURN_P), churn_at, np.inf)

    # Tiers follow the growth value of the last year: members who are new have had little time.
    young = tenure < 60
    m.tier = np.where(joins | young, 0, m.tier)
    lo_hi = np.array([tier_band(t) for t in range(len(ev.TIERS))])
    lo, hi = lo_hi[m.tier, 0], lo_hi[m.tier, 1]
    hi = np.where(young & ~joins, np.minimum(hi, m.basket * 3), hi)
    m.growth = np.where(joins, 0.0, np.round(lo + u_growth * (hi - lo), 0))
    m.points = np.where(joins, 100, m.points)

    # Paid membership: monthly or annual plans, expiring anywhere in the current period.
    m.paid = m.paid & ~joins
    period = np.where(u_plan < MONTHLY_PLAN_P, 30.0, 365.0)
    m.paid_period_days = np.where(m.paid, period, 0.0)
    m.paid_expires_ts = np.where(m.paid, start_ts + (0.2 + plan_left * (period - 0.2)) * DAY, 0.0)
    lapsed = ~m.paid & ~joins & ~new & (u_lapsed < _LAPSED_PAID_P[seg])
    m.paid_lapsed_ts = np.where(lapsed, start_ts - lapsed_ago * DAY, 0.0)
    m.paid_period_days = np.where(lapsed, period, m.paid_period_days)

    has_lot = ~joins & (u_lot < POINTS_EXPIRING_P) & (m.points >= 50)
    m.lot_points = np.where(has_lot, np.maximum(1, np.round(m.points * lot_share)), 0).astype(np.int64)
    m.lot_expires_ts = np.where(has_lot, start_ts + lot_days * DAY, 0.0)
