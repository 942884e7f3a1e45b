"""The decisions the issue found wrong, one directed test each: duplicate slates, uncategorised offers
skipping diversity, a dismissed offer's clone coming back, cost left out of the objective, reasons
whose premise was false, sensitive categories quoted back."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from features import events as ev
from features.demo_catalog import demo_catalog
from features.offer_stats import OfferCounters
from features.offers import Offer
from features.projection import Context
from features.state import MemberState, apply, new_state
from harness.testmodel import train_onnx
from infra.settings import Settings
from service import objective as obj
from service.catalog import build_snapshot
from service.model import LoadedModel, load_model
from service.policy import policy_from
from service.ranking import Mode, Policy, rank

NOW = datetime(2026, 6, 15, 12, 0, tzinfo=UTC).timestamp()
DAY = 86400.0


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    path: Path = tmp_path_factory.mktemp("model") / "model.onnx"
    path.write_bytes(train_onnx(seed=4, n_trees=10).SerializeToString())
    return load_model(path, "decisions")


def coupon(offer_id: str, **kw: Any) -> Offer:
    base: dict[str, Any] = {
        "kind": "coupon", "subtype": "no_threshold", "title": offer_id, "value": 10.0, "cost": 6.0,
    }  # fmt: skip
    base.update(kw)
    return Offer(offer_id=offer_id, **base)


def _codes(out: Any) -> dict[str, list[str]]:
    return {o.offer_id: [r["code"] for r in o.reasons] for o in out.items}


# --- clean slates ----------------------------------------------------------------------------------------


def test_demo_catalog_slates_hold_no_two_offers_of_one_family(model: LoadedModel) -> None:
    """New members saw four "Free shipping coupon"s at checkout and four "10 off, no minimum"."""
    offers = demo_catalog(NOW - DAY, 200)
    snap = build_snapshot(1, offers, NOW)
    for page in ("checkout", "member_center", "home", "cart"):
        for mode in (Mode.COLD_START, Mode.FALLBACK):
            out = rank(snap, new_state("new"), Context(page_type=page), NOW, 8, model=model, mode=mode,
                       policy=Policy())  # fmt: skip
            shown = [snap.offers[snap.table.index[i.offer_id]] for i in out.items]
            assert len({o.family_key for o in shown}) == len(shown), [o.title for o in shown]
            assert len({o.title for o in shown}) == len(shown), [o.title for o in shown]
            assert sum(o.category is None for o in shown) <= Policy().max_per_category


def test_explicit_family_groups_offers_that_differ() -> None:
    a = coupon("a", value=10.0, family="spring-sale")
    b = coupon("b", value=12.0, family="spring-sale")
    c = coupon("c", value=11.0)
    snap = build_snapshot(1, [a, b, c], NOW)
    out = rank(snap, new_state("m"), Context(), NOW, 3, model=None, mode=Mode.FALLBACK,
               policy=Policy(max_per_category=5, min_kinds=1))  # fmt: skip
    ids = [i.offer_id for i in out.items]
    assert ids == ["b", "c"]  # b outranks its sibling a, which is left out
    assert a.family_key == b.family_key != c.family_key


def test_uncategorised_offers_obey_the_category_cap() -> None:
    offers = [coupon(f"u{i}", value=10.0 + i) for i in range(5)]  # distinct families, no category
    snap = build_snapshot(1, offers, NOW)
    out = rank(snap, new_state("m"), Context(), NOW, 5, model=None, mode=Mode.FALLBACK,
               policy=Policy(max_per_category=2, min_kinds=1))  # fmt: skip
    assert len(out.items) == 2


def test_dismissing_an_offer_cools_down_its_clones() -> None:
    a, clone, other = coupon("a"), coupon("a-clone"), coupon("b", value=20.0)
    snap = build_snapshot(1, [a, clone, other], NOW)
    state = new_state("m")
    apply(state, ev.Dismiss(event_id="d1", member_id="m", event_ts=NOW - 3600, request_id="r", offer_id="a"))
    out = rank(snap, state, Context(), NOW, 3, model=None, mode=Mode.FALLBACK,
               policy=Policy(max_per_category=5, min_kinds=1), explain=True)  # fmt: skip
    assert [i.offer_id for i in out.items] == ["b"]
    assert {e["offer_id"]: e["reason"] for e in out.excluded or []} == {
        "a": "dismissed",
        "a-clone": "dismissed",
    }
    # After the cool-down (72 h by default) the family is back.
    later = rank(snap, state, Context(), NOW + 4 * DAY, 3, model=None, mode=Mode.FALLBACK,
                 policy=Policy(max_per_category=5, min_kinds=1))  # fmt: skip
    assert {i.offer_id for i in later.items} == {"b", "a"}


# --- the objective ---------------------------------------------------------------------------------------


def test_same_p_higher_cost_ranks_lower() -> None:
    p = np.array([0.1, 0.1])
    value = np.array([10.0, 10.0])
    s = obj.score(p, value, np.array([2.0, 8.0]), np.ones(2), obj.Objective())
    assert s[0] > s[1]
    # Through the ranker: same prior, same value, different cost.
    cheap, dear = coupon("cheap", cost=2.0), coupon("dear", cost=8.0, value=10.0, subtype="threshold")
    snap = build_snapshot(1, [dear, cheap], NOW)
    out = rank(snap, new_state("m"), Context(), NOW, 2, model=None, mode=Mode.FALLBACK,
               policy=Policy(min_kinds=1))  # fmt: skip
    assert [i.offer_id for i in out.items] == ["cheap", "dear"]
    assert out.items[0].score - out.items[1].score == pytest.approx(snap.table.static[0, 10] * 6.0, rel=1e-3)


def test_budget_nearly_spent_ranks_lower() -> None:
    """No campaign window (so no schedule): only the share of budget left damps the offer."""
    full = coupon("full", budget=1000.0, cost=5.0)
    spent = coupon("spent", budget=1000.0, cost=5.0, subtype="threshold")
    snap = build_snapshot(1, [spent, full], NOW, stats={"spent": OfferCounters(cost_used=970.0)})
    out = rank(snap, new_state("m"), Context(), NOW, 2, model=None, mode=Mode.FALLBACK,
               policy=Policy(min_kinds=1))  # fmt: skip
    assert [i.offer_id for i in out.items] == ["full", "spent"]
    pace = obj.pacing(np.array([1.0, 0.5, 0.05, 0.0]), np.zeros(4), obj.Objective())
    assert pace.tolist() == pytest.approx([1.0, 1.0, 0.5, 0.1])


def test_objective_weights_come_from_settings() -> None:
    s = Settings(environment="test", objective_claim_value=5.0, cost_weight=2.0, value_weight=0.5,
                 sensitive_categories=["health", "baby", "beauty"])  # fmt: skip
    policy = policy_from(s)
    assert policy.objective == obj.Objective(claim_value=5.0, value_weight=0.5, cost_weight=2.0)
    assert policy.reasons.sensitive_categories == {"health", "baby", "beauty"}
    # Categories are the operator's taxonomy's: a typo is refused when the app starts with it.
    from features.taxonomy import DEMO_TAXONOMY
    from service.app import check_sensitive_categories

    check_sensitive_categories(s, DEMO_TAXONOMY)
    with pytest.raises(ValueError, match="unknown categories"):
        check_sensitive_categories(
            Settings(environment="test", sensitive_categories=["helth"]), DEMO_TAXONOMY
        )


# --- reasons whose premise holds ---------------------------------------------------------------------------


def _orders(state: MemberState, amounts: list[float], categories: list[str] | None = None) -> None:
    for i, amount in enumerate(amounts):
        apply(state, ev.Order(event_id=f"o{i}", member_id="m", event_ts=NOW - (i + 1) * DAY, amount=amount,
                              categories=categories or []))  # fmt: skip


def _rank_one(offer: Offer, state: MemberState, model: LoadedModel, **snap_kw: Any) -> list[str]:
    snap = build_snapshot(1, [offer], NOW, **snap_kw)
    out = rank(snap, state, Context(), NOW, 1, model=model, mode=Mode.PERSONALISED, policy=Policy())
    return _codes(out)[offer.offer_id]


def test_no_statistics_is_not_popular(model: LoadedModel) -> None:
    o = coupon("x", category="home")
    assert "popular" not in _rank_one(o, new_state("m"), model)
    few = {"x": OfferCounters(impressions=30, claims=3)}
    assert "popular" not in _rank_one(o, new_state("m"), model, stats=few)
    many = {"x": OfferCounters(impressions=500, claims=40)}
    assert "popular" in _rank_one(o, new_state("m"), model, stats=many)


def test_close_to_the_threshold_only_below_it(model: LoadedModel) -> None:
    o = coupon("t", subtype="threshold", threshold=199.0, value=20.0, category="home")
    over = new_state("m")
    _orders(over, [220.0, 220.0, 220.0])  # basket 220 > 199: not "close to" it
    assert "threshold_within_reach" not in _rank_one(o, over, model)
    under = new_state("m")
    _orders(under, [180.0, 180.0, 180.0])
    assert "threshold_within_reach" in _rank_one(o, under, model)


def test_one_order_is_not_often(model: LoadedModel) -> None:
    o = coupon("g", category="grocery")
    once = new_state("m")
    _orders(once, [50.0], ["grocery"])
    assert "category_purchases" not in _rank_one(o, once, model)
    often = new_state("m")
    _orders(often, [50.0, 60.0, 70.0, 80.0], ["grocery"])  # decayed over 30 days: 4 recent orders > 3
    assert "category_purchases" in _rank_one(o, often, model)


def test_browsed_this_week_needs_browsing_this_week(model: LoadedModel) -> None:
    o = coupon("p", category="pets")
    old = new_state("m")
    for i in range(3):  # heavy browsing, but 8 days ago
        apply(old, ev.AddToCart(event_id=f"a{i}", member_id="m", event_ts=NOW - 8 * DAY - i, category="pets"))
    assert "category_interest" not in _rank_one(o, old, model)
    apply(
        old, ev.PageView(event_id="v", member_id="m", event_ts=NOW - DAY, page_type="home", category="pets")
    )
    assert "category_interest" in _rank_one(o, old, model)


@pytest.mark.parametrize("category", ["baby", "health"])
def test_sensitive_categories_are_never_quoted_back(model: LoadedModel, category: str) -> None:
    o = coupon("s", category=category)
    state = new_state("m")
    for i in range(6):
        ts = NOW - 600 - i
        apply(
            state,
            ev.PageView(
                event_id=f"v{i}", member_id="m", event_ts=ts, page_type="category", category=category
            ),
        )
    _orders(state, [40.0, 40.0, 40.0], [category])
    snap = build_snapshot(1, [o], NOW)
    out = rank(snap, state, Context(page_type="category", category=category), NOW, 1, model=model,
               mode=Mode.PERSONALISED, policy=Policy())  # fmt: skip
    reasons = out.items[0].reasons
    assert not {"category_interest", "category_purchases", "page_context"} & {r["code"] for r in reasons}
    assert all(category not in r["text"].lower() for r in reasons)
