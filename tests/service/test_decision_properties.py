"""Property tests (hypothesis) of the ranking decisions: random catalogs (with clones), members folded from
random event histories, page contexts and offer statistics. Invariants:

- every offer in a slate is eligible for the member now;
- no two offers of one family in a slate; no category (``None`` included) over its cap;
- no offer of a family the member dismissed within its cool-down;
- every reason's premise holds, checked against the generated *events* (not the folded state), and
  no sentence names a sensitive category.

``make test`` runs the ``ci`` profile (bounded examples); ``make property`` the ``long`` one.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from features import events as ev
from features.eligibility import evaluate
from features.events import TIERS
from features.offer_stats import OfferCounters
from features.offers import Caps, Eligibility, Offer
from features.projection import Context
from features.state import MemberState, fold, new_state
from harness.testmodel import train_onnx
from service.catalog import CatalogSnapshot, build_snapshot
from service.model import LoadedModel, load_model
from service.ranking import Mode, Policy, rank
from service.reasons import MEMBER_CODES, REASON_CODES, ReasonRules, sentence

NOW = datetime(2026, 6, 15, 12, 0, tzinfo=UTC).timestamp()
DAY = 86400.0
CATS = ["baby", "beauty", "grocery", "health", "home", "pets"]
RULES = ReasonRules()


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoadedModel]:
    path: Path = tmp_path_factory.mktemp("model") / "model.onnx"
    path.write_bytes(train_onnx(seed=5, n_trees=10).SerializeToString())
    yield load_model(path, "prop")


# --- catalogs ------------------------------------------------------------------------------------------

_KIND_SUBTYPES = [
    ("coupon", "threshold"),
    ("coupon", "no_threshold"),
    ("coupon", "shipping"),
    ("benefit", "free_shipping"),
    ("benefit", "birthday_gift"),
    ("benefit", "priority_delivery"),
    ("consult", "health"),
    ("consult", "stylist"),
]


#: Lifecycle eligibility (issue 19) of about half the offers: renewal, win-back, tier nudge, points and
#: wake-up offers, windows of a day or less included (their sentences say "within a day").
_LIFECYCLE_RULES: list[dict[str, Any]] = [
    {},
    {},
    {},
    {},
    {"paid_expiring_within_days": 7.0},
    {"paid_expiring_within_days": 0.5},
    {"paid_lapsed_within_days": 14.0},
    {"paid_expiring_within_days": 30.0, "paid_lapsed_within_days": 30.0},
    {"max_tier_gap": 500.0},
    {"min_tier_gap": 50.0, "max_tier_gap": 3000.0},
    {"points_expiring_within_days": 30.0},
    {"points_expiring_within_days": 0.7, "min_points_expiring": 10},
    {"lifecycle_stages": ["silent", "lapsing", "returning"]},
    {"lifecycle_stages": ["silent"]},
    {"lifecycle_stages": ["lapsing"]},
    {"lifecycle_stages": ["returning", "active"]},
]


@st.composite
def offers_st(draw: st.DrawFn) -> list[Offer]:
    n = draw(st.integers(3, 14))
    out: list[Offer] = []
    for i in range(n):
        kind, subtype = draw(st.sampled_from(_KIND_SUBTYPES))
        clone_of = out[draw(st.integers(0, len(out) - 1))] if out and draw(st.booleans()) else None
        if clone_of is not None:  # a clone: same kind, subtype, value, threshold (the derived family)
            out.append(clone_of.model_copy(update={"offer_id": f"o{i}", "pinned": draw(st.booleans())}))
            continue
        threshold = draw(st.sampled_from([0.0, 59.0, 99.0, 199.0]))
        tiers = draw(st.sampled_from([[], ["gold"], ["silver", "gold", "diamond"]]))
        out.append(
            Offer(
                offer_id=f"o{i}",
                kind=kind,
                subtype=subtype,
                title=f"offer {i}",
                category=draw(st.sampled_from([None, *CATS])),
                value=draw(st.sampled_from([0.0, 3.0, 10.0, 30.0, 80.0])),
                threshold=threshold,
                cost=draw(st.sampled_from([0.0, 2.0, 8.0])) or 1.0,
                inventory=draw(st.sampled_from([None, 10, 100])),
                eligibility=Eligibility(
                    tiers=tiers,
                    paid_only=draw(st.booleans()) and draw(st.booleans()),
                    birthday_month_only=subtype == "birthday_gift" and draw(st.booleans()),
                    **draw(st.sampled_from(_LIFECYCLE_RULES)),
                ),
                caps=Caps(max_claims_per_member=3, cooldown_after_claim_hours=0.0),
                pinned=draw(st.integers(0, 5)) == 0,
                family=draw(st.sampled_from([None, None, None, "fam-a", "fam-b"])),
            )
        )
    return out


# --- members -------------------------------------------------------------------------------------------


@dataclass
class Member:
    events: list[ev.Event]
    state: MemberState


_EDGE_AGES = [1800.0, 2 * DAY, 6.9 * DAY, 7.1 * DAY, 8 * DAY, 12 * DAY, 29 * DAY, 31 * DAY]
#: Paid membership expiries around NOW (lapsed, ending within a day, within a week, later) and points
#: lots' days to expiry (the past, within a day, a week, a month, later).
_EXPIRIES = [NOW - 20 * DAY, NOW - 2 * DAY, NOW + 0.3 * DAY, NOW + 3 * DAY, NOW + 20 * DAY, NOW + 90 * DAY]
_LOT_DAYS = [-1.0, 0.4, 0.9, 5.0, 29.5, 30.5, 60.0]


@st.composite
def member_st(draw: st.DrawFn, offer_ids: list[str]) -> Member:
    events: list[ev.Event] = []
    n = draw(st.integers(0, 40))
    m = "m1"
    favourite = draw(st.sampled_from(CATS))  # most of a member's history is in one category
    # A quarter of the members come back: a visit 35-60 days ago and nothing else older than 10 days.
    comeback = draw(st.integers(0, 3)) == 0
    # Another quarter are away: nothing for at least 14 days (lapsing) or 30 days (silent).
    away_since = (
        draw(st.sampled_from([14.5 * DAY, 31 * DAY])) if not comeback and draw(st.booleans()) else 0.0
    )
    max_age = 10 * DAY if comeback else 40 * DAY
    for k in range(n):
        # Ages straddling the 7-day and 30-day edges of the premises, and anything up to 40 days.
        age = draw(
            st.one_of(st.sampled_from([a for a in _EDGE_AGES if a <= max_age]), st.floats(1.0, max_age))
        )
        if away_since:
            age = draw(st.floats(away_since, 45 * DAY))
        ts = NOW - age
        eid = f"e{k}"
        kind = draw(st.integers(0, 14))
        cat = favourite if draw(st.booleans()) else draw(st.sampled_from(CATS))
        if kind <= 2:
            events.append(
                ev.PageView(event_id=eid, member_id=m, event_ts=ts, page_type="category", category=cat)
            )
        elif kind == 3:
            events.append(ev.Search(event_id=eid, member_id=m, event_ts=ts, category=cat))
        elif kind == 4:
            events.append(ev.AddToCart(event_id=eid, member_id=m, event_ts=ts, category=cat))
        elif kind <= 6:
            cats = draw(st.lists(st.sampled_from(CATS), max_size=3))
            coupon = "c1" if draw(st.booleans()) else None
            amount = draw(st.sampled_from([20.0, 50.0, 80.0, 120.0, 180.0, 250.0]))
            events.append(
                ev.Order(
                    event_id=eid, member_id=m, event_ts=ts, amount=amount, categories=cats, coupon_id=coupon
                )
            )
        elif kind == 7:
            events.append(ev.CouponClaim(event_id=eid, member_id=m, event_ts=ts, offer_id="elsewhere"))
        elif kind == 8:
            events.append(ev.ConsultBooked(event_id=eid, member_id=m, event_ts=ts, offer_id="elsewhere"))
        elif kind == 9 and offer_ids:
            oid = draw(st.sampled_from(offer_ids))
            events.append(ev.Dismiss(event_id=eid, member_id=m, event_ts=ts, request_id="r", offer_id=oid))
        elif kind == 10:
            tier = draw(st.sampled_from(["regular", "silver", "gold", "diamond"]))
            events.append(ev.TierChanged(event_id=eid, member_id=m, event_ts=ts, tier=tier))  # type: ignore[arg-type]
        elif kind == 11:
            events.append(
                ev.PaidMembershipStarted(
                    event_id=eid, member_id=m, event_ts=ts, plan=draw(st.sampled_from([None, "PLUS"])),
                    expires_at=draw(st.sampled_from([None, *_EXPIRIES])),
                )
            )  # fmt: skip
        elif kind == 12:
            events.append(
                ev.PaidMembershipRenewed(
                    event_id=eid, member_id=m, event_ts=ts, expires_at=draw(st.sampled_from(_EXPIRIES))
                )
            )
        elif kind == 13:
            events.append(ev.PaidMembershipEnded(event_id=eid, member_id=m, event_ts=ts))
        else:
            lots = draw(
                st.lists(st.tuples(st.sampled_from([10, 300]), st.sampled_from(_LOT_DAYS)), max_size=4)
            )
            expiring = [ev.PointsLot(points=p, expires_at=NOW + d * DAY) for p, d in lots]
            events.append(
                ev.PointsChanged(event_id=eid, member_id=m, event_ts=ts, points=2000, expiring=expiring)
            )
    if comeback:
        old = NOW - draw(st.sampled_from([35.0, 45.0, 60.0])) * DAY
        events.append(ev.PageView(event_id="old", member_id=m, event_ts=old, page_type="home"))
    if draw(st.booleans()):
        month = draw(st.integers(1, 12))
        events.append(
            ev.ProfileUpdated(event_id="p", member_id=m, event_ts=NOW - 90 * DAY, birth_month=month)
        )
    state = fold(events, new_state(m)) if events else new_state(m)
    return Member(events, state)


@st.composite
def world_st(draw: st.DrawFn) -> tuple[CatalogSnapshot, list[Offer], Member, Context, str]:
    offers = draw(offers_st())
    member = draw(member_st([o.offer_id for o in offers]))
    stats = {
        o.offer_id: OfferCounters(
            impressions=draw(st.sampled_from([0, 50, 250, 5000])), claims=draw(st.sampled_from([0, 5, 30]))
        )
        for o in offers
        if draw(st.booleans())
    }
    reserved = {o.offer_id: draw(st.integers(0, o.inventory - 1)) for o in offers if o.inventory}
    snap = build_snapshot(1, offers, NOW, stats=stats, reserved=reserved)
    context = Context(
        page_type=draw(st.sampled_from(["home", "category", "checkout"])),
        category=draw(st.sampled_from([None, *CATS])),
    )
    mode = draw(st.sampled_from(["personalised", "non_personalised"]))
    return snap, offers, member, context, mode


# --- the premise of each reason, from the generated events ---------------------------------------------


def _browse_weight(events: list[ev.Event], cat: str) -> float:
    w = 0.0
    for e in events:
        if isinstance(e, ev.PageView | ev.Search) and e.category == cat:
            w += 1.0
        elif isinstance(e, ev.AddToCart) and e.category == cat:
            w += 3.0
    return w


def _browsed_within(events: list[ev.Event], cat: str, seconds: float) -> bool:
    return any(
        isinstance(e, ev.PageView | ev.Search | ev.AddToCart)
        and e.category == cat
        and 0 < NOW - e.event_ts <= seconds
        for e in events
    )


def _orders(events: list[ev.Event]) -> list[ev.Order]:
    return [e for e in events if isinstance(e, ev.Order)]


def _latest(events: list[ev.Event], cls: type) -> Any:
    found = [e for e in events if isinstance(e, cls)]
    return max(found, key=lambda e: (e.event_ts, e.event_id)) if found else None


_PAID = (ev.PaidMembershipStarted, ev.PaidMembershipRenewed, ev.PaidMembershipEnded)
_VISITS = (
    ev.PageView, ev.Search, ev.AddToCart, ev.Order, ev.Click, ev.CouponClaim, ev.BenefitUse, ev.ConsultBooked
)  # fmt: skip
#: The default programme (features.lifecycle.LifecycleConfig), restated: tier thresholds and stages.
_THRESHOLDS = {"silver": 1000.0, "gold": 3000.0, "diamond": 8000.0}


def _paid_facts(evs: list[ev.Event]) -> tuple[float | None, float | None, str]:
    """(days left of an active paid membership with an expiry, days since it lapsed, plan name) from
    the events: the latest start / renewal / end decides, an expiry in the past is a lapse."""
    latest = _latest(evs, _PAID)
    named = [e for e in evs if isinstance(e, _PAID[:2]) and e.plan is not None]
    plan = max(named, key=lambda e: (e.event_ts, e.event_id)).plan if named else "paid"
    if latest is None:
        return None, None, plan
    if isinstance(latest, ev.PaidMembershipEnded):
        return None, (NOW - latest.event_ts) / DAY, plan
    if latest.expires_at is None:
        return None, None, plan
    if latest.expires_at > NOW:
        return (latest.expires_at - NOW) / DAY, None, plan
    return None, (NOW - latest.expires_at) / DAY, plan


def _returning(evs: list[ev.Event]) -> bool:
    """Stage ``returning``: not new (first seen 30+ days ago), here within 14 days, and back within 14
    days after 30+ days without a visit (two consecutive visit days that far apart)."""
    if not evs or NOW - min(e.event_ts for e in evs) < 30 * DAY:
        return False
    visits = [e.event_ts for e in evs if isinstance(e, _VISITS)]
    if not visits or NOW - max(visits) >= 14 * DAY:
        return False
    days = sorted({int(t // DAY) for t in visits})
    today = int(NOW // DAY)
    return any(b - a >= 30 and today - b < 14 for a, b in itertools.pairwise(days))


def _away(evs: list[ev.Event]) -> tuple[str, float] | None:
    """(stage, whole days since the last visit) of a member who is away: not new (first seen 30+ days
    ago), visited at least once, and not for 30+ days (silent) or 14+ days (lapsing); else None."""
    if not evs or NOW - min(e.event_ts for e in evs) < 30 * DAY:
        return None
    visits = [e.event_ts for e in evs if isinstance(e, _VISITS)]
    if not visits:
        return None
    idle = (NOW - max(visits)) / DAY
    if idle >= 30:
        return "silent", idle
    if idle >= 14:
        return "lapsing", idle
    return None


def _lifecycle_sentence(code: str, o: Offer, member: Member) -> str | None:
    """The sentence a lifecycle reason must carry, from the events; None when its premise is false."""
    evs, el = member.events, o.eligibility
    left, lapsed, plan = _paid_facts(evs)
    match code:
        case "paid_expiring" | "paid_expiring_today":
            if el.paid_expiring_within_days is None or left is None or left > el.paid_expiring_within_days:
                return None
            days = math.ceil(left)
            if (days <= 1) != (code == "paid_expiring_today"):
                return None
            return sentence(code, {"plan": plan} if days <= 1 else {"plan": plan, "days": days})
        case "paid_lapsed":
            ok = el.paid_lapsed_within_days is not None and lapsed is not None
            return sentence(code, {"plan": plan}) if ok and lapsed <= el.paid_lapsed_within_days else None  # type: ignore[operator]
        case "tier_progress":
            growth = sum(x.amount for x in _orders(evs))
            tier_event = _latest(evs, ev.TierChanged)
            declared = TIERS.index(tier_event.tier) if tier_event else 0
            implied = max([0] + [TIERS.index(t) for t, need in _THRESHOLDS.items() if growth >= need])
            current = max(declared, implied)
            if current == len(TIERS) - 1:
                return None
            nxt = TIERS[current + 1]
            gap = _THRESHOLDS[nxt] - growth
            lo, hi = el.min_tier_gap or 0.0, el.max_tier_gap if el.max_tier_gap is not None else math.inf
            if (
                not (el.min_tier_gap is not None or el.max_tier_gap is not None)
                or gap <= 0
                or not lo <= gap <= hi
            ):
                return None
            return sentence(code, {"amount": math.ceil(gap), "tier": nxt})
        case "points_expiring" | "points_expiring_today":
            snapshot = _latest(evs, ev.PointsChanged)
            if el.points_expiring_within_days is None or snapshot is None:
                return None
            days = max(1, math.ceil(el.points_expiring_within_days))  # the window the sentence states
            points = sum(lot.points for lot in snapshot.expiring if NOW < lot.expires_at <= NOW + days * DAY)
            if points <= 0 or (days == 1) != (code == "points_expiring_today"):
                return None
            return sentence(code, {"points": points} if days == 1 else {"points": points, "days": days})
        case "welcome_back":
            return sentence(code, {}) if "returning" in el.lifecycle_stages and _returning(evs) else None
        case "missed_you":
            away = _away(evs)
            if away is None or away[0] not in el.lifecycle_stages:
                return None
            return sentence(code, {"days": int(away[1])})
    raise AssertionError(f"not a lifecycle code: {code}")


_LIFECYCLE_CODES = frozenset(
    {"paid_expiring", "paid_expiring_today", "paid_lapsed", "tier_progress", "points_expiring",
     "points_expiring_today", "welcome_back", "missed_you"}
)  # fmt: skip


def premise_holds(
    code: str, o: Offer, snap: CatalogSnapshot, member: Member, ctx: Context, text: str | None = None
) -> bool:
    """The premise of ``code`` from the generated events; for lifecycle reasons the sentence too (its
    numbers, plan and tier are the ones the events give)."""
    evs = member.events
    if code in _LIFECYCLE_CODES:
        return text is not None and text == _lifecycle_sentence(code, o, member)
    orders = _orders(evs)
    mean = sum(x.amount for x in orders) / len(orders) if orders else 0.0
    sensitive = o.category in RULES.sensitive_categories or (
        o.kind == "consult" and o.subtype in RULES.sensitive_categories
    )
    i = snap.table.index[o.offer_id]
    tier_event = _latest(evs, ev.TierChanged)
    tier = tier_event.tier if tier_event else "regular"
    profile = _latest(evs, ev.ProfileUpdated)
    match code:
        case "featured":
            return o.pinned
        case "page_context":
            return not sensitive and o.category is not None and ctx.category == o.category
        case "birthday_month":
            month = datetime.fromtimestamp(NOW, UTC).month
            is_bday_offer = o.eligibility.birthday_month_only or o.subtype == "birthday_gift"
            return is_bday_offer and profile is not None and profile.birth_month == month
        case "category_interest":
            assert o.category is not None
            return (
                not sensitive
                and _browsed_within(evs, o.category, 7 * DAY)
                and _browse_weight(evs, o.category) >= RULES.min_browse_weight
            )
        case "category_purchases":
            n = sum(1 for x in orders if o.category in x.categories)
            return not sensitive and n >= RULES.min_category_orders
        case "free_shipping_basket":
            return len(orders) >= RULES.min_orders and o.threshold > 0 and mean >= o.threshold
        case "frequent_orders":
            return len(orders) >= RULES.frequent_orders
        case "threshold_within_reach":
            return (
                len(orders) >= RULES.min_orders
                and o.threshold > 0
                and RULES.near_threshold_share * o.threshold <= mean < o.threshold
            )
        case "tier_benefit":
            return bool(o.eligibility.tiers) and tier in o.eligibility.tiers and tier != "regular"
        case "paid_membership":
            latest = _latest(evs, _PAID)
            active = isinstance(latest, _PAID[:2]) and (latest.expires_at is None or latest.expires_at > NOW)
            return o.eligibility.paid_only and active
        case "coupon_habit":
            with_coupon = sum(1 for x in orders if x.coupon_id is not None)
            claims = sum(1 for e in evs if isinstance(e, ev.CouponClaim))
            share_ok = (
                len(orders) >= RULES.min_orders and with_coupon / len(orders) >= RULES.coupon_order_share
            )
            return o.kind == "coupon" and (share_ok or claims >= RULES.min_coupon_claims)
        case "consult_history":
            return o.kind == "consult" and not sensitive and any(isinstance(e, ev.ConsultBooked) for e in evs)
        case "high_value":
            top = max(x.value for x in snap.offers)
            return o.value > 0 and o.value >= RULES.high_value_share * top
        case "limited_quantity":
            return o.inventory is not None and snap.claimed[i] >= RULES.limited_share * o.inventory
        case "popular":
            return (
                snap.impressions[i] >= RULES.popular_min_impressions
                and snap.claims[i] >= RULES.popular_min_claims
            )
        case "available":
            return True
    raise AssertionError(f"unknown reason code {code}")


@given(world=world_st())
def test_slates_are_eligible_deduplicated_and_diverse(
    world: tuple[CatalogSnapshot, list[Offer], Member, Context, str], model: LoadedModel
) -> None:
    snap, _, member, ctx, mode_name = world
    mode = Mode(mode_name)
    policy = Policy(max_per_category=2, min_kinds=2)
    out = rank(snap, member.state, ctx, NOW, 6, model=model, mode=mode, policy=policy)
    reason = evaluate(snap.elig, snap.table.index, member.state, ctx, NOW, snap.claimed, snap.cost_used)
    shown = [snap.offers[snap.table.index[it.offer_id]] for it in out.items]
    assert all(reason[snap.table.index[o.offer_id]] < 0 for o in shown), "an ineligible offer was shown"
    families = [o.family_key for o in shown]
    assert len(families) == len(set(families)), f"two offers of one family: {families}"
    unpinned_cats = [o.category for o in shown]
    for c in set(unpinned_cats):
        pinned_c = sum(1 for o in shown if o.category == c and o.pinned)
        assert unpinned_cats.count(c) <= max(policy.max_per_category, pinned_c), f"category {c} over its cap"
    # No offer of a family the member dismissed within the (default 72 h) cool-down.
    dismissed = {
        snap.offers[snap.table.index[e.offer_id]].family_key
        for e in member.events
        if isinstance(e, ev.Dismiss) and NOW - e.event_ts < 72 * 3600
    }
    assert not dismissed & set(families)


@given(world=world_st())
def test_every_reason_premise_holds(
    world: tuple[CatalogSnapshot, list[Offer], Member, Context, str], model: LoadedModel
) -> None:
    snap, _, member, ctx, mode_name = world
    mode = Mode(mode_name)
    policy = Policy(max_per_category=6, min_kinds=1, reasons=RULES.__class__(max_reasons=20))
    out = rank(snap, member.state, ctx, NOW, 8, model=model, mode=mode, policy=policy)
    for item in out.items:
        o = snap.offers[snap.table.index[item.offer_id]]
        codes = [r["code"] for r in item.reasons]
        assert codes and codes[-1] == "available"
        for r in item.reasons:
            assert r["code"] in REASON_CODES
            assert premise_holds(r["code"], o, snap, member, ctx, r["text"]), (r, o, member.events)
            for sensitive in RULES.sensitive_categories:
                assert sensitive not in r["text"].lower(), r
            if mode is Mode.NON_PERSONALISED:
                assert r["code"] not in MEMBER_CODES
