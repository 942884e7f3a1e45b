"""Reasons shown with an offer: each one a stable code whose premise is true, then one sentence.

A reason is emitted only when its premise holds of the member's state, the page, the offer and the
offer's aggregate statistics at ``now``; the premises, in order of strength:

====================== =================================================================================
code                   premise (thresholds are :class:`ReasonRules`, set from ``reason_*`` settings)
====================== =================================================================================
featured               the operator pinned the offer
page_context           the page's category is the offer's category
birthday_month         the offer is a birthday offer and it is the member's birth month (UTC)
category_interest      the member browsed the offer's category within the last 7 days, with at least
                       ``min_browse_weight`` browsing (a view or search 1, an add-to-cart 3; decayed
                       with a 7-day half-life, so the raw count is at least as large)
category_purchases     at least ``min_category_orders`` of the member's orders contained the category
                       (decayed over 30 days, so at least that many orders)
free_shipping_basket   a shipping offer with a threshold; at least ``min_orders`` orders whose average
                       basket is at or over the threshold
frequent_orders        a shipping offer; at least ``frequent_orders`` orders (30-day decayed count)
threshold_within_reach a non-shipping threshold offer; at least ``min_orders`` orders whose average
                       basket is below the threshold by at most ``near_threshold_share``
tier_benefit           the offer is restricted to tiers that include the member's (above regular)
paid_membership        a paid-only offer and the member is a paid member now (not ended, not expired)
coupon_habit           a coupon; at least ``min_orders`` orders of which ``coupon_order_share`` used a
                       coupon, or at least ``min_coupon_claims`` coupon claims (30-day decayed count)
consult_history        a consult; the member has booked a consultation before
paid_expiring          a renewal offer (``paid_expiring_within_days`` set); the member's paid membership
                       ends within that many days, in ``days`` days (rounded up, at least 2)
paid_expiring_today    the same, ending within a day
paid_lapsed            a renewal offer (``paid_lapsed_within_days`` set); the paid membership lapsed
                       within that many days
tier_progress          a tier nudge (a tier-gap rule set); the member's growth value is short of the next
                       tier (``tier``, shown by its display name) by a gap within the rule's range;
                       ``amount`` is the spend that closes it (rounded up to a whole currency unit)
points_expiring        a points offer (``points_expiring_within_days`` = N set); ``points`` (> 0) of the
                       member's points expire within ``days`` = N rounded up to whole days (at least 2):
                       the window the sentence states is the one counted, and it holds the rule's window
points_expiring_today  the same with N of a day or less (counted within one day)
welcome_back           a wake-up offer (its stages include returning); the member's stage is
                       ``returning``: back within ``returning_days`` after ``silent_days`` away (a silent
                       or lapsing member has not come back, so is not welcomed back)
missed_you             a wake-up offer (its stages include silent or lapsing); the member's stage is that
                       stage: no visit for ``days`` whole days (at least ``lapsing_days``)
high_value             the offer's value is at least ``high_value_share`` of the catalog's highest
limited_quantity       limited stock with at least ``limited_share`` of it reserved
popular                the offer's statistics: at least ``popular_min_impressions`` impressions and
                       ``popular_min_claims`` claims (all replicas' aggregate counters)
available              always true of a shown offer (it passed eligibility): the last resort
====================== =================================================================================

Member facts (every code from ``birthday_month`` to ``consult_history``) are used only in personalised
modes. Offers in a sensitive category (``sensitive_categories``: health, baby by default; a consult
whose subtype names one counts too) never get a reason built from the member's behaviour or the page:
no ``page_context``, ``category_interest``, ``category_purchases`` or ``consult_history``, and no
sentence names a sensitive category.

Sentences are built in one place, :func:`sentence` (code + parameters + locale -> text), from the
message catalogue (``service/locales``, :mod:`service.i18n`).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from features import lifecycle as lc
from features.decay import DAY
from features.events import TIERS
from features.offers import Offer
from features.projection import Context
from features.state import MemberState
from service import i18n

#: The English sentence of every reason code (from the message catalogue: service/locales, service.i18n).
TEMPLATES: dict[str, str] = {code: i18n.message("reason", code, "en") for code in i18n.REASON_PARAMS}
REASON_CODES: tuple[str, ...] = tuple(TEMPLATES)
#: Codes that quote the member's own behaviour or page (never for sensitive offers, never unless
#: personalised, except ``page_context``, which is about the page being viewed).
BEHAVIOUR_CODES = frozenset({"page_context", "category_interest", "category_purchases", "consult_history"})
#: Codes built from the member's state: only in personalised modes.
MEMBER_CODES = frozenset(
    {
        "birthday_month",
        "category_interest",
        "category_purchases",
        "free_shipping_basket",
        "frequent_orders",
        "threshold_within_reach",
        "tier_benefit",
        "paid_membership",
        "coupon_habit",
        "consult_history",
        "paid_expiring",
        "paid_expiring_today",
        "paid_lapsed",
        "tier_progress",
        "points_expiring",
        "points_expiring_today",
        "welcome_back",
        "missed_you",
    }
)
SHIPPING_SUBTYPES = frozenset({"free_shipping", "shipping"})


def sentence(code: str, params: dict[str, Any], locale: str = "en") -> str:
    """The member-facing sentence for a reason code and its parameters (the one place text is made),
    in ``locale``'s language: the message catalogue's entry, values formatted for the locale."""
    return i18n.reason_text(code, params, locale)


@dataclass(frozen=True)
class ReasonRules:
    """Premise thresholds (settings ``reason_*``) and the categories never quoted back."""

    min_browse_weight: float = 3.0
    min_category_orders: float = 3.0
    min_orders: int = 3
    frequent_orders: float = 3.0
    near_threshold_share: float = 0.8
    coupon_order_share: float = 0.3
    min_coupon_claims: float = 2.0
    high_value_share: float = 0.5
    limited_share: float = 0.8
    popular_min_impressions: int = 200
    popular_min_claims: int = 20
    sensitive_categories: frozenset[str] = frozenset({"health", "baby"})
    max_reasons: int = 3
    #: Stage thresholds and tier rules (the same the eligibility rules read the state with).
    lifecycle: lc.LifecycleConfig = lc.DEFAULT_CONFIG

    def is_sensitive(self, offer: Offer) -> bool:
        s = self.sensitive_categories
        return (offer.category is not None and offer.category in s) or (
            offer.kind == "consult" and offer.subtype in s
        )


@dataclass(frozen=True)
class OfferFacts:
    """What the catalog snapshot knows about one offer besides the offer itself."""

    value_share: float  # value / the catalog's highest value
    reserved: float  # units reserved so far
    impressions: float
    claims: float


_7D, _30D = 2, 3  # indices of the 7-day and 30-day half-lives in a Decayed counter


def _decayed(table: dict[str, Any], key: str, now: float, i: int) -> float:
    c = table.get(key)
    return float(c.at_index(now, i)) if c is not None else 0.0


def reasons(
    offer: Offer,
    facts: OfferFacts,
    state: MemberState | None,
    context: Context,
    now: float,
    rules: ReasonRules,
    locale: str = "en",
) -> list[dict[str, str]]:
    """Reasons for one shown offer, strongest first, at most ``rules.max_reasons``, in ``locale``.

    ``state`` is None in non-personalised modes: then only offer and page facts are used.
    """
    found = premises(offer, facts, state, context, now, rules)
    return [{"code": c, "text": sentence(c, p, locale)} for c, p in found[: rules.max_reasons]]


def premises(
    offer: Offer,
    facts: OfferFacts,
    state: MemberState | None,
    context: Context,
    now: float,
    rules: ReasonRules,
) -> list[tuple[str, dict[str, Any]]]:
    """Every (code, parameters) whose premise holds, strongest first (always ends with ``available``)."""
    out: list[tuple[str, dict[str, Any]]] = []
    sensitive = rules.is_sensitive(offer)
    cat = offer.category
    if offer.pinned:
        out.append(("featured", {}))
    if not sensitive and cat is not None and context.category == cat:
        out.append(("page_context", {"category": cat}))
    if state is not None:
        out.extend(_member_premises(offer, state, now, _month(now - now % 60.0), rules, sensitive))
    if facts.value_share >= rules.high_value_share and offer.value > 0:
        out.append(("high_value", {"value": offer.value}))
    if offer.inventory is not None and facts.reserved >= rules.limited_share * offer.inventory:
        out.append(("limited_quantity", {}))
    if facts.impressions >= rules.popular_min_impressions and facts.claims >= rules.popular_min_claims:
        out.append(("popular", {}))
    out.append(("available", {}))
    return out


@functools.lru_cache(maxsize=4)
def _month(now_minute: float) -> int:
    """UTC month of a minute's start (the same as of any instant in it: months start on a minute)."""
    return datetime.fromtimestamp(now_minute, UTC).month


def _member_premises(
    offer: Offer, state: MemberState, now: float, month: int, rules: ReasonRules, sensitive: bool
) -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = []
    cat = offer.category
    if state.birth_month == month and (
        offer.eligibility.birthday_month_only or offer.subtype == "birthday_gift"
    ):
        out.append(("birthday_month", {}))
    if cat is not None and not sensitive:
        browsed_at = state.cat_last_ts.get(cat, 0.0)
        if (
            0.0 < now - browsed_at <= 7 * DAY
            and _decayed(state.cat_interest, cat, now, _7D) >= rules.min_browse_weight
        ):
            out.append(("category_interest", {"category": cat}))
        elif _decayed(state.cat_orders, cat, now, _30D) >= rules.min_category_orders:
            out.append(("category_purchases", {"category": cat}))
    orders = state.orders_total
    avg_basket = state.spend_total / orders if orders else 0.0
    based = orders >= rules.min_orders
    if offer.subtype in SHIPPING_SUBTYPES:
        if based and offer.threshold > 0 and avg_basket >= offer.threshold:
            out.append(("free_shipping_basket", {"threshold": offer.threshold}))
        elif _decayed(state.counts, "order", now, _30D) >= rules.frequent_orders:
            out.append(("frequent_orders", {}))
    elif (
        based
        and offer.threshold > 0
        and rules.near_threshold_share * offer.threshold <= avg_basket < offer.threshold
    ):
        out.append(("threshold_within_reach", {"threshold": offer.threshold}))
    tiers = offer.eligibility.tiers
    if tiers and state.tier in tiers and state.tier in TIERS[1:]:
        out.append(("tier_benefit", {"tier": state.tier}))
    if offer.eligibility.paid_only and lc.paid_active(state, now):
        out.append(("paid_membership", {}))
    if offer.kind == "coupon" and (
        (based and state.orders_with_coupon / orders >= rules.coupon_order_share)
        or _decayed(state.counts, "coupon_claim", now, _30D) >= rules.min_coupon_claims
    ):
        out.append(("coupon_habit", {}))
    if offer.kind == "consult" and not sensitive and "consult_booked" in state.counts:
        out.append(("consult_history", {}))
    if offer.eligibility.uses_lifecycle:
        out.extend(lifecycle_premises(offer, state, now, rules.lifecycle))
    return out


def lifecycle_premises(
    offer: Offer, state: MemberState, now: float, config: lc.LifecycleConfig
) -> list[tuple[str, dict[str, Any]]]:
    """The lifecycle reasons of an offer with lifecycle rules, each only when its premise holds."""
    out: list[tuple[str, dict[str, Any]]] = []
    el = offer.eligibility
    plan = state.paid_plan or "paid"
    left = lc.paid_days_left(state, now)
    if el.paid_expiring_within_days is not None and left is not None and left <= el.paid_expiring_within_days:
        days = math.ceil(left)
        if days <= 1:
            out.append(("paid_expiring_today", {"plan": plan}))
        else:
            out.append(("paid_expiring", {"plan": plan, "days": days}))
    lapsed = lc.paid_days_since_lapse(state, now)
    if el.paid_lapsed_within_days is not None and lapsed is not None and lapsed <= el.paid_lapsed_within_days:
        out.append(("paid_lapsed", {"plan": plan}))
    if el.min_tier_gap is not None or el.max_tier_gap is not None:
        progress = lc.tier_progress(state, now, config.tiers)
        lo = el.min_tier_gap if el.min_tier_gap is not None else 0.0
        hi = el.max_tier_gap if el.max_tier_gap is not None else math.inf
        gap = progress.gap
        if gap is not None and progress.next_tier is not None and gap > 0 and lo <= gap <= hi:
            amount = math.ceil(gap / config.tiers.growth_per_currency)
            out.append(("tier_progress", {"amount": amount, "tier": progress.next_tier}))
    if el.points_expiring_within_days is not None:
        # The window the sentence states ("within 30 days") is the window counted: whole days, at least
        # the rule's own window, so the count is at least what made the member eligible.
        days = max(1, math.ceil(el.points_expiring_within_days))
        points = lc.points_expiring_within(state, now, days)
        if points > 0:
            if days == 1:
                out.append(("points_expiring_today", {"points": points}))
            else:
                out.append(("points_expiring", {"points": points, "days": days}))
    if el.lifecycle_stages:
        stage = lc.stage(state, now, config)
        if stage == "returning" and "returning" in el.lifecycle_stages:
            out.append(("welcome_back", {}))
        elif stage in ("silent", "lapsing") and stage in el.lifecycle_stages and state.last_visit_ts > 0:
            # Whole days away, as the member would count them; the stage guarantees at least lapsing_days.
            out.append(("missed_you", {"days": int(lc.days_since_visit(state, now))}))
    return out
