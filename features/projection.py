"""Projection of (member state, offers, page context, now) to the model's feature matrix.

``rows(state, table, context, now)`` returns one float32 row per offer in ``table`` with the columns of
:data:`FEATURE_NAMES`. Serving and training call this same function (training at each impression's
time over a replayed state), so the model never sees features computed two ways.

The feature list and its order are one versioned artifact: :data:`FEATURE_SCHEMA` (a version plus a
hash of the names) is written into every exported model and checked by the service on load. Change a
feature, its order or its meaning and you must bump :data:`FEATURE_SCHEMA_VERSION`.

Speed: the offer-side columns are precomputed once per catalog version in :class:`OfferTable`; a
request builds the member vector once (about 40 numbers), then fills the member x offer columns with
numpy indexing. About 0.1 ms for 500 offers.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime

import msgspec
import numpy as np

from features.decay import DAY, HOUR
from features.events import PAGE_TYPES, TIERS
from features.offer_stats import OfferCounters
from features.offers import ALL_SUBTYPES, CATEGORIES, CATEGORY_INDEX, CHANNELS, OFFER_KINDS, Offer
from features.state import MemberState

FEATURE_SCHEMA_VERSION = 1

MEMBER_FEATURES: tuple[str, ...] = (
    "tier",
    "paid_member",
    "log_points",
    "tenure_days",
    "birthday_month_now",
    "views_1h",
    "views_1d",
    "views_7d",
    "views_30d",
    "searches_1d",
    "searches_7d",
    "carts_1d",
    "carts_7d",
    "orders_7d",
    "orders_30d",
    "spend_30d",
    "avg_basket",
    "hours_since_view",
    "hours_since_order",
    "hours_since_cart",
    "coupon_claims_30d",
    "coupon_redeem_rate",
    "coupon_order_share",
    "avg_discount_rate",
    "benefit_uses_30d",
    "consults_30d",
    "impressions_7d",
    "clicks_7d",
    "dismisses_7d",
    "member_ctr",
    "log_orders_total",
)
OFFER_FEATURES: tuple[str, ...] = (
    "kind_coupon",
    "kind_benefit",
    "kind_consult",
    "subtype_code",
    "offer_value",
    "offer_threshold",
    "offer_cost",
    "is_limited",
    "inventory_left_frac",
    "offer_prior_ctr",
    "offer_prior_claim_rate",
    "has_category",
)
CROSS_FEATURES: tuple[str, ...] = (
    "threshold_to_basket",
    "value_to_basket",
    "cat_interest_1d",
    "cat_interest_7d",
    "cat_interest_30d",
    "cat_interest_share_7d",
    "cat_orders_30d",
    "mo_shown",
    "mo_hours_since_shown",
    "mo_clicked",
    "mo_claimed",
    "mo_dismissed",
    "mo_impressions_since_action",
)
CONTEXT_FEATURES: tuple[str, ...] = (
    "page_type_code",
    "page_category_match",
    "hour_of_day",
    "day_of_week",
    "device_code",
    "channel_code",
)

FEATURE_NAMES: tuple[str, ...] = MEMBER_FEATURES + OFFER_FEATURES + CROSS_FEATURES + CONTEXT_FEATURES
N_FEATURES = len(FEATURE_NAMES)
FEATURE_INDEX = {n: i for i, n in enumerate(FEATURE_NAMES)}
#: Hash of the ordered names; a model trained on another list is refused even if the version matches.
FEATURE_SCHEMA_HASH = hashlib.sha256("\n".join(FEATURE_NAMES).encode()).hexdigest()[:16]
FEATURE_SCHEMA = f"v{FEATURE_SCHEMA_VERSION}:{FEATURE_SCHEMA_HASH}"

DEVICES: tuple[str, ...] = ("ios", "android", "desktop", "other")
_NEVER_HOURS = 24.0 * 365  # "hours since" for something that never happened
# Smoothing priors for rates: a new offer or member starts at the prior, not at 0 or 1.
_CTR_PRIOR, _CTR_WEIGHT = 0.05, 20.0
_CLAIM_PRIOR, _CLAIM_WEIGHT = 0.02, 50.0
_REDEEM_PRIOR, _REDEEM_WEIGHT = 0.3, 3.0


class Context(msgspec.Struct, frozen=True, kw_only=True):
    """Where the request comes from. Validated at the HTTP edge."""

    page_type: str = "home"
    category: str | None = None
    device: str = "other"
    channel: str = "app"


@dataclass
class OfferTable:
    """Column arrays of a catalog, built once per catalog version (and when statistics refresh)."""

    offers: list[Offer]
    offer_ids: list[str] = field(init=False)
    index: dict[str, int] = field(init=False)
    static: np.ndarray = field(init=False)  # (n, len(OFFER_FEATURES)) float32
    category_idx: np.ndarray = field(init=False)  # (n,) int, len(CATEGORIES) for "no category"
    kind_idx: np.ndarray = field(init=False)
    value: np.ndarray = field(init=False)
    threshold: np.ndarray = field(init=False)
    cost: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        n = len(self.offers)
        self.offer_ids = [o.offer_id for o in self.offers]
        self.index = {oid: i for i, oid in enumerate(self.offer_ids)}
        self.kind_idx = np.array([OFFER_KINDS.index(o.kind) for o in self.offers], dtype=np.int64)
        self.category_idx = np.array(
            [CATEGORY_INDEX[o.category] if o.category else len(CATEGORIES) for o in self.offers],
            dtype=np.int64,
        )
        self.value = np.array([o.value for o in self.offers], dtype=np.float64)
        self.threshold = np.array([o.threshold for o in self.offers], dtype=np.float64)
        self.cost = np.array([o.cost for o in self.offers], dtype=np.float64)
        s = np.zeros((n, len(OFFER_FEATURES)), dtype=np.float32)
        for i, o in enumerate(self.offers):
            s[i, OFFER_KINDS.index(o.kind)] = 1.0
        s[:, 3] = [ALL_SUBTYPES.index(o.subtype) for o in self.offers]
        s[:, 4] = self.value
        s[:, 5] = self.threshold
        s[:, 6] = self.cost
        s[:, 7] = [1.0 if o.inventory is not None else 0.0 for o in self.offers]
        s[:, 8] = 1.0
        s[:, 9] = _CTR_PRIOR
        s[:, 10] = _CLAIM_PRIOR
        s[:, 11] = [1.0 if o.category else 0.0 for o in self.offers]
        self.static = s

    def __len__(self) -> int:
        return len(self.offers)

    def with_stats(self, stats: dict[str, OfferCounters], claimed: dict[str, int] | None = None) -> None:
        """Refresh the prior and inventory columns from aggregate statistics (in place)."""
        for oid, c in stats.items():
            i = self.index.get(oid)
            if i is None:
                continue
            self.static[i, 9] = (c.clicks + _CTR_PRIOR * _CTR_WEIGHT) / (c.impressions + _CTR_WEIGHT)
            self.static[i, 10] = (c.claims + _CLAIM_PRIOR * _CLAIM_WEIGHT) / (c.impressions + _CLAIM_WEIGHT)
        if claimed is not None:
            for oid, used in claimed.items():
                i = self.index.get(oid)
                if i is None:
                    continue
                inv = self.offers[i].inventory
                if inv:
                    self.static[i, 8] = max(0.0, 1.0 - used / inv)


def _hours_since(now: float, ts: float) -> float:
    if ts <= 0.0:
        return _NEVER_HOURS
    return min(_NEVER_HOURS, max(0.0, (now - ts) / HOUR))


def _count(state: MemberState, kind: str, now: float, i: int) -> float:
    c = state.counts.get(kind)
    return c.at_index(now, i) if c is not None else 0.0


def member_vector(state: MemberState, now: float) -> list[float]:
    """The member-only features, in :data:`MEMBER_FEATURES` order."""
    month = datetime.fromtimestamp(now, UTC).month
    spend_30d = state.spend.at_index(now, 3)
    avg_basket = state.spend_total / state.orders_total if state.orders_total else 0.0
    joined = state.joined_ts or state.first_seen_ts
    tenure = max(0.0, (now - joined) / DAY) if joined else 0.0
    clicks_30d = _count(state, "click", now, 3)
    impr_30d = _count(state, "impression", now, 3)
    return [
        float(TIERS.index(state.tier)) if state.tier in TIERS else 0.0,
        1.0 if state.paid_member else 0.0,
        math.log1p(max(0, state.points)),
        tenure,
        1.0 if state.birth_month == month else 0.0,
        _count(state, "page_view", now, 0),
        _count(state, "page_view", now, 1),
        _count(state, "page_view", now, 2),
        _count(state, "page_view", now, 3),
        _count(state, "search", now, 1),
        _count(state, "search", now, 2),
        _count(state, "add_to_cart", now, 1),
        _count(state, "add_to_cart", now, 2),
        _count(state, "order", now, 2),
        _count(state, "order", now, 3),
        spend_30d,
        avg_basket,
        _hours_since(now, state.last_ts.get("page_view", 0.0)),
        _hours_since(now, state.last_ts.get("order", 0.0)),
        _hours_since(now, state.last_ts.get("add_to_cart", 0.0)),
        _count(state, "coupon_claim", now, 3),
        (state.coupon_redeems_total + _REDEEM_PRIOR * _REDEEM_WEIGHT)
        / (state.coupon_claims_total + _REDEEM_WEIGHT),
        state.orders_with_coupon / state.orders_total if state.orders_total else 0.0,
        state.discount_total / state.spend_total if state.spend_total > 0 else 0.0,
        _count(state, "benefit_use", now, 3),
        _count(state, "consult_booked", now, 3),
        _count(state, "impression", now, 2),
        _count(state, "click", now, 2),
        _count(state, "dismiss", now, 2),
        (clicks_30d + _CTR_PRIOR * _CTR_WEIGHT) / (impr_30d + _CTR_WEIGHT),
        math.log1p(state.orders_total),
    ]


def category_matrix(state: MemberState, now: float) -> np.ndarray:
    """(len(CATEGORIES)+1, 4): interest 1d/7d/30d and orders 30d per category; last row is "none"."""
    m = np.zeros((len(CATEGORIES) + 1, 4), dtype=np.float64)
    for cat, counter in state.cat_interest.items():
        i = CATEGORY_INDEX.get(cat)
        if i is not None:
            sums = counter.at(now)
            m[i, 0], m[i, 1], m[i, 2] = sums[1], sums[2], sums[3]
    for cat, counter in state.cat_orders.items():
        i = CATEGORY_INDEX.get(cat)
        if i is not None:
            m[i, 3] = counter.at_index(now, 3)
    return m


_M = len(MEMBER_FEATURES)
_O = _M + len(OFFER_FEATURES)
_X = _O + len(CROSS_FEATURES)


def rows(
    state: MemberState, table: OfferTable, context: Context, now: float, only: np.ndarray | None = None
) -> np.ndarray:
    """Feature matrix (n, N_FEATURES) float32 for ``state`` against the offers in ``table``: every offer,
    or with ``only`` (indices into ``table``, e.g. the eligible offers) those alone, in that order; row
    ``k`` of the result is then row ``only[k]`` of the full matrix, at a fraction of the cost."""
    static, threshold, value, category_idx = table.static, table.threshold, table.value, table.category_idx
    pos: np.ndarray | None = None
    if only is not None:
        static, threshold, value = static[only], threshold[only], value[only]
        category_idx = category_idx[only]
        pos = np.full(len(table), -1, dtype=np.int64)  # table index -> row, -1 when left out
        pos[only] = np.arange(len(only))
    n = len(static)
    out = np.empty((n, N_FEATURES), dtype=np.float32)
    mv = member_vector(state, now)
    out[:, :_M] = mv
    out[:, _M:_O] = static

    avg_basket = mv[MEMBER_FEATURES.index("avg_basket")]
    basket = max(avg_basket, 1.0)
    out[:, _O] = threshold / basket
    out[:, _O + 1] = value / basket
    cats = category_matrix(state, now)
    per_offer = cats[category_idx]
    out[:, _O + 2] = per_offer[:, 0]
    out[:, _O + 3] = per_offer[:, 1]
    out[:, _O + 4] = per_offer[:, 2]
    total_7d = float(cats[:, 1].sum())
    out[:, _O + 5] = per_offer[:, 1] / total_7d if total_7d > 0 else 0.0
    out[:, _O + 6] = per_offer[:, 3]
    # member x offer history: zero/never by default, then scatter the (at most ~100) tracked offers.
    out[:, _O + 7] = 0.0
    out[:, _O + 8] = _NEVER_HOURS
    out[:, _O + 9 : _X] = 0.0
    index = table.index
    for offer_id, inter in state.offers.items():
        i = index.get(offer_id)
        if i is not None and pos is not None:
            i = int(pos[i]) if pos[i] >= 0 else None
        if i is None:
            continue
        out[i, _O + 7] = inter.shown
        out[i, _O + 8] = _hours_since(now, inter.last_shown_ts)
        out[i, _O + 9] = inter.clicks
        out[i, _O + 10] = inter.claims
        out[i, _O + 11] = inter.dismisses
        out[i, _O + 12] = inter.impressions_since_action()

    dt = datetime.fromtimestamp(now, UTC)
    page_code = PAGE_TYPES.index(context.page_type) if context.page_type in PAGE_TYPES else -1
    out[:, _X] = page_code
    if context.category is not None and context.category in CATEGORY_INDEX:
        out[:, _X + 1] = category_idx == CATEGORY_INDEX[context.category]
    else:
        out[:, _X + 1] = 0.0
    out[:, _X + 2] = dt.hour
    out[:, _X + 3] = dt.weekday()
    out[:, _X + 4] = DEVICES.index(context.device) if context.device in DEVICES else len(DEVICES) - 1
    out[:, _X + 5] = CHANNELS.index(context.channel) if context.channel in CHANNELS else 0
    return out
