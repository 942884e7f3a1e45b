"""Lifecycle eligibility in the claim path, over real HTTP (issue 19): every lifecycle rule refuses a claim
with its reason code and sentence (en and zh-CN) when the member does not qualify and accepts it when
they do, with the verdict ranking gives the same member; and a non-default programme configuration
(settings) moves ranking and claims together, while the model served is the one built for it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from features import events as ev
from features import lifecycle as lc
from features.decay import DAY
from features.projection import DEFAULT_SPEC
from harness.testmodel import train_onnx
from infra.registry import Registry
from infra.settings import Settings
from service.i18n import exclusion_text
from service.ranking import EXCLUSION_SENTENCES
from tests.service.conftest import SUPPORT, live_server, set_meta, write_version
from tests.service.test_claims import claim, offer, setup
from tests.service.test_lifecycle_offers import _e, put_member
from training.export import spec_props

pytestmark = [pytest.mark.integration]

Events = Callable[[str, float], list[ev.Event]]


def _views(*days_ago: float) -> Events:
    return lambda m, t: [_e(ev.PageView, m, t - d * DAY, page_type="home") for d in days_ago]


def _order(days_ago: float, amount: float = 20.0) -> Events:
    return lambda m, t: [_e(ev.Order, m, t - days_ago * DAY, amount=amount)]


def _paid(expires_in_days: float | None, ended_days_ago: float | None = None) -> Events:
    def make(m: str, t: float) -> list[ev.Event]:
        expiry = None if expires_in_days is None else t + expires_in_days * DAY
        out = [_e(ev.PaidMembershipStarted, m, t - 360 * DAY, plan="PLUS", expires_at=expiry)]
        if ended_days_ago is not None:
            out.append(_e(ev.PaidMembershipEnded, m, t - ended_days_ago * DAY))
        return out

    return make


def _points(*lots: tuple[int, float]) -> Events:
    return lambda m, t: [
        _e(
            ev.PointsChanged,
            m,
            t - DAY,
            points=5000,
            expiring=[ev.PointsLot(points=p, expires_at=t + d * DAY) for p, d in lots],
        )
    ]


def _nothing(m: str, t: float) -> list[ev.Event]:
    return []


# offer eligibility, its rule, members who qualify, members who do not (each refused with the rule)
CASES: dict[str, tuple[dict[str, Any], str, list[Events], list[Events]]] = {
    "stages": (
        {"lifecycle_stages": ["returning"]},
        "lifecycle_stage",
        [_views(50, 2)],  # back two days ago after 48 days away
        [_views(1), _views(45)],  # active; silent
    ),
    "days-since-order": (
        {"min_days_since_order": 30, "max_days_since_order": 90},
        "days_since_order",
        [_order(40), _order(85)],
        [_order(2), _order(120), _nothing],  # too recent, too long ago, never ordered (365)
    ),
    "days-since-visit": (
        {"min_days_since_visit": 10, "max_days_since_visit": 60},
        "days_since_visit",
        [_views(25)],
        [_views(1), _views(90)],
    ),
    "paid-expiring": (
        {"paid_expiring_within_days": 7},
        "paid_renewal_window",
        [_paid(4.5)],
        [_paid(60), _paid(None), _nothing],  # ends later, open-ended, never paid
    ),
    "paid-lapsed": (
        {"paid_lapsed_within_days": 14},
        "paid_renewal_window",
        [_paid(-5), _paid(None, ended_days_ago=3)],  # expired unrenewed; ended by an event
        [_paid(-30), _paid(30), _nothing],
    ),
    "tier-gap": (
        {"min_tier_gap": 50, "max_tier_gap": 200},
        "tier_gap",
        [_order(1, 2900.0)],  # 100 short of gold (3000)
        [_order(1, 500.0), _order(1, 2980.0), _order(1, 9000.0)],  # 500 short; 20 short; top tier
    ),
    "points": (
        {"points_expiring_within_days": 30, "min_points_expiring": 100},
        "points_expiring",
        [_points((60, 5), (60, 25))],  # 120 points within 30 days in two lots
        [_points((50, 5)), _points((300, 40)), _nothing],  # too few; too late; none
    ),
}


@pytest.fixture
def fb_settings(settings: Settings, broker: Any, topics: dict[str, str]) -> Settings:
    return settings.model_copy(update={"kafka_bootstrap": broker.url, "events_topic": topics["events"]})


async def _ranked(c: httpx.AsyncClient, member_id: str, offer_id: str) -> tuple[str | None, dict[str, Any]]:
    """Ranking's verdict: None when shown, else the exclusion's reason; and the whole answer."""
    body = {"member_id": member_id, "explain": True, "limit": 20, "locale": "en"}
    r = await c.post("/v1/recommend", json=body, headers=SUPPORT)
    assert r.status_code == 200, r.text
    answer = r.json()
    if any(o["offer_id"] == offer_id for o in answer["offers"]):
        return None, answer
    excluded = [x for x in answer["excluded"] if x["offer_id"] == offer_id]
    assert excluded, f"{offer_id} neither shown nor excluded for {member_id}"
    return excluded[0]["reason"], answer


def test_each_lifecycle_rule_in_the_claim_path(fb_settings: Settings) -> None:
    offers = [offer(f"lc-{name}", eligibility=elig, pinned=True) for name, (elig, *_) in CASES.items()]

    async def go(base: str) -> None:
        async with httpx.AsyncClient(base_url=base, timeout=10.0) as c:
            await setup(c, *offers)
            now = time.time()
            members: list[tuple[str, str, str | None]] = []  # member, offer, the rule that refuses
            for name, (_, rule, passing, failing) in CASES.items():
                for k, make in enumerate(passing):
                    mid = f"ok-{name}-{k}"
                    await put_member(fb_settings, mid, make(mid, now))
                    members.append((mid, f"lc-{name}", None))
                for k, make in enumerate(failing):
                    mid = f"no-{name}-{k}"
                    await put_member(fb_settings, mid, make(mid, now))
                    members.append((mid, f"lc-{name}", rule))
            for mid, offer_id, rule in members:
                ranked, _ = await _ranked(c, mid, offer_id)
                assert ranked == rule, (mid, offer_id)  # the member is what the case says
                r = await claim(c, mid, offer_id, key=f"k-{mid}")
                if rule is None:
                    assert r.status_code == 202, (mid, r.text)
                    assert r.json()["status"] == "accepted"
                else:
                    assert r.status_code == 409, (mid, r.text)
                    got = r.json()
                    assert (got["error"], got["reason"]) == ("claim_refused", rule), (mid, got)
                    assert got["message"] == EXCLUSION_SENTENCES[rule] and got["message"] != rule
                    zh = await claim(c, mid, offer_id, key=f"zh-{mid}", locale="zh-CN")
                    assert (zh.status_code, zh.json()["reason"]) == (409, rule)
                    assert zh.json()["message"] == exclusion_text(rule, "zh-CN") != got["message"]

    with live_server(fb_settings) as base:
        asyncio.run(go(base))


#: A programme quicker to call members silent, with lower tier thresholds.
PROGRAMME = lc.LifecycleConfig(
    lapsing_days=3,
    silent_days=5,
    tiers=lc.TierRules(thresholds={"silver": 200.0, "gold": 600.0, "diamond": 4000.0}),
)


def _model_for(registry: Registry, config: lc.LifecycleConfig) -> str:
    """A model built for the specification under ``config``, promoted (the v1 fixture model was built
    for the default one and is refused under another configuration)."""
    spec = DEFAULT_SPEC.with_lifecycle(config)
    model = train_onnx(seed=4, n_trees=5)
    set_meta(model, spec_props(spec))
    write_version(
        Path(registry.root), "programme", model.SerializeToString(), {"feature_spec_hash": spec.hash}
    )
    registry.promote("programme")
    return spec.hash


@pytest.mark.parametrize("programme", ["default", "custom"])
def test_the_programme_configuration_moves_ranking_and_claims_together(
    fb_settings: Settings, registry: Registry, programme: str
) -> None:
    """The same members and offers under the default and a custom programme (BENEFITS_LIFECYCLE): who is
    silent and who is near the next tier changes, identically for ranking and claims."""
    config = PROGRAMME if programme == "custom" else lc.DEFAULT_CONFIG
    settings = fb_settings.model_copy(update={"lifecycle": config})
    spec_hash = _model_for(registry, config)
    wake = offer("wake", eligibility={"lifecycle_stages": ["silent"]}, pinned=True)
    nudge = offer("nudge", eligibility={"max_tier_gap": 150}, pinned=True)
    # a: away 7 days (silent after 5 under the custom programme; active under the default one)
    # b: here yesterday (active under both)
    # c: 500 of growth (100 short of gold at 600 under the custom one; 500 short of silver by default)
    expected = {
        "default": {
            ("a", "wake"): "lifecycle_stage",
            ("b", "wake"): "lifecycle_stage",
            ("c", "nudge"): "tier_gap",
        },
        "custom": {("a", "wake"): None, ("b", "wake"): "lifecycle_stage", ("c", "nudge"): None},
    }[programme]

    async def go(base: str) -> None:
        async with httpx.AsyncClient(base_url=base, timeout=10.0) as c:
            await setup(c, wake, nudge)
            now = time.time()
            await put_member(settings, "a", _views(7)("a", now))
            await put_member(settings, "b", _views(1)("b", now))
            await put_member(settings, "c", [*_views(1)("c", now), *_order(1, 500.0)("c", now)])
            for (mid, offer_id), rule in expected.items():
                ranked, answer = await _ranked(c, mid, offer_id)
                # Served by the model built for this programme's specification, not a fallback.
                assert answer["model_version"] == "programme", answer
                assert ranked == rule, (programme, mid, offer_id)
                r = await claim(c, mid, offer_id, key=f"{programme}-{mid}")
                assert r.status_code == (202 if rule is None else 409), (programme, mid, r.text)
                if rule is not None:
                    assert r.json()["reason"] == rule

    with live_server(settings) as base:
        asyncio.run(go(base))
    assert (spec_hash == DEFAULT_SPEC.hash) == (programme == "default")
