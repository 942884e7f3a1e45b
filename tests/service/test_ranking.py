"""The ranking pipeline in process (no HTTP, no Redis): eligibility rule by rule, slate rules, reasons."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest

from features import events as ev
from features.eligibility import RULES
from features.offer_stats import OfferCounters
from features.offers import Caps, Eligibility, Offer
from features.projection import Context
from features.state import MemberState, OfferInteraction, apply, new_state
from infra.registry import Registry
from service.catalog import build_snapshot
from service.model import LoadedModel, ModelHolder
from service.objective import Objective
from service.ranking import EXCLUSION_SENTENCES, Mode, Policy, rank

NOW = datetime(2026, 6, 15, 12, 0, tzinfo=UTC).timestamp()
DAY = 86400.0


def offer(offer_id: str, **kw: Any) -> Offer:
    """A test offer; each its own family unless ``family`` is given (None: the derived default)."""
    base: dict[str, Any] = {
        "kind": "coupon",
        "subtype": "no_threshold",
        "title": offer_id,
        "value": 5.0,
        "cost": 3.0,
        "family": offer_id,
    }
    base.update(kw)
    return Offer(offer_id=offer_id, **base)


@pytest.fixture
def model(registry: Registry) -> LoadedModel:
    m = ModelHolder(registry).check("v1")
    return m


def state_with(**kw: Any) -> MemberState:
    s = new_state("m1")
    for k, v in kw.items():
        setattr(s, k, v)
    return s


# (rule, the target offer, member state, context, reserved units, spent budget)
RULE_CASES: list[tuple[str, Offer, MemberState, Context, dict[str, int], dict[str, float]]] = [
    ("inactive", offer("t", active=False), state_with(), Context(), {}, {}),
    (
        "not_started",
        offer("t", eligibility=Eligibility(valid_from_ts=NOW + DAY)),
        state_with(),
        Context(),
        {},
        {},
    ),
    ("expired", offer("t", eligibility=Eligibility(valid_to_ts=NOW - 1)), state_with(), Context(), {}, {}),
    (
        "tier",
        offer("t", eligibility=Eligibility(tiers=["gold"])),
        state_with(tier="silver"),
        Context(),
        {},
        {},
    ),
    ("paid_only", offer("t", eligibility=Eligibility(paid_only=True)), state_with(), Context(), {}, {}),
    (
        "region",
        offer("t", eligibility=Eligibility(regions=["north"])),
        state_with(region="south"),
        Context(),
        {},
        {},
    ),
    (
        "channel",
        offer("t", eligibility=Eligibility(channels=["web"])),
        state_with(),
        Context(channel="app"),
        {},
        {},
    ),
    (
        "page_type",
        offer("t", eligibility=Eligibility(page_types=["cart"])),
        state_with(),
        Context(page_type="home"),
        {},
        {},
    ),
    (
        "birthday_month",
        offer("t", eligibility=Eligibility(birthday_month_only=True)),
        state_with(birth_month=1),
        Context(),
        {},
        {},
    ),
    (
        "tenure",
        offer("t", eligibility=Eligibility(min_tenure_days=30)),
        state_with(joined_ts=NOW - 5 * DAY),
        Context(),
        {},
        {},
    ),
    ("sold_out", offer("t", inventory=10), state_with(), Context(), {"t": 10}, {}),
    ("budget_exhausted", offer("t", budget=30.0, cost=3.0), state_with(), Context(), {}, {"t": 30.0}),
    (
        "claimed",
        offer("t"),
        state_with(offers={"t": OfferInteraction(claims=1, last_claim_ts=NOW - DAY)}),
        Context(),
        {},
        {},
    ),
    (
        "dismissed",
        offer("t", caps=Caps(max_claims_per_member=5)),
        state_with(offers={"t": OfferInteraction(dismisses=1, last_dismiss_ts=NOW - 3600)}),
        Context(),
        {},
        {},
    ),
    # Lifecycle rules (issue 19): the state fields the fold keeps, read at NOW by features.lifecycle.
    (
        "lifecycle_stage",
        offer("t", eligibility=Eligibility(lifecycle_stages=["returning"])),
        state_with(),
        Context(),
        {},
        {},
    ),
    (
        "days_since_order",
        offer("t", eligibility=Eligibility(min_days_since_order=30)),
        state_with(last_ts={"order": NOW - DAY}),
        Context(),
        {},
        {},
    ),
    (
        "days_since_visit",
        offer("t", eligibility=Eligibility(max_days_since_visit=3)),
        state_with(last_visit_ts=NOW - 10 * DAY),
        Context(),
        {},
        {},
    ),
    (
        "paid_renewal_window",
        offer("t", eligibility=Eligibility(paid_expiring_within_days=7)),
        state_with(paid_member=True, paid_expires_ts=NOW + 60 * DAY),
        Context(),
        {},
        {},
    ),
    ("tier_gap", offer("t", eligibility=Eligibility(max_tier_gap=200)), state_with(), Context(), {}, {}),
    (
        "points_expiring",
        offer("t", eligibility=Eligibility(points_expiring_within_days=30)),
        state_with(points_expiring=[(NOW + 40 * DAY, 500)]),
        Context(),
        {},
        {},
    ),
    (
        "fatigue",
        offer("t", caps=Caps(max_impressions_without_action=3)),
        state_with(offers={"t": OfferInteraction(shown=3, recent_shown_ts=[NOW - 30, NOW - 20, NOW - 10])}),
        Context(),
        {},
        {},
    ),
]


def test_every_rule_has_a_case() -> None:
    assert sorted(c[0] for c in RULE_CASES) == sorted(RULES)


@pytest.mark.parametrize("case", RULE_CASES, ids=[c[0] for c in RULE_CASES])
def test_eligibility_rule_excludes_with_its_reason(
    case: tuple[str, Offer, MemberState, Context, dict[str, int], dict[str, float]], model: LoadedModel
) -> None:
    rule, target, state, ctx, reserved, spent = case
    control = offer("control")
    stats = {oid: OfferCounters(cost_used=v) for oid, v in spent.items()}
    snap = build_snapshot(1, [target, control], NOW, stats=stats, reserved=reserved)
    out = rank(snap, state, ctx, NOW, 5, model=model, mode=Mode.PERSONALISED, policy=Policy(), explain=True)
    assert [o.offer_id for o in out.items] == ["control"]
    assert out.excluded == [{"offer_id": "t", "reason": rule, "text": EXCLUSION_SENTENCES[rule]}]


def test_lifecycle_offers_shown_when_the_member_qualifies(model: LoadedModel) -> None:
    week = int(NOW // (7 * DAY))
    offers = [
        offer("stage", eligibility=Eligibility(lifecycle_stages=["active"])),
        offer("order", eligibility=Eligibility(min_days_since_order=30)),
        offer("visit", eligibility=Eligibility(max_days_since_visit=3)),
        offer("renew", eligibility=Eligibility(paid_expiring_within_days=7)),
        offer("gap", eligibility=Eligibility(max_tier_gap=200)),
        offer("points", eligibility=Eligibility(points_expiring_within_days=30)),
    ]
    state = state_with(
        joined_ts=NOW - 300 * DAY, last_ts={"order": NOW - 40 * DAY}, last_visit_ts=NOW - DAY,
        visit_days=[int((NOW - DAY) // DAY)], paid_member=True, paid_expires_ts=NOW + 5 * DAY,
        growth_weeks={week: 2900.0}, points_expiring=[(NOW + 9 * DAY, 300)],
    )  # fmt: skip
    snap = build_snapshot(1, offers, NOW)
    policy = Policy(max_per_category=10, min_kinds=1)
    out = rank(
        snap, state, Context(), NOW, 10, model=model, mode=Mode.PERSONALISED, policy=policy, explain=True
    )
    assert not out.excluded and {o.offer_id for o in out.items} == {o.offer_id for o in offers}
    reasons = {o.offer_id: {r["code"] for r in o.reasons} for o in out.items}
    assert "paid_expiring" in reasons["renew"] and "tier_progress" in reasons["gap"]
    assert "points_expiring" in reasons["points"]


def _paid(*events: tuple[type[ev._Event], float, dict[str, Any]]) -> MemberState:
    s = state_with(joined_ts=NOW - 400 * DAY)
    for n, (kind, ts, kw) in enumerate(events):
        apply(s, kind(event_id=f"p{n}", member_id="m1", event_ts=ts, **kw))  # type: ignore[arg-type]
    return s


@pytest.mark.parametrize(
    ("state", "shown"),
    [
        # expired unrenewed 5 days ago (no end event: the expiry is the lapse)
        (
            _paid((ev.PaidMembershipStarted, NOW - 370 * DAY, {"plan": "PLUS", "expires_at": NOW - 5 * DAY})),
            True,
        ),
        # ended 3 days ago by an end event
        (
            _paid(
                (ev.PaidMembershipStarted, NOW - 90 * DAY, {"plan": "PLUS"}),
                (ev.PaidMembershipEnded, NOW - 3 * DAY, {}),
            ),
            True,
        ),
        # exactly at the window's edge: lapsed 14 days ago
        (_paid((ev.PaidMembershipStarted, NOW - 380 * DAY, {"expires_at": NOW - 14 * DAY})), True),
        # lapsed too long ago
        (_paid((ev.PaidMembershipStarted, NOW - 400 * DAY, {"expires_at": NOW - 30 * DAY})), False),
        # still a paid member (ends in 3 days: an expiring member, not a lapsed one)
        (_paid((ev.PaidMembershipStarted, NOW - 360 * DAY, {"expires_at": NOW + 3 * DAY})), False),
        # renewed after the lapse: a paid member again
        (
            _paid(
                (ev.PaidMembershipStarted, NOW - 370 * DAY, {"expires_at": NOW - 5 * DAY}),
                (ev.PaidMembershipRenewed, NOW - DAY, {"expires_at": NOW + 364 * DAY}),
            ),
            False,
        ),
        # never a paid member
        (state_with(joined_ts=NOW - 400 * DAY), False),
    ],
    ids=["expired", "ended", "edge", "too-long-ago", "active", "renewed", "never"],
)
def test_paid_lapsed_within_days(state: MemberState, shown: bool, model: LoadedModel) -> None:
    """A win-back offer for paid memberships that lapsed within the last 14 days: shown with the
    ``paid_lapsed`` reason to those members only, refused with ``paid_renewal_window`` otherwise."""
    target = offer("winback", eligibility=Eligibility(paid_lapsed_within_days=14))
    snap = build_snapshot(1, [target, offer("control")], NOW)
    out = rank(
        snap, state, Context(), NOW, 5, model=model, mode=Mode.PERSONALISED, policy=Policy(), explain=True
    )
    items = {o.offer_id: o for o in out.items}
    if shown:
        assert "winback" in items and not out.excluded
        reasons = {r["code"]: r["text"] for r in items["winback"].reasons}
        plan = state.paid_plan or "paid"
        assert reasons["paid_lapsed"] == f"Your {plan} membership has ended: renew it here."
    else:
        assert "winback" not in items
        assert out.excluded == [
            {
                "offer_id": "winback",
                "reason": "paid_renewal_window",
                "text": EXCLUSION_SENTENCES["paid_renewal_window"],
            }
        ]


def test_eligible_when_the_condition_holds(model: LoadedModel) -> None:
    """The positive side of a few rules: the same offers are shown when the member qualifies."""
    month = datetime.fromtimestamp(NOW, UTC).month
    offers = [
        offer("gold", eligibility=Eligibility(tiers=["gold"])),
        offer("paid", eligibility=Eligibility(paid_only=True)),
        offer("bday", eligibility=Eligibility(birthday_month_only=True)),
        offer("north", eligibility=Eligibility(regions=["north"])),
    ]
    state = state_with(tier="gold", paid_member=True, birth_month=month, region="north")
    snap = build_snapshot(1, offers, NOW)
    out = rank(
        snap, state, Context(), NOW, 10, model=model, mode=Mode.PERSONALISED,
        policy=Policy(max_per_category=10), explain=True,
    )  # fmt: skip
    assert {o.offer_id for o in out.items} == {"gold", "paid", "bday", "north"}
    assert out.excluded == []


def _catalog() -> list[Offer]:
    offers = [offer(f"baby-{i}", category="baby", value=50.0 - i) for i in range(6)]
    offers += [offer(f"home-{i}", category="home", value=40.0 - i) for i in range(3)]
    offers += [offer("benefit-1", kind="benefit", subtype="priority_delivery", value=1.0)]
    offers += [offer("consult-1", kind="consult", subtype="stylist", category="fashion", value=1.0)]
    return offers


def test_slate_caps_each_category_and_mixes_kinds() -> None:
    snap = build_snapshot(1, _catalog(), NOW)
    policy = Policy(max_per_category=2, min_kinds=3, objective=Objective(value_weight=5.0))
    out = rank(snap, state_with(), Context(), NOW, 5, model=None, mode=Mode.NON_PERSONALISED, policy=policy)
    cats = [o.category for o in out.items if o.category is not None]
    assert max(cats.count(c) for c in set(cats)) <= 2
    assert {o.kind for o in out.items} == {"coupon", "benefit", "consult"}
    # Without the mix rule the highest-value coupons would fill the slate.
    loose = rank(
        snap, state_with(), Context(), NOW, 5, model=None, mode=Mode.NON_PERSONALISED,
        policy=Policy(max_per_category=10, min_kinds=1, objective=Objective(value_weight=5.0)),
    )  # fmt: skip
    assert {o.kind for o in loose.items} == {"coupon"}


def test_pinned_offer_comes_first() -> None:
    offers = [*_catalog(), offer("hero", value=0.5, pinned=True)]
    snap = build_snapshot(1, offers, NOW)
    out = rank(snap, state_with(), Context(), NOW, 3, model=None, mode=Mode.NON_PERSONALISED, policy=Policy())
    assert out.items[0].offer_id == "hero"
    assert out.items[0].reasons[0]["code"] == "featured"
    assert [o.position for o in out.items] == [0, 1, 2]


def test_budget_pacing_damps_an_offer_spending_ahead_of_schedule() -> None:
    start, end = NOW - 1 * DAY, NOW + 9 * DAY  # 10% of the campaign elapsed
    a = offer("a", value=10.0, budget=1000.0, cost=1.0, campaign_start_ts=start, campaign_end_ts=end)
    b = offer("b", value=10.0, budget=1000.0, cost=1.0, campaign_start_ts=start, campaign_end_ts=end)
    snap = build_snapshot(1, [a, b], NOW, stats={"a": OfferCounters(cost_used=800.0)})
    assert snap.budget_left[snap.table.index["a"]] == pytest.approx(0.2)
    out = rank(snap, state_with(), Context(), NOW, 2, model=None, mode=Mode.NON_PERSONALISED, policy=Policy())
    assert [o.offer_id for o in out.items] == ["b", "a"]
    assert out.items[1].score < 0.5 * out.items[0].score


def test_exploration_logs_propensities() -> None:
    snap = build_snapshot(1, _catalog(), NOW)
    rng = np.random.default_rng(0)
    out = rank(
        snap, state_with(), Context(), NOW, 4, model=None, mode=Mode.NON_PERSONALISED,
        policy=Policy(epsilon=0.5), rng=rng,
    )  # fmt: skip
    assert all(0.0 < o.propensity <= 1.0 for o in out.items)
    assert any(o.propensity < 1.0 for o in out.items)
    greedy = rank(
        snap, state_with(), Context(), NOW, 4, model=None, mode=Mode.NON_PERSONALISED, policy=Policy()
    )
    assert all(o.propensity == 1.0 for o in greedy.items)


def _browsed(category: str, n: int = 6) -> MemberState:
    s = new_state("m1")
    for i in range(n):
        apply(
            s,
            ev.PageView(
                event_id=f"v{i}",
                member_id="m1",
                event_ts=NOW - 600 - i,
                page_type="category",
                category=category,
            ),
        )
    return s


def test_reasons_quote_what_drove_the_item(model: LoadedModel) -> None:
    month = datetime.fromtimestamp(NOW, UTC).month
    offers = [
        offer("pets-coupon", category="pets"),
        offer(
            "gift", kind="benefit", subtype="birthday_gift", eligibility=Eligibility(birthday_month_only=True)
        ),
        offer("ship", kind="benefit", subtype="free_shipping", threshold=59.0),
        offer(
            "gold-perk", kind="benefit", subtype="priority_delivery", eligibility=Eligibility(tiers=["gold"])
        ),
    ]
    state = _browsed("pets")
    state.birth_month, state.tier = month, "gold"
    for i in range(3):  # "your average basket" needs a few orders (reason_min_orders)
        apply(
            state,
            ev.Order(
                event_id=f"o{i}", member_id="m1", event_ts=NOW - DAY - i, amount=120.0, categories=["home"]
            ),
        )
    snap = build_snapshot(1, offers, NOW)
    out = rank(
        snap, state, Context(), NOW, 4, model=model, mode=Mode.PERSONALISED,
        policy=Policy(min_kinds=1, max_per_category=4),
    )  # fmt: skip
    codes = {o.offer_id: [r["code"] for r in o.reasons] for o in out.items}
    texts = {o.offer_id: " ".join(r["text"] for r in o.reasons) for o in out.items}
    assert "category_interest" in codes["pets-coupon"]
    assert "You browsed pets products this week." in texts["pets-coupon"]
    assert "birthday_month" in codes["gift"]
    assert "free_shipping_basket" in codes["ship"]
    assert "tier_benefit" in codes["gold-perk"]


def test_sensitive_browsing_is_never_quoted(model: LoadedModel) -> None:
    snap = build_snapshot(
        1, [offer("h", category="health"), offer("c", kind="consult", subtype="health")], NOW
    )
    out = rank(
        snap, _browsed("health"), Context(), NOW, 2, model=model, mode=Mode.PERSONALISED, policy=Policy()
    )
    for item in out.items:
        for r in item.reasons:
            assert "health" not in r["text"].lower()
            assert r["code"] != "category_interest"


def test_non_personalised_uses_no_member_facts(model: LoadedModel) -> None:
    snap = build_snapshot(1, [offer("baby-coupon", category="baby"), offer("x")], NOW)
    out = rank(
        snap, _browsed("baby"), Context(), NOW, 2, model=model, mode=Mode.NON_PERSONALISED, policy=Policy()
    )
    codes = {r["code"] for o in out.items for r in o.reasons}
    assert codes <= {"featured", "page_context", "high_value", "limited_quantity", "popular", "available"}


def test_unknown_page_category_still_ranks(model: LoadedModel) -> None:
    snap = build_snapshot(1, _catalog(), NOW)
    out = rank(snap, new_state("new"), Context(page_type="category", category="home"), NOW, 5, model=model,
               mode=Mode.COLD_START, policy=Policy())  # fmt: skip
    assert len(out.items) == 5
    assert any(r["code"] == "page_context" for o in out.items for r in o.reasons)
