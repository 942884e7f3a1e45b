"""Pure tests of the feature projection and of eligibility."""

from __future__ import annotations

import numpy as np
import pytest

from features import events as ev
from features.decay import DAY, HOUR
from features.demo_catalog import demo_catalog
from features.eligibility import RULES, EligibilityTable, evaluate
from features.offer_stats import OfferCounters
from features.offers import Caps, Eligibility, Offer
from features.projection import (
    FEATURE_INDEX,
    FEATURE_NAMES,
    LEGACY_FEATURE_SCHEMA_V1,
    N_FEATURES,
    Context,
    OfferTable,
    rows,
)
from features.state import apply, new_state
from features.taxonomy import DEMO_TAXONOMY

T0 = 1_760_000_000.0  # 2025-10-09, a Thursday
CATALOG = demo_catalog(T0 - DAY, n_offers=60)


def _state_with(events: list[ev.Event]) -> object:
    s = new_state("m1")
    for e in events:
        apply(s, e)
    return s


def test_feature_names_are_unique_and_versioned() -> None:
    assert len(set(FEATURE_NAMES)) == N_FEATURES == 69
    # What every model exported before declared specifications carries (the 62 columns of feature
    # schema v1: the default specification without its lifecycle columns, tests/core/test_spec.py).
    assert LEGACY_FEATURE_SCHEMA_V1 == "v1:ce13b0fe4ed171e9"


def test_rows_shape_dtype_and_determinism() -> None:
    table = OfferTable(CATALOG)
    s = new_state("m1")
    x = rows(s, table, Context(page_type="home"), T0)
    assert x.shape == (len(CATALOG), N_FEATURES) and x.dtype == np.float32
    assert np.array_equal(x, rows(s, table, Context(page_type="home"), T0))
    assert np.isfinite(x).all()


def test_browsing_a_category_raises_that_categorys_interest_only() -> None:
    table = OfferTable(CATALOG)
    browse = [
        ev.PageView(
            event_id=f"e{i}", member_id="m1", event_ts=T0 - i * 60, page_type="category", category="baby"
        )
        for i in range(10)
    ]
    x = rows(_state_with(browse), table, Context(page_type="home"), T0)
    col = FEATURE_INDEX["cat_interest_1d"]
    baby = [i for i, o in enumerate(CATALOG) if o.category == "baby"]
    other = [i for i, o in enumerate(CATALOG) if o.category not in ("baby", None)]
    assert baby and other
    assert (x[baby, col] > 9).all() and (x[other, col] == 0).all()
    assert x[baby, FEATURE_INDEX["cat_interest_share_7d"]] == pytest.approx(1.0)


def test_member_offer_history_and_context_columns() -> None:
    table = OfferTable(CATALOG)
    oid = CATALOG[3].offer_id
    events = [
        ev.Impression(event_id="i1", member_id="m1", event_ts=T0 - 2 * HOUR, request_id="r", offer_id=oid),
        ev.Dismiss(event_id="d1", member_id="m1", event_ts=T0 - HOUR, request_id="r", offer_id=oid),
    ]
    x = rows(_state_with(events), table, Context(page_type="cart", category="baby", device="ios"), T0)
    i = table.index[oid]
    assert x[i, FEATURE_INDEX["mo_shown"]] == 1
    assert x[i, FEATURE_INDEX["mo_hours_since_shown"]] == pytest.approx(2.0)
    assert x[i, FEATURE_INDEX["mo_dismissed"]] == 1
    assert x[0, FEATURE_INDEX["page_type_code"]] == ev.PAGE_TYPES.index("cart")
    assert x[0, FEATURE_INDEX["device_code"]] == 0


def test_priors_come_from_offer_stats() -> None:
    table = OfferTable(CATALOG)
    oid = CATALOG[0].offer_id
    before = rows(new_state("m"), table, Context(), T0)[0, FEATURE_INDEX["offer_prior_ctr"]]
    table.with_stats({oid: OfferCounters(impressions=1000, clicks=300)})
    after = rows(new_state("m"), table, Context(), T0)[0, FEATURE_INDEX["offer_prior_ctr"]]
    assert after > before and after == pytest.approx((300 + 1) / 1020, rel=1e-5)


# --- eligibility -------------------------------------------------------------------------------------


def _offer(**kw: object) -> Offer:
    base: dict[str, object] = {
        "offer_id": "o",
        "kind": "coupon",
        "subtype": "no_threshold",
        "title": "t",
        "value": 5,
    }
    base.update(kw)
    return Offer.model_validate(base)


def _reason(
    offer: Offer, state: object = None, ctx: Context | None = None, now: float = T0, **kw: object
) -> str:
    table = EligibilityTable([offer])
    code = evaluate(table, {offer.offer_id: 0}, state or new_state("m"), ctx or Context(), now, **kw)[0]  # type: ignore[arg-type]
    return "ok" if code < 0 else RULES[code]


@pytest.mark.parametrize(
    ("offer_kw", "expected"),
    [
        ({}, "ok"),
        ({"active": False}, "inactive"),
        ({"eligibility": Eligibility(valid_from_ts=T0 + 1)}, "not_started"),
        ({"eligibility": Eligibility(valid_to_ts=T0)}, "expired"),
        ({"eligibility": Eligibility(tiers=["gold"])}, "tier"),
        ({"eligibility": Eligibility(paid_only=True)}, "paid_only"),
        ({"eligibility": Eligibility(regions=["north"])}, "region"),
        ({"eligibility": Eligibility(channels=["web"])}, "channel"),
        ({"eligibility": Eligibility(page_types=["cart"])}, "page_type"),
        ({"eligibility": Eligibility(birthday_month_only=True)}, "birthday_month"),
        ({"eligibility": Eligibility(min_tenure_days=30)}, "tenure"),
    ],
)
def test_each_static_rule(offer_kw: dict[str, object], expected: str) -> None:
    assert _reason(_offer(**offer_kw)) == expected


def test_rules_pass_for_the_right_member() -> None:
    s = new_state("m")
    apply(s, ev.TierChanged(event_id="t", member_id="m", event_ts=T0 - 10, tier="gold"))
    apply(s, ev.PaidMembershipStarted(event_id="p", member_id="m", event_ts=T0 - 10))
    apply(
        s,
        ev.ProfileUpdated(
            event_id="u",
            member_id="m",
            event_ts=T0 - 10,
            birth_month=10,
            region="north",
            joined_ts=T0 - 60 * DAY,
        ),
    )
    elig = Eligibility(
        tiers=["gold"], paid_only=True, regions=["north"], birthday_month_only=True, min_tenure_days=30
    )
    assert _reason(_offer(eligibility=elig), s) == "ok"


def test_inventory_and_budget() -> None:
    o = _offer(inventory=10, budget=100.0, cost=1.0)
    assert _reason(o, claimed=np.array([9.0]), cost_used=np.array([99.0])) == "ok"
    assert _reason(o, claimed=np.array([10.0])) == "sold_out"
    assert _reason(o, cost_used=np.array([100.0])) == "budget_exhausted"


def test_per_member_caps_and_cooldowns() -> None:
    o = _offer(
        caps=Caps(max_impressions_without_action=3, cooldown_after_dismiss_hours=24, max_claims_per_member=1)
    )
    s = new_state("m")
    for i in range(3):
        apply(
            s,
            ev.Impression(
                event_id=f"i{i}", member_id="m", event_ts=T0 - 100 + i, request_id="r", offer_id="o"
            ),
        )
    assert _reason(o, s) == "fatigue"
    apply(s, ev.Click(event_id="c", member_id="m", event_ts=T0 - 50, request_id="r", offer_id="o"))
    assert _reason(o, s) == "ok"
    apply(s, ev.Dismiss(event_id="d", member_id="m", event_ts=T0 - 40, request_id="r", offer_id="o"))
    assert _reason(o, s) == "dismissed"
    assert _reason(o, s, now=T0 + 25 * HOUR) == "ok"
    apply(s, ev.CouponClaim(event_id="k", member_id="m", event_ts=T0 - 30, offer_id="o"))
    assert _reason(o, s, now=T0 + 25 * HOUR) == "claimed"


def test_invalid_offers_are_refused_with_a_reason() -> None:
    # Subtypes and categories are the taxonomy's (tests/core/test_taxonomy.py); the demo one refuses these.
    with pytest.raises(ValueError, match="subtype"):
        DEMO_TAXONOMY.check(_offer(subtype="free_shipping"))
    with pytest.raises(ValueError, match="category"):
        DEMO_TAXONOMY.check(_offer(category="spaceships"))
    with pytest.raises(ValueError, match="valid_to_ts"):
        Eligibility(valid_from_ts=T0, valid_to_ts=T0 - 1)
    with pytest.raises(ValueError, match="extra"):
        Offer.model_validate(
            {"offer_id": "o", "kind": "coupon", "subtype": "limited", "title": "t", "colour": 1}
        )


def test_demo_catalog_has_all_three_kinds_and_is_valid() -> None:
    cat = demo_catalog(T0, n_offers=200)
    assert len(cat) == 200 and len({o.offer_id for o in cat}) == 200
    assert {o.kind for o in cat} == {"coupon", "benefit", "consult"}
