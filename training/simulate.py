"""Simulator: members, the demo catalog, a member event stream and logged impressions with outcomes.

What it models, and why (the point is that personalisation from the features must matter, and that we
know the truth to compare against):

- **Segments** with their own tastes: young trend-seekers (limited drops, fashion/beauty, stylist);
  price-sensitive members in smaller cities (discount coupons, points); older members (health and
  nutrition consults, home pickup, dedicated service); high-value paid members (free shipping, priority
  delivery, partner perks); and casual members. Segment sets tier, paid membership, points, tenure,
  region, device, channel, basket size, activity and category preferences. A share of members are
  (or become, mid-horizon) young parents who browse baby products.
- **Sessions** follow a daily rhythm (lunch and evening peaks), a weekly one (busier weekends) and a
  sales day (2.5x traffic, coupons more attractive). A session has a focus category, page views,
  searches, maybe a cart and an order (which may redeem a claimed coupon and earns points).
- **Requests**: some page views ask for a slate. The *logging policy* samples the slate among the
  offers that :func:`features.eligibility.evaluate` says are eligible for the member's simulated state
  at that time (so caps, cool-downs, inventory and budget all apply), mixing uniform exploration with a
  mild "same category as the page" preference, by Plackett-Luce sampling. Each shown item records its
  propensity: the probability that the policy picked it at its position given the items above it.
- **Outcomes** are drawn from a latent true claim probability ``true_p`` (logistic) that depends on
  segment x offer subtype, the member's recent interest in the offer's category (decayed page views,
  1-day half-life, as folded into the member state), the page context, value vs basket for the
  price-sensitive, birthday month, the sales day, repeated exposure (fatigue) and a per-member
  intercept. A claim is preceded by a click; some non-claims click or dismiss.

Everything is also an event (``impression``, ``click``, ``coupon_claim`` / ``benefit_use`` /
``consult_booked``, ``dismiss``, ``order``, ``coupon_redeem``, ``points_changed``, plus
``profile_updated``, ``tier_changed``, ``paid_membership_started`` and ``points_changed`` at the start).

Output directory::

    events.jsonl         one features.events.encode(event) per line, sorted by event_ts
    impressions.parquet  request_id, member_id, offer_id, event_ts, position, page_type, category,
                         device, channel, propensity, label (claimed), clicked, true_p, segment
    members.parquet      member_id, segment, tier, paid_member, points, region, birth_month, joined_ts,
                         device, channel, sessions_per_day, basket_mean, new_parent_ts (0 = none)
    catalog.json         list of Offer.model_dump(mode="json")
    meta.json            parameters, counts, time window, sales day, timings
    candidates.parquet   with ``offpolicy_log`` only: request_id, offer_id, true_p, logging_p of every
                         eligible offer of every request; impressions then also carry
                         ``propensity_marginal`` (see training/sim_offpolicy.py)

Determinism: the same arguments (including ``seed``) give byte-identical outputs.
Units: timestamps are Unix seconds (UTC); the simulated "local" clock is UTC.
"""

from __future__ import annotations

import heapq
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from features import events as ev
from features.decay import DAY, HOUR
from features.demo_catalog import demo_catalog
from features.eligibility import EligibilityTable, evaluate
from features.offers import ALL_SUBTYPES, CATEGORIES, CATEGORY_INDEX, OFFER_KINDS, Offer
from features.projection import Context, OfferTable
from features.state import MemberState, apply, new_state
from training.sim_offpolicy import OffPolicyLog

log = logging.getLogger(__name__)

#: 2025-03-01T00:00:00Z: a fixed epoch keeps runs reproducible (the clock is never read).
DEFAULT_START_TS = 1740787200.0

SEGMENTS: tuple[str, ...] = ("trend_seeker", "price_sensitive", "senior_home", "vip_paid", "casual")
SEGMENT_SHARE = np.array([0.22, 0.28, 0.18, 0.12, 0.20])
SHOP_CATEGORIES: tuple[str, ...] = tuple(c for c in CATEGORIES if c != "other")
REGIONS: tuple[str, ...] = ("tier1_city", "tier2_city", "tier3_city", "county")
DEVICES: tuple[str, ...] = ("ios", "android", "desktop")
SIM_CHANNELS: tuple[str, ...] = ("app", "mini_program", "web")

_SEG = {s: i for i, s in enumerate(SEGMENTS)}
_SUB = {s: i for i, s in enumerate(ALL_SUBTYPES)}


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
_SESSIONS_PER_DAY = np.array([1.2, 0.9, 0.6, 1.0, 0.5])
_PAGES_MEAN = np.array([3.5, 2.5, 2.0, 2.5, 2.0])
_BASKET_MEAN = np.array([120.0, 70.0, 110.0, 300.0, 100.0])
_TENURE_MEAN_DAYS = np.array([300.0, 500.0, 1200.0, 900.0, 400.0])
_CART_P = np.array([0.3, 0.3, 0.25, 0.35, 0.2])
_PARENT_P = np.array([0.2, 0.2, 0.02, 0.1, 0.12])

# Hour-of-day and day-of-week traffic shape (UTC stands in for local time).
_HOURLY = np.array(
    [
        *(0.2, 0.1, 0.05, 0.05, 0.05, 0.1, 0.3, 0.6, 0.8, 0.9, 1.0, 1.1),
        *(1.3, 1.1, 1.0, 1.0, 1.0, 1.1, 1.3, 1.6, 1.9, 2.0, 1.6, 0.8),
    ]
)
_WEEKLY = np.array([1.0, 1.0, 1.0, 1.0, 1.1, 1.35, 1.3])  # Monday first
SALES_TRAFFIC = 2.5


def _affinity() -> np.ndarray:
    """Segment x subtype additive logit: the part of the truth no feature shows directly."""
    a = np.zeros((len(SEGMENTS), len(ALL_SUBTYPES)))

    def put(seg: str, **kw: float) -> None:
        for sub, v in kw.items():
            a[_SEG[seg], _SUB[sub]] = v

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
BASE_LOGIT = -4.1


@dataclass
class SimConfig:
    n_members: int = 2000
    days: float = 14.0
    n_offers: int = 200
    seed: int = 1
    start_ts: float = DEFAULT_START_TS
    request_p: float = 0.45
    slate_size: int = 4
    progress: bool = True
    #: Also write what counterfactual evaluation needs (training.sim_offpolicy): each impression's
    #: marginal propensity and candidates.parquet (every eligible offer's true claim probability).
    offpolicy_log: bool = False


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
            }
        )


def _pick(rng: np.random.Generator, probs: np.ndarray) -> np.ndarray:
    """One categorical draw per row of ``probs`` (vectorised inverse CDF)."""
    cdf = np.cumsum(probs, axis=1)
    cdf /= cdf[:, -1:]
    u = rng.random(len(probs))[:, None]
    return np.minimum((u > cdf).sum(axis=1), probs.shape[1] - 1)


def make_members(cfg: SimConfig, rng: np.random.Generator) -> Members:
    n = cfg.n_members
    seg = rng.choice(len(SEGMENTS), size=n, p=SEGMENT_SHARE)
    prefs = rng.gamma(_CAT_BASE[seg] * 2.0) + 1e-6
    parent = rng.random(n) < _PARENT_P[seg]
    # 40% of parents become parents during the horizon: their baby browsing starts then (directional).
    late = parent & (rng.random(n) < 0.4)
    parent_ts = np.where(parent, cfg.start_ts, 0.0)
    parent_ts = np.where(late, cfg.start_ts + rng.uniform(0.3, 0.7, n) * cfg.days * DAY, parent_ts)
    prefs[:, SHOP_CATEGORIES.index("baby")] *= np.where(parent & ~late, 6.0, 1.0)
    prefs /= prefs.sum(axis=1, keepdims=True)
    tier = _pick(rng, _TIER_P[seg])
    points = np.round(rng.lognormal(np.log(200.0 * (1 + 2 * tier)), 0.8)).astype(np.int64)
    return Members(
        member_id=[f"m{i:07d}" for i in range(n)],
        segment=seg,
        tier=tier,
        paid=rng.random(n) < _PAID_P[seg],
        points=points,
        region=_pick(rng, _REGION_P[seg]),
        birth_month=rng.integers(1, 13, n),
        joined_ts=cfg.start_ts - rng.exponential(_TENURE_MEAN_DAYS[seg]) * DAY - DAY,
        device=_pick(rng, _DEVICE_P[seg]),
        channel=_pick(rng, _CHANNEL_P[seg]),
        rate=_SESSIONS_PER_DAY[seg] * rng.lognormal(-0.125, 0.5, n),
        basket=_BASKET_MEAN[seg] * rng.lognormal(-0.18, 0.6, n),
        prefs=prefs,
        intercept=rng.normal(0.0, 0.5, n),
        parent_ts=parent_ts,
    )


def _intensity(cfg: SimConfig, sales_day: int) -> np.ndarray:
    """Relative traffic per hour of the horizon."""
    n_hours = math.ceil(cfg.days * 24)
    hours = np.arange(n_hours)
    ts = cfg.start_ts + hours * HOUR
    dow = ((ts // DAY).astype(np.int64) + 3) % 7  # 1970-01-01 was a Thursday (Monday = 0)
    w = _HOURLY[hours % 24] * _WEEKLY[dow]
    w[(hours // 24) == sales_day] *= SALES_TRAFFIC
    return w


@dataclass
class Timeline:
    """All background activity, one row per page (or search), sorted by time."""

    ts: np.ndarray
    member: np.ndarray
    page_type: np.ndarray  # index into ev.PAGE_TYPES
    category: np.ndarray  # index into SHOP_CATEGORIES, -1 = none
    is_request: np.ndarray
    cart_amount: np.ndarray  # > 0: add_to_cart after this page
    order_amount: np.ndarray  # > 0: order after this page
    extra: dict[str, Any] = field(default_factory=dict)


def make_timeline(cfg: SimConfig, m: Members, rng: np.random.Generator, sales_day: int) -> Timeline:
    inten = _intensity(cfg, sales_day)
    n_hours = len(inten)
    # Expected sessions over the horizon, scaled so that a member's average daily rate holds.
    expected = m.rate * inten.sum() / 24.0
    n_sess = rng.poisson(expected)
    s_member = np.repeat(np.arange(len(n_sess)), n_sess)
    hour = rng.choice(n_hours, size=len(s_member), p=inten / inten.sum())
    s_ts = cfg.start_ts + hour * HOUR + rng.random(len(s_member)) * HOUR
    s_ts = np.maximum(s_ts, cfg.start_ts + 600.0)  # the profile events at the start come first
    seg = m.segment[s_member]
    # Focus category: from long-run preferences, sometimes anything; parents (once parents) often baby.
    focus = _pick(rng, m.prefs[s_member])
    wander = rng.random(len(s_member)) < 0.2
    focus = np.where(wander, rng.integers(0, len(SHOP_CATEGORIES), len(s_member)), focus)
    baby = SHOP_CATEGORIES.index("baby")
    is_parent_now = (m.parent_ts[s_member] > 0) & (s_ts >= m.parent_ts[s_member])
    focus = np.where(is_parent_now & (rng.random(len(s_member)) < 0.5), baby, focus)

    n_pages = 1 + rng.poisson(_PAGES_MEAN[seg])
    p_sess = np.repeat(np.arange(len(s_member)), n_pages)
    first = np.zeros(len(p_sess), dtype=bool)
    starts = np.concatenate([[0], np.cumsum(n_pages)[:-1]])
    first[starts] = True
    gaps = rng.exponential(45.0, len(p_sess))
    gaps[first] = 0.0
    # Cumulative gap within each session.
    cum = np.cumsum(gaps)
    cum -= np.repeat(cum[starts], n_pages)
    p_ts = s_ts[p_sess] + cum
    # Page types: home or search first; then mostly category/product pages.
    later_names = ("category", "product", "search", "member_center", "cart")
    later_types = np.array([ev.PAGE_TYPES.index(t) for t in later_names])
    later = later_types[_pick(rng, np.tile([0.3, 0.45, 0.15, 0.05, 0.05], (len(p_sess), 1)))]
    first_types = np.array([ev.PAGE_TYPES.index("home"), ev.PAGE_TYPES.index("search")])
    first_t = first_types[(rng.random(len(p_sess)) < 0.25).astype(np.int64)]
    page_type = np.where(first, first_t, later)
    p_member = s_member[p_sess]
    page_cat = np.where(rng.random(len(p_sess)) < 0.75, focus[p_sess], _pick(rng, m.prefs[p_member]))
    has_cat = np.isin(page_type, [ev.PAGE_TYPES.index(t) for t in ("category", "product", "search", "cart")])
    page_cat = np.where(has_cat, page_cat, -1)
    is_request = rng.random(len(p_sess)) < cfg.request_p

    # A cart at the last page of some sessions, and an order after some carts.
    last = np.zeros(len(p_sess), dtype=bool)
    last[np.cumsum(n_pages) - 1] = True
    cart = last & (rng.random(len(p_sess)) < _CART_P[m.segment[p_member]])
    amount = m.basket[p_member] * rng.lognormal(-0.1, 0.45, len(p_sess))
    order = cart & (rng.random(len(p_sess)) < 0.55)
    page_cat = np.where(cart & (page_cat < 0), focus[p_sess], page_cat)

    order_idx = np.argsort(p_ts, kind="stable")
    return Timeline(
        ts=p_ts[order_idx],
        member=p_member[order_idx],
        page_type=page_type[order_idx],
        category=page_cat[order_idx],
        is_request=is_request[order_idx],
        cart_amount=np.where(cart, np.round(amount, 2), 0.0)[order_idx],
        order_amount=np.where(order, np.round(amount, 2), 0.0)[order_idx],
        extra={"sessions": len(s_member)},
    )


class _Sink:
    """Collects encoded events with their times; written sorted by (event_ts, emission order) at the end."""

    def __init__(self) -> None:
        self.ts: list[float] = []
        self.raw: list[bytes] = []
        self.n = 0

    def eid(self) -> str:
        self.n += 1
        return f"e{self.n:09d}"

    def add(self, event: ev.Event) -> None:
        self.ts.append(event.event_ts)
        self.raw.append(ev.encode(event))

    def write(self, path: Path) -> None:
        order = np.argsort(np.asarray(self.ts), kind="stable")
        raw = self.raw
        with path.open("wb") as f:
            chunk = 100_000
            for i in range(0, len(order), chunk):
                f.write(b"".join(raw[j] + b"\n" for j in order[i : i + chunk]))


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
    value_weight = 1.6 if seg == _SEG["price_sensitive"] else 0.3
    z = z + np.where(coupon, value_weight * np.minimum(rel_value, 1.0), 0.0)
    # Threshold far above the usual basket: unreachable, hence unattractive.
    z = z - np.where(threshold > 1.5 * basket, 0.9, 0.0)
    if birthday:
        z = z + np.where(subtype_idx == _SUB["birthday_gift"], 2.5, 0.0)
    if sales:
        z = z + np.where(coupon, 0.7, 0.0)
    if evening:
        z = z + 0.15
    return z - 0.35 * np.minimum(shown_before, 6)


def simulate(cfg: SimConfig, out: Path | None = None) -> dict[str, Any]:
    """Run the simulation; write the output directory when ``out`` is given. Returns meta."""
    t_start = time.perf_counter()
    rng = np.random.default_rng(cfg.seed)
    sales_day = int(cfg.days * 0.6) if cfg.days >= 3 else -1
    catalog = demo_catalog(cfg.start_ts, cfg.n_offers, days=max(60.0, cfg.days + 1.0))
    table = OfferTable(catalog)
    elig = EligibilityTable(catalog)
    members = make_members(cfg, rng)
    tl = make_timeline(cfg, members, rng, sales_day)
    t_gen = time.perf_counter()

    n_off = len(catalog)
    kind_idx = table.kind_idx
    sub_idx = np.array([_SUB[o.subtype] for o in catalog])
    cat_idx = np.array([SHOP_CATEGORIES.index(o.category) if o.category else -1 for o in catalog])
    feat_cat_name = [o.category for o in catalog]
    value = table.value
    threshold = table.threshold
    cost = table.cost
    claim_kind: dict[str, Any] = {
        "coupon": ev.CouponClaim,
        "benefit": ev.BenefitUse,
        "consult": ev.ConsultBooked,
    }
    claim_cls: list[Any] = [claim_kind[o.kind] for o in catalog]
    claimed = np.zeros(n_off)
    cost_used = np.zeros(n_off)
    wallets: dict[int, list[int]] = {}  # member -> claimed, unredeemed coupon offers

    sink = _Sink()
    states: list[MemberState] = [new_state(mid) for mid in members.member_id]
    mids = members.member_id
    # Membership attributes first, in the first minutes of the horizon.
    for i, mid in enumerate(mids):
        t0 = cfg.start_ts + 1.0 + (i % 500) * 0.5
        attrs: list[ev.Event] = [
            ev.ProfileUpdated(
                event_id=sink.eid(),
                member_id=mid,
                event_ts=t0,
                birth_month=int(members.birth_month[i]),
                region=REGIONS[members.region[i]],
                joined_ts=float(members.joined_ts[i]),
            ),
            ev.TierChanged(
                event_id=sink.eid(), member_id=mid, event_ts=t0 + 0.1, tier=ev.TIERS[members.tier[i]]
            ),
            ev.PointsChanged(
                event_id=sink.eid(), member_id=mid, event_ts=t0 + 0.2, points=int(members.points[i])
            ),
        ]
        if members.paid[i]:
            attrs.append(ev.PaidMembershipStarted(event_id=sink.eid(), member_id=mid, event_ts=t0 + 0.3))
        for a in attrs:
            sink.add(a)
            apply(states[i], a)

    pending: list[tuple[float, int, int, ev.Event]] = []  # outcome events not yet due, by time
    seq = 0
    imp: dict[str, list[Any]] = {
        k: []
        for k in (
            "request_id",
            "member_id",
            "offer_id",
            "event_ts",
            "position",
            "page_type",
            "category",
            "device",
            "channel",
            "propensity",
            "label",
            "clicked",
            "true_p",
            "segment",
        )
    }
    n_req = 0
    offlog = OffPolicyLog()

    def truth(idx: np.ndarray, st: MemberState, mi: int, rt: float, c: int) -> np.ndarray:
        """True claim probabilities of offers ``idx`` for member ``mi`` at ``rt`` on a page of category
        ``c`` (no random draws)."""
        interest = np.zeros(len(idx))
        for j, oi in enumerate(idx):
            fc = feat_cat_name[oi]
            if fc is not None:
                counter = st.cat_interest.get(fc)
                if counter is not None:
                    interest[j] = counter.at_index(rt, 1)
        shown = np.zeros(len(idx))
        for j, oi in enumerate(idx):
            inter = st.offers.get(offer_ids[oi])
            if inter is not None:
                shown[j] = inter.shown
        hour = int((rt % DAY) // HOUR)
        month = time.gmtime(rt).tm_mon
        z = true_logit(
            int(members.segment[mi]),
            float(members.intercept[mi]),
            float(members.basket[mi]),
            sub_idx[idx],
            kind_idx[idx],
            cat_idx[idx],
            value[idx],
            threshold[idx],
            interest,
            (cat_idx[idx] == c) & (c >= 0),
            shown,
            birthday=int(members.birth_month[mi]) == month,
            sales=int((rt - cfg.start_ts) // DAY) == sales_day,
            evening=hour >= 18,
        )
        out: np.ndarray = 1.0 / (1.0 + np.exp(-z))
        return out

    baby = SHOP_CATEGORIES.index("baby")
    offer_ids = table.offer_ids
    ts_arr, mem_arr, pt_arr, cat_arr = tl.ts, tl.member, tl.page_type, tl.category
    req_arr, cart_arr, order_arr = tl.is_request, tl.cart_amount, tl.order_amount
    n_pages = len(ts_arr)
    progress = Progress(
        TextColumn("simulate"),
        BarColumn(),
        TextColumn("{task.completed:,}/{task.total:,} pages"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=not cfg.progress,
        transient=True,
    )
    with progress:
        task = progress.add_task("pages", total=n_pages)
        for p in range(n_pages):
            if p % 20_000 == 0:
                progress.update(task, completed=p)
            t = float(ts_arr[p])
            # Outcomes due before this page are folded now, so the logging policy only sees the past.
            while pending and pending[0][0] < t:
                _, _, who, due = heapq.heappop(pending)
                apply(states[who], due)
            mi = int(mem_arr[p])
            mid = mids[mi]
            st = states[mi]
            ptype = ev.PAGE_TYPES[int(pt_arr[p])]
            c = int(cat_arr[p])
            cname = SHOP_CATEGORIES[c] if c >= 0 else None
            e: ev.Event
            if ptype == "search":
                e = ev.Search(event_id=sink.eid(), member_id=mid, event_ts=t, category=cname, query_len=8)
            else:
                e = ev.PageView(
                    event_id=sink.eid(),
                    member_id=mid,
                    event_ts=t,
                    page_type=ptype,  # type: ignore[arg-type]
                    category=cname,
                )
            sink.add(e)
            apply(st, e)

            if req_arr[p]:
                rt = t + 0.2  # the storefront asks for a slate just after the page view
                device = DEVICES[members.device[mi]]
                channel = SIM_CHANNELS[members.channel[mi]]
                ctx = Context(page_type=ptype, category=cname, device=device, channel=channel)
                reason = evaluate(elig, table.index, st, ctx, rt, claimed=claimed, cost_used=cost_used)
                cand = np.flatnonzero(reason < 0)
                if len(cand) > 0:
                    n_req += 1
                    rid = f"r{n_req:09d}"
                    k = min(cfg.slate_size + (2 if ptype == "member_center" else 0), len(cand))
                    # Logging policy: 30% uniform + 70% softmax of a mild page-category heuristic.
                    h = np.exp(1.0 * (cat_idx[cand] == c) + 0.3 * (kind_idx[cand] == 0))
                    pi = 0.3 / len(cand) + 0.7 * h / h.sum()
                    keys = np.log(pi) + rng.gumbel(size=len(cand))  # Gumbel-top-k = Plackett-Luce
                    top = np.argsort(-keys)[:k]
                    chosen = cand[top]
                    pc = pi[top]
                    prop = pc / np.maximum(1.0 - (np.cumsum(pc) - pc), 1e-12)
                    # Latent truth for the shown offers (and for every eligible one with offpolicy_log:
                    # the oracle of counterfactual evaluation; computed apart, so that the shown
                    # offers' values, and with them the whole run, are the same either way).
                    seg = int(members.segment[mi])
                    tp = truth(chosen, st, mi, rt, c)
                    if cfg.offpolicy_log:
                        offlog.add(rid, [offer_ids[oi] for oi in cand], truth(cand, st, mi, rt, c), pi, top)
                    u = rng.random((k, 3))
                    claim = u[:, 0] < tp
                    click = claim | (u[:, 1] < np.minimum(0.5, 1.5 * tp))
                    dismiss = ~click & (u[:, 2] < 0.02)
                    for j in range(k):
                        oi = int(chosen[j])
                        oid = offer_ids[oi]
                        ie = ev.Impression(
                            event_id=sink.eid(),
                            member_id=mid,
                            event_ts=rt,
                            request_id=rid,
                            offer_id=oid,
                            position=j,
                            propensity=float(min(1.0, max(prop[j], 1e-9))),
                        )
                        sink.add(ie)
                        apply(st, ie)
                        outcome: list[ev.Event] = []
                        if click[j]:
                            ct = rt + 2.0 + 3.0 * j + float(u[j, 1]) * 10.0
                            outcome.append(
                                ev.Click(
                                    event_id=sink.eid(),
                                    member_id=mid,
                                    event_ts=ct,
                                    request_id=rid,
                                    offer_id=oid,
                                )
                            )
                            if claim[j]:
                                outcome.append(
                                    claim_cls[oi](
                                        event_id=sink.eid(), member_id=mid, event_ts=ct + 4.0, offer_id=oid
                                    )
                                )
                                claimed[oi] += 1
                                cost_used[oi] += cost[oi]
                                if kind_idx[oi] == 0:
                                    wallets.setdefault(mi, []).append(oi)
                        elif dismiss[j]:
                            outcome.append(
                                ev.Dismiss(
                                    event_id=sink.eid(),
                                    member_id=mid,
                                    event_ts=rt + 3.0,
                                    request_id=rid,
                                    offer_id=oid,
                                )
                            )
                        for oe in outcome:
                            sink.add(oe)
                            seq += 1
                            heapq.heappush(pending, (oe.event_ts, seq, mi, oe))
                        imp["request_id"].append(rid)
                        imp["member_id"].append(mid)
                        imp["offer_id"].append(oid)
                        imp["event_ts"].append(rt)
                        imp["position"].append(j)
                        imp["page_type"].append(ptype)
                        imp["category"].append(cname)
                        imp["device"].append(device)
                        imp["channel"].append(channel)
                        imp["propensity"].append(float(prop[j]))
                        imp["label"].append(int(claim[j]))
                        imp["clicked"].append(int(click[j]))
                        imp["true_p"].append(float(tp[j]))
                        imp["segment"].append(SEGMENTS[seg])

            amount = float(cart_arr[p])
            if amount > 0:
                ct = t + 20.0
                ce = ev.AddToCart(
                    event_id=sink.eid(), member_id=mid, event_ts=ct, category=cname or "other", amount=amount
                )
                sink.add(ce)
                apply(st, ce)
            amount = float(order_arr[p])
            if amount > 0:
                ot = t + 60.0
                coupon, discount = None, 0.0
                wallet = wallets.get(mi)
                if wallet:
                    usable = [o for o in wallet if threshold[o] <= amount]
                    if usable and rng.random() < 0.7:
                        oi = usable[0]
                        wallet.remove(oi)
                        coupon, discount = offer_ids[oi], float(value[oi])
                cats = [cname or "other"]
                if rng.random() < 0.3:
                    cats.append(SHOP_CATEGORIES[int(rng.integers(0, len(SHOP_CATEGORIES)))])
                parent_now = members.parent_ts[mi] > 0 and t >= members.parent_ts[mi]
                if c == baby or (parent_now and rng.random() < 0.3):
                    cats.append("baby")
                oe2: list[ev.Event] = [
                    ev.Order(
                        event_id=sink.eid(),
                        member_id=mid,
                        event_ts=ot,
                        amount=amount,
                        categories=sorted(set(cats)),
                        items=int(1 + rng.poisson(2)),
                        coupon_id=coupon,
                        discount=discount,
                    )
                ]
                if coupon is not None:
                    oe2.append(
                        ev.CouponRedeem(
                            event_id=sink.eid(),
                            member_id=mid,
                            event_ts=ot + 0.5,
                            offer_id=coupon,
                            discount=discount,
                        )
                    )
                new_points = st.points + int(amount)
                oe2.append(
                    ev.PointsChanged(event_id=sink.eid(), member_id=mid, event_ts=ot + 1.0, points=new_points)
                )
                for e2 in oe2:
                    sink.add(e2)
                    seq += 1
                    heapq.heappush(pending, (e2.event_ts, seq, mi, e2))
        progress.update(task, completed=n_pages)
    t_loop = time.perf_counter()

    impressions = pd.DataFrame(imp)
    impressions["label"] = impressions["label"].astype(np.int8)
    impressions["clicked"] = impressions["clicked"].astype(np.int8)
    impressions["position"] = impressions["position"].astype(np.int16)
    if cfg.offpolicy_log:
        impressions["propensity_marginal"] = offlog.marginal_column()
    end_ts = cfg.start_ts + cfg.days * DAY
    meta: dict[str, Any] = {
        "kind": "simulation",
        "n_members": cfg.n_members,
        "days": cfg.days,
        "n_offers": len(catalog),
        "seed": cfg.seed,
        "start_ts": cfg.start_ts,
        "end_ts": end_ts,
        "sales_day": sales_day,
        "sessions": int(tl.extra["sessions"]),
        "pages": int(n_pages),
        "requests": n_req,
        "impressions": len(impressions),
        "events": len(sink.ts),
        "claim_rate": float(impressions["label"].mean()) if len(impressions) else 0.0,
        "segments": list(SEGMENTS),
        "slate_size": cfg.slate_size,
        "request_p": cfg.request_p,
        "offpolicy_log": cfg.offpolicy_log,
        "seconds_generate": round(t_gen - t_start, 3),
        "seconds_loop": round(t_loop - t_gen, 3),
    }
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        sink.write(out / "events.jsonl")
        impressions.to_parquet(out / "impressions.parquet", index=False)
        members.frame().to_parquet(out / "members.parquet", index=False)
        (out / "catalog.json").write_text(json.dumps([o.model_dump(mode="json") for o in catalog]))
        if cfg.offpolicy_log:
            offlog.write(out)
        meta["seconds_write"] = round(time.perf_counter() - t_loop, 3)
        (out / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
    meta["seconds_total"] = round(time.perf_counter() - t_start, 3)
    log.info(
        "simulated %d members x %.1f days: %d impressions, %d events in %.1fs",
        cfg.n_members,
        cfg.days,
        len(impressions),
        len(sink.ts),
        meta["seconds_total"],
    )
    return meta


def simulate_to_dir(
    out: Path,
    n_members: int = 2000,
    days: float = 14.0,
    n_offers: int = 200,
    seed: int = 1,
    progress: bool = True,
    offpolicy_log: bool = False,
) -> dict[str, Any]:
    """Simulate into ``out`` (see the module docstring for the files). Returns the meta dict."""
    cfg = SimConfig(
        n_members=n_members,
        days=days,
        n_offers=n_offers,
        seed=seed,
        progress=progress,
        offpolicy_log=offpolicy_log,
    )
    return simulate(cfg, Path(out))


def load_catalog(path: Path) -> list[Offer]:
    """The offers of a catalogue file (a list of offers, or ``{"taxonomy", "offers"}``), checked."""
    from features.taxonomy import load_catalog_file

    return load_catalog_file(path)[1]


def category_index(name: str | None) -> int:
    return CATEGORY_INDEX.get(name, -1) if name else -1
