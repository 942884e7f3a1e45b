"""The online fairness guard: a higher tier is never offered a strictly worse version of an offer family
than a lower tier gets in the same context; a deliberately biased model is blocked; withheld offers are
explained and counted."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from features.eligibility import evaluate
from features.events import TIERS
from features.offers import Eligibility, Offer
from features.projection import Context
from features.state import MemberState, new_state
from harness.biased import biased_model
from service.catalog import build_snapshot
from service.fairness_guard import offer_family, strictly_worse
from service.metrics import Metrics
from service.model import LoadedModel
from service.ranking import Mode, Policy, rank

NOW = datetime(2026, 6, 15, 12, 0, tzinfo=UTC).timestamp()
GUARD = Policy(min_kinds=1, fairness_guard=True)
OFF = Policy(min_kinds=1, fairness_guard=False)


def coupon(offer_id: str, value: float, threshold: float = 99.0, **kw: Any) -> Offer:
    base: dict[str, Any] = {"kind": "coupon", "subtype": "threshold", "category": "beauty", "title": offer_id,
                            "value": value, "threshold": threshold, "cost": value * 0.5}  # fmt: skip
    base.update(kw)
    return Offer(offer_id=offer_id, **base)


def member(tier: str) -> MemberState:
    s = new_state(f"m-{tier}")
    s.tier = tier
    return s


@pytest.fixture(scope="module")
def biased(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    return biased_model(tmp_path_factory.mktemp("biased"))


def _top(model: LoadedModel, tier: str, policy: Policy, offers: list[Offer]) -> list[str]:
    snap = build_snapshot(1, offers, NOW)
    out = rank(snap, member(tier), Context(), NOW, 1, model=model, mode=Mode.PERSONALISED, policy=policy)
    return [o.offer_id for o in out.items]


def test_the_biased_model_discriminates_and_the_guard_blocks_it(biased: LoadedModel) -> None:
    offers = [coupon("small", 5.0), coupon("big", 20.0)]
    # Without the guard the model gives regulars the big coupon and gold members the small one.
    assert _top(biased, "regular", OFF, offers) == ["big"]
    assert _top(biased, "gold", OFF, offers) == ["small"]
    # With it, gold gets the big one too; regulars are never restricted.
    assert _top(biased, "gold", GUARD, offers) == ["big"]
    assert _top(biased, "diamond", GUARD, offers) == ["big"]
    assert _top(biased, "regular", GUARD, offers) == ["big"]


def test_withheld_offers_are_explained_in_the_members_language(biased: LoadedModel) -> None:
    snap = build_snapshot(1, [coupon("small", 5.0), coupon("big", 20.0)], NOW)
    for locale, word in (("en", "lower membership tier"), ("zh-CN", "较低等级")):
        out = rank(snap, member("gold"), Context(), NOW, 2, model=biased, mode=Mode.PERSONALISED,
                   policy=GUARD, explain=True, locale=locale)  # fmt: skip
        assert [o.offer_id for o in out.items] == ["big"] and out.guard_blocked == 1
        assert out.excluded is not None
        (ex,) = [e for e in out.excluded if e["reason"] == "fairness_guard"]
        assert ex["offer_id"] == "small" and word in ex["text"]


def test_a_better_version_only_for_lower_tiers_withholds_the_worse_one() -> None:
    # The catalogue itself discriminates: the big version is for regular members only.
    offers = [coupon("small", 5.0), coupon("big", 20.0, eligibility=Eligibility(tiers=["regular"]))]
    snap = build_snapshot(1, offers, NOW)
    out = rank(snap, member("gold"), Context(), NOW, 2, model=None, mode=Mode.NON_PERSONALISED, policy=GUARD)
    assert out.items == [] and out.guard_blocked == 1
    # Not when the lower tier could not get the big one here either (another rule fails for them too).
    paid = coupon("big", 20.0, eligibility=Eligibility(tiers=["regular"], paid_only=True))
    snap = build_snapshot(1, [coupon("small", 5.0), paid], NOW)
    out = rank(snap, member("gold"), Context(), NOW, 2, model=None, mode=Mode.NON_PERSONALISED, policy=GUARD)
    assert [o.offer_id for o in out.items] == ["small"] and out.guard_blocked == 0


def test_other_families_and_trade_offs_are_left_alone() -> None:
    offers = [
        coupon("beauty-5", 5.0),
        coupon("home-20", 20.0, category="home"),  # another family
        coupon("cheap-entry", 3.0, threshold=49.0),  # smaller but easier to reach: not strictly worse
        coupon("beauty-20", 20.0, threshold=199.0),
    ]
    snap = build_snapshot(1, offers, NOW)
    wide = Policy(min_kinds=1, max_per_category=5, fairness_guard=True)
    out = rank(snap, member("gold"), Context(), NOW, 4, model=None, mode=Mode.NON_PERSONALISED, policy=wide)
    assert out.guard_blocked == 0 and len(out.items) == 4


@pytest.mark.anyio
async def test_blocked_offers_are_counted(biased: LoadedModel) -> None:
    from service.recommend import Recommender, RecommendQuery

    class _Holder:
        def __init__(self, current: Any) -> None:
            self.current = current

    class _Store:
        async def get_member_raw(self, member_id: str) -> bytes | None:
            from infra.redis_layout import StoredMember, encode_member

            return encode_member(StoredMember(state=member("gold")))

    metrics = Metrics()
    snap = build_snapshot(1, [coupon("small", 5.0), coupon("big", 20.0)], NOW)
    rec = Recommender(_Store(), _Holder(snap), _Holder(biased), metrics, GUARD, 200.0, b"s")  # type: ignore[arg-type]
    for _ in range(3):
        body = await rec.recommend(RecommendQuery("m-gold", Context(), limit=1), now=NOW)
        assert [o["offer_id"] for o in body["offers"]] == ["big"]
    assert metrics.fairness_guard_blocked._value.get() == 3


_offers = st.lists(
    st.builds(
        lambda i, v, t, sub, tiers: coupon(
            f"o{i}",
            v,
            t,
            subtype=sub,
            category=None if sub == "no_threshold" else "beauty",
            eligibility=Eligibility(tiers=tiers),
        ),
        st.integers(0, 10**6),
        st.sampled_from([3.0, 5.0, 10.0, 20.0]),
        st.sampled_from([0.0, 99.0, 199.0]),
        st.sampled_from(["threshold", "no_threshold"]),
        st.sampled_from([[], ["regular"], ["gold", "diamond"], ["silver", "gold", "diamond"]]),
    ),
    min_size=1,
    max_size=12,
    unique_by=lambda o: o.offer_id,
)


@settings(max_examples=150, deadline=None)
@given(_offers, st.sampled_from(TIERS[1:]), st.integers(1, 6))
def test_no_shown_offer_is_dominated_by_what_a_lower_tier_gets(
    offers: list[Offer], tier: str, k: int
) -> None:
    snap = build_snapshot(1, offers, NOW)
    state = member(tier)
    out = rank(snap, state, Context(), NOW, k, model=None, mode=Mode.NON_PERSONALISED, policy=GUARD)
    lower_gets = set()
    for t in TIERS[: TIERS.index(tier)]:
        r = evaluate(snap.elig, snap.table.index, msgspec.structs.replace(state, tier=t), Context(), NOW,
                     snap.claimed, snap.cost_used)  # fmt: skip
        lower_gets |= {snap.offers[i].offer_id for i in np.flatnonzero(r < 0)}
    by_id = {o.offer_id: o for o in offers}
    for item in out.items:
        shown = by_id[item.offer_id]
        for other_id in lower_gets:
            other = by_id[other_id]
            if offer_family(other) == offer_family(shown):
                assert not strictly_worse(shown, other), (shown.offer_id, other_id)
