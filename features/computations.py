"""The registry of feature computations, keyed by ``kind``: each declared column is bound here by name.

Three scopes, so that the projection stays vectorised over offers:

- ``member``: one number from (member state, now), broadcast to every offer row;
- ``offer``: one column over the catalogue, computed once per catalogue version in
  :class:`features.projection.OfferTable` (priors and inventory are refreshed from statistics);
- ``row``: a column per request from the member, the offers and the page context (member x offer
  interactions, category affinity, context codes), computed with numpy over all offers at once.

Adding a kind: write its builder (checks the parameters, raising ``ValueError``, and returns the
computation) and register it in :data:`KINDS`. The per-request inputs, the parameter checks and
:class:`Kind` are in :mod:`features.computations_base`; the lifecycle kinds (stage, recency, paid
membership, tier gap, expiring points) in :mod:`features.computations_lifecycle`. Changing what a kind
computes changes every model that uses it: bump the specification's ``version``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np

from features.computations_base import (
    NEVER_HOURS,
    Kind,
    MemberFn,
    OfferFn,
    Request,
    RowFn,
    half_life,
    hours_since,
    number,
    one_of,
    only_params,
    param,
    smoothed,
)
from features.computations_lifecycle import LIFECYCLE_KINDS
from features.decay import DAY
from features.member_offer_attributes import member_offer_attribute
from features.state import COUNTED_KINDS, MemberState

if TYPE_CHECKING:
    from features.spec import Feature, FeatureSpec

__all__ = [
    "KINDS",
    "NEVER_HOURS",
    "Kind",
    "MemberFn",
    "OfferFn",
    "Request",
    "RowFn",
    "build",
    "check_feature",
    "hours_since",
    "kind_of",
    "smoothed",
]

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
    only_params(p, "event", "half_life")
    event, i = one_of(p, "event", COUNTED_KINDS), half_life(p)

    def fn(s: MemberState, now: float) -> float:
        c = s.counts.get(event)
        return c.at_index(now, i) if c is not None else 0.0

    return fn


def _decayed_sum(p: dict[str, Any], spec: FeatureSpec) -> MemberFn:
    only_params(p, "quantity", "half_life")
    q, i = one_of(p, "quantity", DECAYED_SUMS), half_life(p)
    return lambda s, now: getattr(s, q).at_index(now, i)


def _decayed_rate(p: dict[str, Any], spec: FeatureSpec) -> MemberFn:
    only_params(p, "numerator", "denominator", "half_life", "prior", "weight")
    num, den = one_of(p, "numerator", COUNTED_KINDS), one_of(p, "denominator", COUNTED_KINDS)
    i, prior, weight = half_life(p), number(p, "prior", 0.0), number(p, "weight", 1.0)

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
    only_params(p, "event")
    event = one_of(p, "event", COUNTED_KINDS)
    return lambda s, now: hours_since(now, s.last_ts.get(event, 0.0))


def _member_total(p: dict[str, Any], spec: FeatureSpec) -> MemberFn:
    only_params(p, "field", "transform")
    f = one_of(p, "field", MEMBER_TOTALS)
    transform = p.get("transform", "none")
    if transform == "log1p":
        return lambda s, now: math.log1p(max(0, getattr(s, f)))
    if transform != "none":
        raise ValueError(f"transform {transform!r} is not one of ['none', 'log1p']")
    return lambda s, now: float(getattr(s, f))


def _total_ratio(p: dict[str, Any], spec: FeatureSpec) -> MemberFn:
    only_params(p, "numerator", "denominator")
    num, den = one_of(p, "numerator", MEMBER_TOTALS), one_of(p, "denominator", MEMBER_TOTALS)

    def fn(s: MemberState, now: float) -> float:
        d = getattr(s, den)
        return getattr(s, num) / d if d > 0 else 0.0

    return fn


def _smoothed_ratio(p: dict[str, Any], spec: FeatureSpec) -> MemberFn:
    only_params(p, "numerator", "denominator", "prior", "weight")
    num, den = one_of(p, "numerator", MEMBER_TOTALS), one_of(p, "denominator", MEMBER_TOTALS)
    prior, weight = number(p, "prior", 0.0), number(p, "weight", 1.0)
    return lambda s, now: smoothed(getattr(s, num), getattr(s, den), prior, weight)


def _member_code(p: dict[str, Any], spec: FeatureSpec) -> MemberFn:
    only_params(p, "field", "vocabulary", "unknown")
    f = one_of(p, "field", ("tier", "region"))
    vocab = spec.vocabulary(str(param(p, "vocabulary")))
    codes = {v: float(i) for i, v in enumerate(vocab)}
    unknown = number(p, "unknown", float(len(vocab)))
    return lambda s, now: codes.get(getattr(s, f), unknown)


def _member_flag(p: dict[str, Any], spec: FeatureSpec) -> MemberFn:
    only_params(p, "field")
    f = one_of(p, "field", ("paid_member", "personalization_consent"))
    return lambda s, now: 1.0 if getattr(s, f) else 0.0


def _tenure_days(p: dict[str, Any], spec: FeatureSpec) -> MemberFn:
    only_params(p)

    def fn(s: MemberState, now: float) -> float:
        joined = s.joined_ts or s.first_seen_ts
        return max(0.0, (now - joined) / DAY) if joined else 0.0

    return fn


def _birthday_month_now(p: dict[str, Any], spec: FeatureSpec) -> MemberFn:
    only_params(p)
    return lambda s, now: 1.0 if s.birth_month == datetime.fromtimestamp(now, UTC).month else 0.0


ATTRIBUTE_TYPES = ("numeric", "categorical", "boolean", "list")


def _member_attribute(p: dict[str, Any], spec: FeatureSpec) -> MemberFn:
    """A declared member attribute (``profile_updated`` events, members table), read by name.

    numeric: the number as it is; categorical: its code in ``vocabulary`` (a value outside it gets
    ``len(vocabulary)``, i.e. "other"); boolean: 1/0; list: 1/0 for ``contains`` when given, else the
    list's length. ``default`` (0 unless declared) when the member has no value.
    """
    only_params(p, "attribute", "type", "vocabulary", "contains", "default")
    name = str(param(p, "attribute"))
    typ = one_of({"type": "numeric", **p}, "type", ATTRIBUTE_TYPES)
    default = number(p, "default", 0.0)
    if typ == "categorical":
        vocab = spec.vocabulary(str(param(p, "vocabulary")))
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
    only_params(p, "kind")
    kind = one_of(p, "kind", ("coupon", "benefit", "consult"))
    return lambda offers: np.array([1.0 if o.kind == kind else 0.0 for o in offers])


def _offer_code(p: dict[str, Any], spec: FeatureSpec) -> OfferFn:
    only_params(p, "field", "vocabulary")
    f = one_of(p, "field", ("subtype", "category", "kind"))
    vocab = spec.vocabulary(str(param(p, "vocabulary")))
    codes = {v: float(i) for i, v in enumerate(vocab)}
    other = float(len(vocab))
    return lambda offers: np.array([codes.get(getattr(o, f) or "", other) for o in offers])


def _offer_number(p: dict[str, Any], spec: FeatureSpec) -> OfferFn:
    only_params(p, "field")
    f = one_of(p, "field", ("value", "threshold", "cost"))
    return lambda offers: np.array([getattr(o, f) for o in offers], dtype=np.float64)


def _offer_limited(p: dict[str, Any], spec: FeatureSpec) -> OfferFn:
    only_params(p)
    return lambda offers: np.array([1.0 if o.inventory is not None else 0.0 for o in offers])


def _offer_has_category(p: dict[str, Any], spec: FeatureSpec) -> OfferFn:
    only_params(p)
    return lambda offers: np.array([1.0 if o.category else 0.0 for o in offers])


def _offer_tag(p: dict[str, Any], spec: FeatureSpec) -> OfferFn:
    only_params(p, "tag")
    tag = str(param(p, "tag"))
    return lambda offers: np.array([1.0 if tag in o.tags else 0.0 for o in offers])


def _offer_inventory_left(p: dict[str, Any], spec: FeatureSpec) -> OfferFn:
    """Fraction of the inventory left; 1 until statistics arrive (see OfferTable.with_stats)."""
    only_params(p)
    return lambda offers: np.ones(len(offers))


def _offer_prior(p: dict[str, Any], spec: FeatureSpec) -> OfferFn:
    """Smoothed click (``ctr``) or claim (``claim``) rate of the offer over all members; the prior until
    statistics arrive (OfferTable.with_stats)."""
    only_params(p, "rate", "prior", "weight")
    one_of(p, "rate", ("ctr", "claim"))
    prior = number(p, "prior", 0.0)
    number(p, "weight", 1.0)
    return lambda offers: np.full(len(offers), prior)


# --- row scope (member x offer, context) -------------------------------------------------------


def _offer_to_basket(p: dict[str, Any], spec: FeatureSpec) -> RowFn:
    only_params(p, "field")
    f = one_of(p, "field", ("value", "threshold", "cost"))
    return lambda r: getattr(r, f) / max(r.avg_basket(), 1.0)


def _category_interest(p: dict[str, Any], spec: FeatureSpec) -> RowFn:
    only_params(p, "half_life")
    i = half_life(p)
    return lambda r: r.categories()[r.category_idx, i]


def _category_interest_share(p: dict[str, Any], spec: FeatureSpec) -> RowFn:
    only_params(p, "half_life")
    i = half_life(p)

    def fn(r: Request) -> np.ndarray | float:
        total = r.interest_total(i)
        return r.categories()[r.category_idx, i] / total if total > 0 else 0.0

    return fn


def _category_orders(p: dict[str, Any], spec: FeatureSpec) -> RowFn:
    only_params(p, "half_life")
    if param(p, "half_life") != "30d":
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
    only_params(p, "stat")
    j = MEMBER_OFFER_STATS.index(one_of(p, "stat", MEMBER_OFFER_STATS))
    return lambda r: r.member_offer()[:, j]


def _context_code(p: dict[str, Any], spec: FeatureSpec) -> RowFn:
    only_params(p, "field", "unknown")
    f = one_of(p, "field", ("page_type", "device", "channel"))
    cf = spec.context.get(f)  # type: ignore[call-overload]
    if cf is None or cf.vocabulary is None:
        raise ValueError(f"context field {f!r} needs a vocabulary in the specification's context")
    vocab = spec.vocabulary(cf.vocabulary)
    codes = {v: float(i) for i, v in enumerate(vocab)}
    unknown = number(p, "unknown", float(len(vocab)))
    return lambda r: codes.get(getattr(r.context, f), unknown)


def _page_category_match(p: dict[str, Any], spec: FeatureSpec) -> RowFn:
    only_params(p)

    def fn(r: Request) -> np.ndarray | float:
        cat = r.context.category
        i = r.table.category_index.get(cat) if cat is not None else None
        return r.category_idx == i if i is not None else 0.0

    return fn


def _hour_of_day(p: dict[str, Any], spec: FeatureSpec) -> RowFn:
    only_params(p)
    return lambda r: float(datetime.fromtimestamp(r.now, UTC).hour)


def _day_of_week(p: dict[str, Any], spec: FeatureSpec) -> RowFn:
    only_params(p)
    return lambda r: float(datetime.fromtimestamp(r.now, UTC).weekday())


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
    "member_offer_attribute": Kind("row", member_offer_attribute),
    **LIFECYCLE_KINDS,
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
