"""The registry of feature computations, keyed by ``kind``: each declared column is bound here by name.

Three scopes, so that the projection stays vectorised over offers:

- ``member``: one number from (member state, now), broadcast to every offer row;
- ``offer``: one column over the catalogue, computed once per catalogue version in
  :class:`features.projection.OfferTable` (priors and inventory are refreshed from statistics);
- ``row``: a column per request from the member, the offers and the page context (member x offer
  interactions, category affinity, context codes), computed with numpy over all offers at once.

Adding a kind: write ``_check`` (raise ``ValueError`` on bad params) and ``_build`` (returns the
computation), and register it in :data:`KINDS`. Changing what a kind computes changes every model that
uses it: bump the specification's ``version``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from features.decay import DAY, HOUR
from features.state import COUNTED_KINDS, MemberState

if TYPE_CHECKING:
    from features.offers import Offer
    from features.projection import Context, OfferTable
    from features.spec import Feature, FeatureSpec

NEVER_HOURS = 24.0 * 365  # "hours since" for something that never happened

MemberFn = Callable[[MemberState, float], float]
OfferFn = Callable[["list[Offer]"], np.ndarray]
RowFn = Callable[["Request"], "np.ndarray | float"]


def hours_since(now: float, ts: float) -> float:
    if ts <= 0.0:
        return NEVER_HOURS
    return min(NEVER_HOURS, max(0.0, (now - ts) / HOUR))


def smoothed(num: float, den: float, prior: float, weight: float) -> float:
    """A rate that starts at ``prior`` and needs evidence (``weight`` trials) to move far from it."""
    return (num + prior * weight) / (den + weight)


class Request:
    """One request's inputs with the per-request intermediates the row computations share (lazy).

    With ``only`` (indices into the table) the rows are those offers alone, in that order: ``value``,
    ``threshold``, ``category_idx`` are the selected offers' columns and ``n`` their number.
    """

    __slots__ = (
        "_cats",
        "_mo",
        "category_idx",
        "context",
        "cost",
        "n",
        "now",
        "only",
        "state",
        "table",
        "threshold",
        "value",
    )

    def __init__(
        self,
        state: MemberState,
        table: OfferTable,
        context: Context,
        now: float,
        only: np.ndarray | None = None,
    ) -> None:
        self.state, self.table, self.context, self.now, self.only = state, table, context, now, only
        if only is None:
            self.value, self.threshold, self.cost = table.value, table.threshold, table.cost
            self.category_idx = table.category_idx
            self.n = len(table)
        else:
            self.value, self.threshold, self.cost = table.value[only], table.threshold[only], table.cost[only]
            self.category_idx = table.category_idx[only]
            self.n = len(only)
        self._cats: np.ndarray | None = None
        self._mo: np.ndarray | None = None

    def categories(self) -> np.ndarray:
        """(len(table.categories) + 1, 4): interest at each half-life, then orders 30d; per category the
        table knows (row order of ``table.categories``); last row is "no category" (zeros). Row 0..n-1
        plus a column-sum helper: ``interest_total`` over *all* the member's categories, known or not."""
        if self._cats is None:
            index = self.table.category_index
            m = np.zeros((len(index) + 1, 5), dtype=np.float64)
            for cat, counter in self.state.cat_interest.items():
                i = index.get(cat)
                if i is not None:
                    sums = counter.at(self.now)
                    m[i, 0:4] = sums
            for cat, counter in self.state.cat_orders.items():
                i = index.get(cat)
                if i is not None:
                    m[i, 4] = counter.at_index(self.now, 3)
            self._cats = m
        return self._cats

    def interest_total(self, hl: int) -> float:
        """The member's interest over every category (including ones no offer has), at one half-life."""
        return float(sum(c.at_index(self.now, hl) for c in self.state.cat_interest.values()))

    def member_offer(self) -> np.ndarray:
        """(n, 6): shown, hours since shown, clicks, claims, dismisses, impressions since last action."""
        if self._mo is None:
            m = np.zeros((self.n, 6), dtype=np.float64)
            m[:, 1] = NEVER_HOURS
            index = self.table.index
            pos: np.ndarray | None = None
            if self.only is not None:
                pos = np.full(len(self.table), -1, dtype=np.int64)  # table index -> row, -1 left out
                pos[self.only] = np.arange(len(self.only))
            now = self.now
            for offer_id, inter in self.state.offers.items():
                i = index.get(offer_id)
                if i is not None and pos is not None:
                    i = int(pos[i]) if pos[i] >= 0 else None
                if i is None:
                    continue
                m[i] = (
                    inter.shown,
                    hours_since(now, inter.last_shown_ts),
                    inter.clicks,
                    inter.claims,
                    inter.dismisses,
                    inter.impressions_since_action(),
                )
            self._mo = m
        return self._mo

    def avg_basket(self) -> float:
        s = self.state
        return s.spend_total / s.orders_total if s.orders_total else 0.0


# --- parameter helpers -------------------------------------------------------------------------


def _p(params: dict[str, Any], key: str) -> Any:
    if key not in params:
        raise ValueError(f"missing parameter {key!r}")
    return params[key]


def _one_of(params: dict[str, Any], key: str, allowed: tuple[str, ...] | list[str]) -> str:
    v = _p(params, key)
    if v not in allowed:
        raise ValueError(f"{key} {v!r} is not one of {list(allowed)}")
    return str(v)


def _number(params: dict[str, Any], key: str, default: float) -> float:
    v = params.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise ValueError(f"{key} must be a finite number, not {v!r}")
    return float(v)


def _hl(params: dict[str, Any]) -> int:
    from features.spec import half_life_index

    return half_life_index(str(_p(params, "half_life")))


def _only(params: dict[str, Any], *keys: str) -> None:
    extra = set(params) - set(keys)
    if extra:
        raise ValueError(f"unknown parameters {sorted(extra)} (allowed: {list(keys)})")


# --- member scope ------------------------------------------------------------------------------

#: Lifetime totals of the state a feature may read as a number.
MEMBER_TOTALS = (
    "points",
    "orders_total",
    "spend_total",
    "orders_with_coupon",
    "discount_total",
    "coupon_claims_total",
    "coupon_redeems_total",
    "events_total",
)
DECAYED_SUMS = ("spend", "items")


def _decayed_count(p: dict[str, Any], spec: FeatureSpec) -> MemberFn:
    _only(p, "event", "half_life")
    event, i = _one_of(p, "event", COUNTED_KINDS), _hl(p)

    def fn(s: MemberState, now: float) -> float:
        c = s.counts.get(event)
        return c.at_index(now, i) if c is not None else 0.0

    return fn


def _decayed_sum(p: dict[str, Any], spec: FeatureSpec) -> MemberFn:
    _only(p, "quantity", "half_life")
    q, i = _one_of(p, "quantity", DECAYED_SUMS), _hl(p)
    return lambda s, now: getattr(s, q).at_index(now, i)


def _decayed_rate(p: dict[str, Any], spec: FeatureSpec) -> MemberFn:
    _only(p, "numerator", "denominator", "half_life", "prior", "weight")
    num, den = _one_of(p, "numerator", COUNTED_KINDS), _one_of(p, "denominator", COUNTED_KINDS)
    i, prior, weight = _hl(p), _number(p, "prior", 0.0), _number(p, "weight", 1.0)

    def fn(s: MemberState, now: float) -> float:
        a, b = s.counts.get(num), s.counts.get(den)
        return smoothed(
            a.at_index(now, i) if a is not None else 0.0,
            b.at_index(now, i) if b is not None else 0.0,
            prior,
            weight,
        )

    return fn


def _recency_hours(p: dict[str, Any], spec: FeatureSpec) -> MemberFn:
    _only(p, "event")
    event = _one_of(p, "event", COUNTED_KINDS)
    return lambda s, now: hours_since(now, s.last_ts.get(event, 0.0))


def _member_total(p: dict[str, Any], spec: FeatureSpec) -> MemberFn:
    _only(p, "field", "transform")
    f = _one_of(p, "field", MEMBER_TOTALS)
    transform = p.get("transform", "none")
    if transform == "log1p":
        return lambda s, now: math.log1p(max(0, getattr(s, f)))
    if transform != "none":
        raise ValueError(f"transform {transform!r} is not one of ['none', 'log1p']")
    return lambda s, now: float(getattr(s, f))


def _total_ratio(p: dict[str, Any], spec: FeatureSpec) -> MemberFn:
    _only(p, "numerator", "denominator")
    num, den = _one_of(p, "numerator", MEMBER_TOTALS), _one_of(p, "denominator", MEMBER_TOTALS)

    def fn(s: MemberState, now: float) -> float:
        d = getattr(s, den)
        return getattr(s, num) / d if d > 0 else 0.0

    return fn


def _smoothed_ratio(p: dict[str, Any], spec: FeatureSpec) -> MemberFn:
    _only(p, "numerator", "denominator", "prior", "weight")
    num, den = _one_of(p, "numerator", MEMBER_TOTALS), _one_of(p, "denominator", MEMBER_TOTALS)
    prior, weight = _number(p, "prior", 0.0), _number(p, "weight", 1.0)
    return lambda s, now: smoothed(getattr(s, num), getattr(s, den), prior, weight)


def _member_code(p: dict[str, Any], spec: FeatureSpec) -> MemberFn:
    _only(p, "field", "vocabulary", "unknown")
    f = _one_of(p, "field", ("tier", "region"))
    vocab = spec.vocabulary(str(_p(p, "vocabulary")))
    codes = {v: float(i) for i, v in enumerate(vocab)}
    unknown = _number(p, "unknown", float(len(vocab)))
    return lambda s, now: codes.get(getattr(s, f), unknown)


def _member_flag(p: dict[str, Any], spec: FeatureSpec) -> MemberFn:
    _only(p, "field")
    f = _one_of(p, "field", ("paid_member", "personalization_consent"))
    return lambda s, now: 1.0 if getattr(s, f) else 0.0


def _tenure_days(p: dict[str, Any], spec: FeatureSpec) -> MemberFn:
    _only(p)

    def fn(s: MemberState, now: float) -> float:
        joined = s.joined_ts or s.first_seen_ts
        return max(0.0, (now - joined) / DAY) if joined else 0.0

    return fn


def _birthday_month_now(p: dict[str, Any], spec: FeatureSpec) -> MemberFn:
    _only(p)
    return lambda s, now: 1.0 if s.birth_month == datetime.fromtimestamp(now, UTC).month else 0.0


ATTRIBUTE_TYPES = ("numeric", "categorical", "boolean", "list")


def _member_attribute(p: dict[str, Any], spec: FeatureSpec) -> MemberFn:
    """A declared member attribute (``profile_updated`` events, members table), read by name.

    numeric: the number as it is; categorical: its code in ``vocabulary`` (a value outside it gets
    ``len(vocabulary)``, i.e. "other"); boolean: 1/0; list: 1/0 for ``contains`` when given, else the
    list's length. ``default`` (0 unless declared) when the member has no value.
    """
    _only(p, "attribute", "type", "vocabulary", "contains", "default")
    name = str(_p(p, "attribute"))
    typ = _one_of({"type": "numeric", **p}, "type", ATTRIBUTE_TYPES)
    default = _number(p, "default", 0.0)
    if typ == "categorical":
        vocab = spec.vocabulary(str(_p(p, "vocabulary")))
        codes = {v: float(i) for i, v in enumerate(vocab)}
        other = float(len(vocab))

        def cat(s: MemberState, now: float) -> float:
            a = s.attributes.get(name)
            if a is None or a.value is None:
                return default
            return codes.get(str(a.value), other)

        return cat
    if typ == "list":
        contains = p.get("contains")

        def lst(s: MemberState, now: float) -> float:
            a = s.attributes.get(name)
            if a is None or a.value is None:
                return default
            v = a.value if isinstance(a.value, list) else [a.value]
            if contains is None:
                return float(len(v))
            return 1.0 if contains in v else 0.0

        return lst

    def num(s: MemberState, now: float) -> float:
        a = s.attributes.get(name)
        if a is None or a.value is None or isinstance(a.value, list | str):
            return default
        return float(a.value)

    return num


# --- offer scope -------------------------------------------------------------------------------


def _offer_kind(p: dict[str, Any], spec: FeatureSpec) -> OfferFn:
    _only(p, "kind")
    kind = _one_of(p, "kind", ("coupon", "benefit", "consult"))
    return lambda offers: np.array([1.0 if o.kind == kind else 0.0 for o in offers])


def _offer_code(p: dict[str, Any], spec: FeatureSpec) -> OfferFn:
    _only(p, "field", "vocabulary")
    f = _one_of(p, "field", ("subtype", "category", "kind"))
    vocab = spec.vocabulary(str(_p(p, "vocabulary")))
    codes = {v: float(i) for i, v in enumerate(vocab)}
    other = float(len(vocab))
    return lambda offers: np.array([codes.get(getattr(o, f) or "", other) for o in offers])


def _offer_number(p: dict[str, Any], spec: FeatureSpec) -> OfferFn:
    _only(p, "field")
    f = _one_of(p, "field", ("value", "threshold", "cost"))
    return lambda offers: np.array([getattr(o, f) for o in offers], dtype=np.float64)


def _offer_limited(p: dict[str, Any], spec: FeatureSpec) -> OfferFn:
    _only(p)
    return lambda offers: np.array([1.0 if o.inventory is not None else 0.0 for o in offers])


def _offer_has_category(p: dict[str, Any], spec: FeatureSpec) -> OfferFn:
    _only(p)
    return lambda offers: np.array([1.0 if o.category else 0.0 for o in offers])


def _offer_tag(p: dict[str, Any], spec: FeatureSpec) -> OfferFn:
    _only(p, "tag")
    tag = str(_p(p, "tag"))
    return lambda offers: np.array([1.0 if tag in o.tags else 0.0 for o in offers])


def _offer_inventory_left(p: dict[str, Any], spec: FeatureSpec) -> OfferFn:
    """Fraction of the inventory left; 1 until statistics arrive (see OfferTable.with_stats)."""
    _only(p)
    return lambda offers: np.ones(len(offers))


def _offer_prior(p: dict[str, Any], spec: FeatureSpec) -> OfferFn:
    """Smoothed click (``ctr``) or claim (``claim``) rate of the offer over all members; the prior until
    statistics arrive (OfferTable.with_stats)."""
    _only(p, "rate", "prior", "weight")
    _one_of(p, "rate", ("ctr", "claim"))
    prior = _number(p, "prior", 0.0)
    _number(p, "weight", 1.0)
    return lambda offers: np.full(len(offers), prior)


# --- row scope (member x offer, context) -------------------------------------------------------


def _offer_to_basket(p: dict[str, Any], spec: FeatureSpec) -> RowFn:
    _only(p, "field")
    f = _one_of(p, "field", ("value", "threshold", "cost"))
    return lambda r: getattr(r, f) / max(r.avg_basket(), 1.0)


def _category_interest(p: dict[str, Any], spec: FeatureSpec) -> RowFn:
    _only(p, "half_life")
    i = _hl(p)
    return lambda r: r.categories()[r.category_idx, i]


def _category_interest_share(p: dict[str, Any], spec: FeatureSpec) -> RowFn:
    _only(p, "half_life")
    i = _hl(p)

    def fn(r: Request) -> np.ndarray | float:
        total = r.interest_total(i)
        return r.categories()[r.category_idx, i] / total if total > 0 else 0.0

    return fn


def _category_orders(p: dict[str, Any], spec: FeatureSpec) -> RowFn:
    _only(p, "half_life")
    if _p(p, "half_life") != "30d":
        raise ValueError("orders per category are read at the 30d half-life only")
    return lambda r: r.categories()[r.category_idx, 4]


MEMBER_OFFER_STATS = (
    "shown",
    "hours_since_shown",
    "clicks",
    "claims",
    "dismisses",
    "impressions_since_action",
)


def _member_offer(p: dict[str, Any], spec: FeatureSpec) -> RowFn:
    _only(p, "stat")
    j = MEMBER_OFFER_STATS.index(_one_of(p, "stat", MEMBER_OFFER_STATS))
    return lambda r: r.member_offer()[:, j]


def _context_code(p: dict[str, Any], spec: FeatureSpec) -> RowFn:
    _only(p, "field", "unknown")
    f = _one_of(p, "field", ("page_type", "device", "channel"))
    cf = spec.context.get(f)  # type: ignore[call-overload]
    if cf is None or cf.vocabulary is None:
        raise ValueError(f"context field {f!r} needs a vocabulary in the specification's context")
    vocab = spec.vocabulary(cf.vocabulary)
    codes = {v: float(i) for i, v in enumerate(vocab)}
    unknown = _number(p, "unknown", float(len(vocab)))
    return lambda r: codes.get(getattr(r.context, f), unknown)


def _page_category_match(p: dict[str, Any], spec: FeatureSpec) -> RowFn:
    _only(p)

    def fn(r: Request) -> np.ndarray | float:
        cat = r.context.category
        i = r.table.category_index.get(cat) if cat is not None else None
        return r.category_idx == i if i is not None else 0.0

    return fn


def _hour_of_day(p: dict[str, Any], spec: FeatureSpec) -> RowFn:
    _only(p)
    return lambda r: float(datetime.fromtimestamp(r.now, UTC).hour)


def _day_of_week(p: dict[str, Any], spec: FeatureSpec) -> RowFn:
    _only(p)
    return lambda r: float(datetime.fromtimestamp(r.now, UTC).weekday())


@dataclass(frozen=True)
class Kind:
    scope: Literal["member", "offer", "row"]
    build: Callable[[dict[str, Any], FeatureSpec], Callable[..., Any]]


KINDS: dict[str, Kind] = {
    "decayed_count": Kind("member", _decayed_count),
    "decayed_sum": Kind("member", _decayed_sum),
    "decayed_rate": Kind("member", _decayed_rate),
    "recency_hours": Kind("member", _recency_hours),
    "member_total": Kind("member", _member_total),
    "total_ratio": Kind("member", _total_ratio),
    "smoothed_ratio": Kind("member", _smoothed_ratio),
    "member_code": Kind("member", _member_code),
    "member_flag": Kind("member", _member_flag),
    "tenure_days": Kind("member", _tenure_days),
    "birthday_month_now": Kind("member", _birthday_month_now),
    "member_attribute": Kind("member", _member_attribute),
    "offer_kind": Kind("offer", _offer_kind),
    "offer_code": Kind("offer", _offer_code),
    "offer_number": Kind("offer", _offer_number),
    "offer_limited": Kind("offer", _offer_limited),
    "offer_has_category": Kind("offer", _offer_has_category),
    "offer_tag": Kind("offer", _offer_tag),
    "offer_inventory_left": Kind("offer", _offer_inventory_left),
    "offer_prior": Kind("offer", _offer_prior),
    "offer_to_basket": Kind("row", _offer_to_basket),
    "category_interest": Kind("row", _category_interest),
    "category_interest_share": Kind("row", _category_interest_share),
    "category_orders": Kind("row", _category_orders),
    "member_offer": Kind("row", _member_offer),
    "context_code": Kind("row", _context_code),
    "page_category_match": Kind("row", _page_category_match),
    "hour_of_day": Kind("row", _hour_of_day),
    "day_of_week": Kind("row", _day_of_week),
}


def kind_of(feature: Feature) -> Kind:
    try:
        return KINDS[feature.kind]
    except KeyError:
        raise ValueError(f"unknown kind {feature.kind!r} (known: {sorted(KINDS)})") from None


def check_feature(feature: Feature, spec: FeatureSpec) -> None:
    """Raise ``ValueError`` when the feature's kind is unknown or its parameters are wrong."""
    kind_of(feature).build(dict(feature.params), spec)


def build(feature: Feature, spec: FeatureSpec) -> Callable[..., Any]:
    return kind_of(feature).build(dict(feature.params), spec)


def _register_member_offer_attribute() -> None:
    # In its own module (this one is at its size limit); registered here so every specification sees it.
    from features.member_offer_attributes import member_offer_attribute

    KINDS["member_offer_attribute"] = Kind("row", member_offer_attribute)


_register_member_offer_attribute()
