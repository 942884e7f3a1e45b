"""Lifecycle facts in the fold and read off it (features.lifecycle), and the eligibility rules on them."""

from __future__ import annotations

import random

import numpy as np
import pytest
from pydantic import ValidationError

from features import events as ev
from features import lifecycle as lc
from features.decay import DAY
from features.eligibility import RULES, EligibilityTable, evaluate
from features.offers import Eligibility, Offer
from features.projection import Context
from features.state import GROWTH_BUCKETS_KEPT, VISIT_DAYS_KEPT, MemberState, fold
from tests.core.test_fold import assert_states_equal

T0 = 1_760_000_000.0  # 2025-10-09
_n = 0


def _e(kind: type[ev._Event], ts: float, **kw: object) -> ev.Event:
    global _n
    _n += 1
    return kind(event_id=f"x{_n}", member_id="m1", event_ts=ts, **kw)  # type: ignore[return-value]


def _view(ts: float) -> ev.Event:
    return _e(ev.PageView, ts, page_type="home")


def _order(ts: float, amount: float) -> ev.Event:
    return _e(ev.Order, ts, amount=amount)


def _joined(ts: float) -> ev.Event:
    return _e(ev.ProfileUpdated, ts, joined_ts=ts)


# --- stage --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("visit_days_ago", "joined_days_ago", "expected"),
    [
        ([1], 5, "new"),
        ([1, 3, 10], 200, "active"),
        ([15], 200, "lapsing"),
        ([40], 200, "silent"),
        ([], 200, "silent"),
        ([2, 60], 200, "returning"),  # came back 2 days ago after 58 days away
        ([20, 60], 200, "lapsing"),  # came back, then went quiet again
        ([16, 60], 200, "lapsing"),
        ([5, 8, 60], 200, "returning"),
        ([5, 8, 30], 200, "active"),  # a 22-day gap is no silence (30 days)
    ],
)
def test_stage(visit_days_ago: list[int], joined_days_ago: int, expected: str) -> None:
    now = T0 + 400 * DAY
    events = [_joined(now - joined_days_ago * DAY)] + [_view(now - d * DAY) for d in visit_days_ago]
    state = fold(events)
    assert lc.stage(state, now) == expected


def test_stage_thresholds_come_from_configuration() -> None:
    now = T0 + 400 * DAY
    state = fold([_joined(now - 300 * DAY), _view(now - 10 * DAY)])
    assert lc.stage(state, now) == "active"
    assert lc.stage(state, now, lc.LifecycleConfig(lapsing_days=7, silent_days=9)) == "silent"
    with pytest.raises(ValidationError):
        lc.LifecycleConfig(lapsing_days=30, silent_days=20)
    with pytest.raises(ValidationError):
        lc.TierRules(thresholds={"silver": 500, "gold": 400})


def test_impressions_are_not_visits_but_orders_are() -> None:
    now = T0 + 100 * DAY
    state = fold([_e(ev.Impression, now - DAY, request_id="r", offer_id="o")])
    assert state.last_visit_ts == 0.0 and lc.days_since_visit(state, now) == lc.NEVER_DAYS
    state = fold([_order(now - 3 * DAY, 10.0)])
    assert lc.days_since_visit(state, now) == pytest.approx(3.0)
    assert lc.days_since_order(state, now) == pytest.approx(3.0)


# --- paid membership ------------------------------------------------------------------------------------


def test_paid_membership_expiry_renewal_and_lapse() -> None:
    start = _e(ev.PaidMembershipStarted, T0, plan="PLUS", expires_at=T0 + 30 * DAY)
    state = fold([start])
    assert lc.paid_active(state, T0 + DAY) and state.paid_plan == "PLUS"
    assert lc.paid_days_left(state, T0 + 25 * DAY) == pytest.approx(5.0)
    assert not lc.paid_active(state, T0 + 31 * DAY)  # expired by time, no end event needed
    assert lc.paid_days_since_lapse(state, T0 + 31 * DAY) == pytest.approx(1.0)
    renew = _e(ev.PaidMembershipRenewed, T0 + 29 * DAY, expires_at=T0 + 395 * DAY)
    for events in ([start, renew], [renew, start]):
        state = fold(list(events))
        assert state.paid_renewals == 1 and state.paid_since_ts == T0 and state.paid_plan == "PLUS"
        assert lc.paid_days_left(state, T0 + 95 * DAY) == pytest.approx(300.0)
    end = _e(ev.PaidMembershipEnded, T0 + 40 * DAY)
    state = fold([end, start])
    assert not lc.paid_active(state, T0 + 41 * DAY)
    assert lc.paid_days_since_lapse(state, T0 + 43 * DAY) == pytest.approx(3.0)
    assert lc.paid_days_left(state, T0 + 41 * DAY) is None


def test_old_paid_membership_events_still_decode() -> None:
    raw = b'{"type":"paid_membership_started","event_id":"e","member_id":"m","event_ts":1760000000}'
    e = ev.decode(raw)
    assert isinstance(e, ev.PaidMembershipStarted) and e.expires_at is None
    assert lc.paid_active(fold([e]), 1_900_000_000.0)  # open-ended
    with pytest.raises(ev.InvalidEvent):  # a renewal without its new expiry is refused
        ev.decode(b'{"type":"paid_membership_renewed","event_id":"e","member_id":"m","event_ts":1760000000}')


# --- growth value and tiers -----------------------------------------------------------------------------


def test_growth_value_over_a_rolling_window_and_the_tier_it_implies() -> None:
    now = T0 + 500 * DAY
    state = fold([_order(now - 400 * DAY, 5000.0), _order(now - 10 * DAY, 1900.0), _order(now - DAY, 1000.0)])
    assert lc.growth_value(state, now) == pytest.approx(2900.0)  # the 400-day-old order is outside
    assert lc.implied_tier(2900.0) == "silver"
    p = lc.tier_progress(state, now)
    assert (p.tier, p.next_tier, p.gap) == ("silver", "gold", pytest.approx(100.0))
    # the declared tier counts when it is higher than the growth value implies
    state = fold([_order(now - DAY, 10.0), _e(ev.TierChanged, now - DAY, tier="gold")])
    p = lc.tier_progress(state, now)
    assert (p.tier, p.next_tier, p.gap) == ("gold", "diamond", pytest.approx(7990.0))
    state = fold([_order(now - DAY, 9000.0)])
    assert lc.tier_progress(state, now).gap is None  # top tier: no next tier
    doubled = lc.TierRules(growth_per_currency=2.0)
    assert lc.growth_value(state, now, doubled) == pytest.approx(18000.0)


# --- points ---------------------------------------------------------------------------------------------


def test_points_expiring_within_days_and_this_month() -> None:
    now = 1_761_955_200.0 - 10 * DAY  # 2025-10-22, ten days before November
    lots = [
        ev.PointsLot(points=300, expires_at=now + 5 * DAY),
        ev.PointsLot(points=200, expires_at=now + 20 * DAY),
        ev.PointsLot(points=50, expires_at=now - DAY),
    ]
    state = fold([_e(ev.PointsChanged, now - DAY, points=900, expiring=lots)])
    assert lc.points_expiring_within(state, now, 7) == 300
    assert lc.points_expiring_within(state, now, 30) == 500
    assert lc.points_expiring(state, now, lc.month_end_ts(now)) == 300
    newer = _e(ev.PointsChanged, now, points=100)  # a newer snapshot without lots replaces them
    assert (
        lc.points_expiring_within(
            fold([newer, _e(ev.PointsChanged, now - DAY, points=1, expiring=lots)]), now, 30
        )
        == 0
    )


# --- order independence past the bounds ------------------------------------------------------------------


def test_lifecycle_fields_are_order_independent_past_their_bounds() -> None:
    rng = random.Random(7)
    events: list[ev.Event] = []
    for _ in range(400):
        ts = T0 + rng.uniform(0, 600 * DAY)  # far more visit days and weeks than are kept
        r = rng.random()
        if r < 0.5:
            events.append(_view(ts))
        elif r < 0.8:
            events.append(_order(ts, rng.uniform(1, 400)))
        elif r < 0.9:
            kind = rng.choice([ev.PaidMembershipStarted, ev.PaidMembershipRenewed])
            events.append(_e(kind, ts, expires_at=ts + 30 * DAY, plan=rng.choice(["PLUS", "Prime"])))
        else:
            events.append(_e(ev.PaidMembershipEnded, ts))
    ordered = fold(sorted(events, key=lambda e: e.event_ts))
    assert len(ordered.visit_days) == VISIT_DAYS_KEPT and len(ordered.growth_weeks) == GROWTH_BUCKETS_KEPT
    for seed in range(3):
        shuffled = list(events)
        random.Random(seed).shuffle(shuffled)
        assert_states_equal(fold(shuffled), ordered)


# --- eligibility -----------------------------------------------------------------------------------------


def _offer(**elig: object) -> Offer:
    return Offer(
        offer_id="o1", kind="coupon", subtype="no_threshold", title="t", eligibility=Eligibility(**elig)
    )  # type: ignore[arg-type]


def _why(offer: Offer, state: MemberState, now: float) -> str | None:
    table = EligibilityTable([offer])
    r = int(evaluate(table, {"o1": 0}, state, Context(), now)[0])
    return None if r < 0 else RULES[r]


NOW = T0 + 400 * DAY


def _member(*events: ev.Event) -> MemberState:
    return fold([_joined(NOW - 300 * DAY), *events])


@pytest.mark.parametrize(
    ("elig", "events", "expected"),
    [
        ({"lifecycle_stages": ["silent"]}, [_view(NOW - 40 * DAY)], None),
        ({"lifecycle_stages": ["silent"]}, [_view(NOW - 2 * DAY)], "lifecycle_stage"),
        ({"lifecycle_stages": ["returning"]}, [_view(NOW - DAY), _view(NOW - 50 * DAY)], None),
        ({"min_days_since_order": 30}, [_order(NOW - 45 * DAY, 10)], None),
        ({"min_days_since_order": 30}, [_order(NOW - 5 * DAY, 10)], "days_since_order"),
        ({"max_days_since_order": 30}, [], "days_since_order"),  # never ordered = 365 days
        ({"min_days_since_visit": 10, "max_days_since_visit": 20}, [_view(NOW - 15 * DAY)], None),
        (
            {"min_days_since_visit": 10, "max_days_since_visit": 20},
            [_view(NOW - 25 * DAY)],
            "days_since_visit",
        ),
        (
            {"paid_expiring_within_days": 7},
            [_e(ev.PaidMembershipStarted, NOW - 300 * DAY, expires_at=NOW + 5 * DAY)],
            None,
        ),
        (
            {"paid_expiring_within_days": 7},
            [_e(ev.PaidMembershipStarted, NOW - 300 * DAY, expires_at=NOW + 50 * DAY)],
            "paid_renewal_window",
        ),
        ({"paid_expiring_within_days": 7}, [], "paid_renewal_window"),
        (
            {"paid_lapsed_within_days": 30},
            [_e(ev.PaidMembershipStarted, NOW - 300 * DAY, expires_at=NOW - 10 * DAY)],
            None,
        ),
        (
            {"paid_lapsed_within_days": 30, "paid_expiring_within_days": 7},
            [_e(ev.PaidMembershipStarted, NOW - 300 * DAY), _e(ev.PaidMembershipEnded, NOW - 40 * DAY)],
            "paid_renewal_window",
        ),
        ({"max_tier_gap": 200}, [_order(NOW - DAY, 2900)], None),
        ({"max_tier_gap": 200}, [_order(NOW - DAY, 2000)], "tier_gap"),
        ({"min_tier_gap": 50, "max_tier_gap": 200}, [_order(NOW - DAY, 2990)], "tier_gap"),
        ({"max_tier_gap": 200}, [_order(NOW - DAY, 9000)], "tier_gap"),  # top tier
        (
            {"points_expiring_within_days": 30, "min_points_expiring": 100},
            [
                _e(
                    ev.PointsChanged,
                    NOW - DAY,
                    points=500,
                    expiring=[ev.PointsLot(points=300, expires_at=NOW + 9 * DAY)],
                )
            ],
            None,
        ),
        (
            {"points_expiring_within_days": 5, "min_points_expiring": 100},
            [
                _e(
                    ev.PointsChanged,
                    NOW - DAY,
                    points=500,
                    expiring=[ev.PointsLot(points=300, expires_at=NOW + 9 * DAY)],
                )
            ],
            "points_expiring",
        ),
    ],
)
def test_lifecycle_rules(elig: dict[str, object], events: list[ev.Event], expected: str | None) -> None:
    assert _why(_offer(**elig), _member(*events), NOW) == expected


def test_paid_only_respects_the_expiry() -> None:
    state = _member(_e(ev.PaidMembershipStarted, NOW - 300 * DAY, expires_at=NOW - DAY))
    assert _why(_offer(paid_only=True), state, NOW) == "paid_only"
    assert _why(_offer(paid_only=True), state, NOW - 2 * DAY) is None


def test_eligibility_ranges_are_validated() -> None:
    with pytest.raises(ValidationError, match="max_days_since_order"):
        Eligibility(min_days_since_order=30, max_days_since_order=10)
    with pytest.raises(ValidationError):
        Eligibility(lifecycle_stages=["asleep"])  # type: ignore[list-item]
    assert not Eligibility().uses_lifecycle and Eligibility(max_tier_gap=5).uses_lifecycle


def test_offers_without_lifecycle_rules_pay_nothing() -> None:
    table = EligibilityTable([_offer(), _offer(tiers=["gold"])])
    assert not table.any_lifecycle
    r = evaluate(table, {"o1": 0}, MemberState(), Context(), NOW)
    assert np.array_equal(r, [-1, RULES.index("tier")])
