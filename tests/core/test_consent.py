"""Consent in the fold (features.consent, features.state): after an opt-out no behaviour field changes
while rules and obligations (caps, claims, redemptions, dismissals, tier, points) still count; an opt-in
resumes collection; and the bound on arrival order the docstrings state holds.

Pure (no I/O); hypothesis draws member histories and arrival orders.
"""

from __future__ import annotations

import math
import random
from typing import Any

import msgspec
from hypothesis import given
from hypothesis import strategies as st

from features import consent
from features import events as ev
from features.state import MemberState, apply, collect_from, copy_state, fold, forget_behaviour, new_state
from harness.arrival import consent_first
from tests.core.test_fold import assert_states_equal

T0 = 1_760_000_000.0

#: Behaviour fields (documented in features/state.py): dropped during an opt-out, cleared by one.
BEHAVIOUR = (
    "counts",
    "last_ts",
    "cat_interest",
    "cat_last_ts",
    "cat_orders",
    "spend",
    "items",
    "orders_total",
    "spend_total",
    "orders_with_coupon",
    "discount_total",
    "last_visit_ts",
    "visit_days",
    "events_total",
    "last_event_ts",
)
OFFER_BEHAVIOUR = ("shown", "clicks", "last_click_ts")
OFFER_FIELDS = (
    "shown",
    "last_shown_ts",
    "clicks",
    "claims",
    "redeems",
    "dismisses",
    "last_click_ts",
    "last_claim_ts",
    "last_dismiss_ts",
    "recent_shown_ts",
)

_CATS = ("baby", "beauty", "home")
_OFFERS = ("o1", "o2", "o3")
_KINDS = (
    "page_view",
    "search",
    "add_to_cart",
    "order",
    "impression",
    "click",
    "dismiss",
    "coupon_claim",
    "coupon_redeem",
    "benefit_use",
    "tier_changed",
    "points_changed",
    "profile_updated",
    "consent_on",
    "consent_off",
)
_BEHAVIOURAL_KINDS = ("page_view", "search", "add_to_cart", "order", "impression", "click")


def make(kind: str, i: int, ts: float, pick: int, member: str = "m") -> ev.Event:
    """One event of ``kind``; ``pick`` chooses its category, offer or value."""
    base: dict[str, Any] = {"type": kind, "event_id": f"e{i}", "member_id": member, "event_ts": ts}
    cat, offer = _CATS[pick % 3], _OFFERS[pick % 3]
    match kind:
        case "page_view":
            base.update(page_type="category", category=cat)
        case "search" | "add_to_cart":
            base.update(category=cat)
        case "order":
            base.update(amount=10.0 + pick, categories=[cat], coupon_id=offer, discount=1.0)
        case "impression" | "click" | "dismiss":
            base.update(request_id=f"r{i}", offer_id=offer)
        case "coupon_claim" | "coupon_redeem" | "benefit_use":
            base.update(offer_id=offer)
        case "tier_changed":
            base.update(tier=ev.TIERS[pick % 4])
        case "points_changed":
            base.update(points=100 * pick)
        case "profile_updated":
            base.update(region=f"r{pick % 3}")
        case "consent_on" | "consent_off":
            base.update(type="consent_changed", personalization=kind == "consent_on")
    return msgspec.convert(base, ev.Event)  # type: ignore[arg-type]


def _split(state: MemberState) -> tuple[dict[str, Any], dict[str, Any]]:
    """(behaviour, obligations) of a state as plain data; offers with no obligation left out of the
    second (an interaction only clicks made is behaviour)."""
    d = msgspec.to_builtins(state)
    full = MemberState.__struct_fields__
    data = {f: d.get(f, msgspec.to_builtins(getattr(new_state(""), f))) for f in full}
    behaviour = {f: data[f] for f in BEHAVIOUR}
    offers = {k: dict(zip(OFFER_FIELDS, v, strict=False)) for k, v in (data["offers"] or {}).items()}
    per_offer = {k: {f: v[f] for f in OFFER_BEHAVIOUR if f in v} for k, v in offers.items()}
    behaviour["offers"] = {k: b for k, b in per_offer.items() if any(b.values())}
    kept = {f: data[f] for f in full if f not in BEHAVIOUR and f != "offers"}
    kept["offers"] = {}
    for k, v in offers.items():
        ob = {f: v.get(f) for f in OFFER_FIELDS if f not in OFFER_BEHAVIOUR}
        if any(ob.values()):
            kept["offers"][k] = ob
    return behaviour, kept


def _close(a: Any, b: Any) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) or isinstance(b, float):
        return a is not None and b is not None and math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
    return bool(a == b)


# --- an opt-out, then behaviour -----------------------------------------------------------------------

_history = st.lists(st.tuples(st.sampled_from(_KINDS[:-2]), st.integers(0, 50)), max_size=25)
_after = st.lists(st.tuples(st.sampled_from(_KINDS[:-2]), st.integers(0, 50)), min_size=1, max_size=40)


@given(before=_history, after=_after)
def test_after_an_opt_out_no_behaviour_field_changes_and_obligations_still_count(
    before: list[tuple[str, int]], after: list[tuple[str, int]]
) -> None:
    t_off = T0 + 10_000
    history = [make(k, i, T0 + i * 10, p) for i, (k, p) in enumerate(before)]
    state = fold([*history, make("consent_off", 999, t_off, 0)], new_state("m"))
    assert not state.personalization_consent
    opted_out, _ = _split(state)
    assert opted_out == _split(new_state("m"))[0], "an opt-out clears the behaviour fields"
    later = [make(k, 1000 + i, t_off + 1 + i * 60, p) for i, (k, p) in enumerate(after)]
    for e in later:
        previous = copy_state(state)
        apply(state, e)
        assert _split(state)[0] == opted_out, f"{ev.event_type(e)} changed a behaviour field"
        kind = ev.event_type(e)
        if kind in _BEHAVIOURAL_KINDS[:3] or kind == "click":
            # The retry window and the applied-events count are all a browsing event may change.
            previous.applied, previous.events_folded = state.applied, state.events_folded
            assert_states_equal(state, previous)
    # Obligations count exactly as with consent on: the same events folded with consent never off.
    with_consent = fold([*history, *later], new_state("m"))
    by_offer = {o: with_consent.offers[o] for o in with_consent.offers}
    for offer_id, inter in state.offers.items():
        ref = by_offer[offer_id]
        assert (inter.claims, inter.redeems, inter.dismisses) == (ref.claims, ref.redeems, ref.dismisses)
        assert (inter.last_claim_ts, inter.last_dismiss_ts) == (ref.last_claim_ts, ref.last_dismiss_ts)
        assert inter.recent_shown_ts == ref.recent_shown_ts  # the frequency cap still counts
    claims = sum(1 for e in [*history, *later] if ev.event_type(e) == "coupon_claim")
    assert state.coupon_claims_total == with_consent.coupon_claims_total == claims
    for name in ("tier", "points", "region", "growth_weeks"):
        assert getattr(state, name) == getattr(with_consent, name), name
    assert state.first_seen_ts == min(e.event_ts for e in [*history, *later]) if history else t_off


def test_claims_and_dismissals_during_an_opt_out_still_refuse_by_the_rules() -> None:
    s = fold([make("consent_off", 0, T0, 0), make("coupon_claim", 1, T0 + 5, 0)], new_state("m"))
    apply(s, make("dismiss", 2, T0 + 6, 1))
    apply(s, make("impression", 3, T0 + 7, 2))
    apply(s, make("click", 4, T0 + 8, 2))
    assert s.offers["o1"].claims == 1 and s.offers["o1"].last_claim_ts == T0 + 5
    assert s.offers["o2"].dismisses == 1 and s.offers["o2"].last_dismiss_ts == T0 + 6
    assert s.offers["o3"].recent_shown_ts == [T0 + 7] and s.offers["o3"].shown == 0
    assert s.offers["o3"].clicks == 0 and s.offers["o3"].last_click_ts == 0.0
    assert s.counts == {} and s.events_total == 0 and s.last_visit_ts == 0.0


def test_opt_in_resumes_collection_from_its_time() -> None:
    events = [
        make("page_view", 0, T0, 0),  # before the opt-out: forgotten by it
        make("consent_off", 1, T0 + 10, 0),
        make("page_view", 2, T0 + 20, 1),  # during the opt-out: never kept
        make("consent_on", 3, T0 + 30, 0),
        make("page_view", 4, T0 + 40, 2),  # after the opt-in: kept
    ]
    s = fold(events)
    assert s.personalization_consent and collect_from(s) == T0 + 30
    assert set(s.cat_interest) == {"home"} and s.counts["page_view"].ref_ts == T0 + 40
    assert s.events_total == 2 and s.last_event_ts == T0 + 40  # the opt-in itself and the page view


def test_a_late_opt_out_removes_what_was_folded_after_it() -> None:
    browsing = [make("page_view", i, T0 + i * 60, i) for i in range(6)]
    claim = make("coupon_claim", 50, T0 + 200, 0)
    off = make("consent_off", 99, T0 + 150, 0)
    in_order = fold(sorted([*browsing, claim, off], key=lambda e: e.event_ts))
    late = fold([*browsing, claim, off])  # the opt-out arrives after everything it governs
    assert_states_equal(late, in_order)
    assert late.cat_interest == {} and late.offers["o1"].claims == 1


def test_a_state_from_before_the_consent_log_keeps_its_opt_out() -> None:
    legacy = new_state("m")
    legacy.personalization_consent = False
    legacy.consent_set.ts, legacy.consent_set.event_id = T0, "old"
    apply(legacy, make("page_view", 1, T0 + 5, 0))
    assert legacy.cat_interest == {}
    apply(legacy, make("consent_on", 2, T0 + 10, 0))
    apply(legacy, make("page_view", 3, T0 + 20, 1))
    apply(legacy, make("page_view", 4, T0 + 8, 2))  # late, timed inside the old opt-out
    assert set(legacy.cat_interest) == {"beauty"}


def test_forget_behaviour_clears_exactly_the_documented_fields() -> None:
    events = [make(k, i, T0 + i * 30, i) for i, k in enumerate(_KINDS[:-2] * 3)]
    s = fold(events)
    kept_before = _split(s)[1]
    forget_behaviour(s)
    behaviour, kept = _split(s)
    assert behaviour == _split(new_state("m"))[0]
    assert kept == kept_before


# --- arrival order ------------------------------------------------------------------------------------

_stream = st.lists(
    st.tuples(st.sampled_from(_KINDS), st.integers(0, 50), st.integers(0, 100_000)),
    min_size=1,
    max_size=60,
    unique_by=lambda t: t[2],  # distinct event times: "in order" is then one order
)


@given(stream=_stream, seed=st.integers(0, 10**6))
def test_any_arrival_order_keeps_obligations_exact_and_never_keeps_behaviour_it_should_not(
    stream: list[tuple[str, int, int]], seed: int
) -> None:
    events = [make(k, i, T0 + t, p) for i, (k, p, t) in enumerate(stream)]
    in_order = fold(sorted(events, key=lambda e: e.event_ts), new_state("m"))
    arrival = list(events)
    random.Random(seed).shuffle(arrival)
    mixed = fold(arrival, new_state("m"))
    b_ref, o_ref = _split(in_order)
    b_mix, o_mix = _split(mixed)
    assert _close(o_mix, o_ref), "obligations and consent do not depend on arrival order"
    start = collect_from(in_order)
    assert collect_from(mixed) == start
    # Never gained: no behaviour from before the start, and no count above the in-order one.
    stamps = [*b_mix["last_ts"].values(), *b_mix["cat_last_ts"].values(), b_mix["last_visit_ts"]]
    stamps += [o["last_click_ts"] for o in b_mix["offers"].values()]
    assert all(t == 0.0 or t >= start for t in stamps)
    assert all(d * 86400 >= start - 86400 for d in b_mix["visit_days"])
    assert b_mix["events_total"] <= b_ref["events_total"]
    assert set(b_mix["cat_interest"]) <= set(b_ref["cat_interest"])
    for kind, c in mixed.counts.items():
        ref = in_order.counts[kind]
        now = max(c.ref_ts, ref.ref_ts)
        assert all(x <= y * (1 + 1e-9) + 1e-9 for x, y in zip(c.at(now), ref.at(now), strict=True))
    changes = [e for e in events if isinstance(e, ev.ConsentChanged)]
    never_out = all(c.personalization for c in changes)
    if never_out or not max(changes, key=lambda e: (e.event_ts, e.event_id)).personalization:
        # Never opted out, or opted out last: exactly the in-order state, whatever the order.
        assert_states_equal(mixed, in_order)
    # Consent changes before the member's later events: exactly the in-order state.
    assert_states_equal(fold(consent_first(arrival), new_state("m")), in_order)


def test_off_periods_follow_the_latest_change_at_each_time() -> None:
    changes = [(30.0, "c", True), (10.0, "a", False), (20.0, "b", False), (50.0, "d", False)]
    periods = consent.off_periods(changes)
    assert periods == [(10.0, 30.0), (50.0, consent.NEVER)]
    assert [consent.in_periods(t, periods) for t in (5, 10, 29.9, 30, 49, 50, 1e12)] == [
        False,
        True,
        True,
        False,
        False,
        True,
        True,
    ]
    assert consent.off_periods([(10.0, "a", True)]) == []
    # Same time: the greater event id wins, as in the fold.
    assert consent.off_periods([(10.0, "a", False), (10.0, "b", True)]) == []
