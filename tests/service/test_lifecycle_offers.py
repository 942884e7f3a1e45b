"""Lifecycle offers over HTTP: the admin API takes lifecycle eligibility, the ranker applies each rule to
the member's folded state (shown / excluded with its code and sentence in en and zh-CN), and the shown
offer carries the lifecycle reason true of that state."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from features import events as ev
from features.decay import DAY
from features.state import fold
from infra.redis_layout import MemberStore, StoredMember
from infra.settings import Settings
from service.app import create_app
from service.i18n import exclusion_text
from tests.service.conftest import ADMIN, SUPPORT, running

pytestmark = [pytest.mark.anyio, pytest.mark.integration]


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with running(create_app(settings)) as c:
        yield c


_seq = 0


def _e(kind: type[ev._Event], member_id: str, ts: float, **kw: Any) -> ev.Event:
    global _seq
    _seq += 1
    return kind(event_id=f"lc{_seq}", member_id=member_id, event_ts=ts, **kw)  # type: ignore[return-value]


async def put_member(settings: Settings, member_id: str, events: list[ev.Event]) -> None:
    now = time.time()
    joined = _e(ev.ProfileUpdated, member_id, now - 300 * DAY, joined_ts=now - 300 * DAY)
    state = fold([joined, *events])
    assert settings.redis_url
    r = aioredis.Redis.from_url(settings.redis_url)
    try:
        await MemberStore(r, settings.layout).put_members([StoredMember(state=state)])
    finally:
        await r.aclose()


async def put_offer(client: httpx.AsyncClient, offer_id: str, **eligibility: Any) -> None:
    offer = {"offer_id": offer_id, "kind": "coupon", "subtype": "no_threshold", "title": offer_id,
             "value": 5.0, "cost": 1.0, "pinned": True, "eligibility": eligibility}  # fmt: skip
    r = await client.post("/v1/admin/offers", json=offer, headers=ADMIN)
    assert r.status_code == 201, r.text
    got = (await client.get(f"/v1/admin/offers/{offer_id}", headers=ADMIN)).json()
    for k, v in eligibility.items():
        assert got["eligibility"][k] == v  # accepted and kept, not dropped


async def outcome(
    client: httpx.AsyncClient, member_id: str, offer_id: str, locale: str = "en"
) -> dict[str, Any]:
    r = await client.post(
        "/v1/recommend",
        json={"member_id": member_id, "explain": True, "limit": 10, "locale": locale},
        headers=SUPPORT,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    shown = [o for o in body["offers"] if o["offer_id"] == offer_id]
    if shown:
        return {"shown": True, "reasons": {x["code"]: x["text"] for x in shown[0]["reasons"]}}
    excluded = [x for x in body["excluded"] if x["offer_id"] == offer_id]
    assert excluded, f"{offer_id} neither shown nor excluded"
    return {"shown": False, **excluded[0]}


def _now() -> float:
    return time.time()


# rule -> (eligibility, events of a member who passes, events of one who fails)
CASES: dict[str, tuple[dict[str, Any], Any, Any]] = {
    "lifecycle_stage": (
        {"lifecycle_stages": ["silent"]},
        lambda m, t: [_e(ev.PageView, m, t - 45 * DAY, page_type="home")],
        lambda m, t: [_e(ev.PageView, m, t - DAY, page_type="home")],
    ),
    "days_since_order": (
        {"min_days_since_order": 30, "max_days_since_order": 90},
        lambda m, t: [_e(ev.Order, m, t - 40 * DAY, amount=20.0)],
        lambda m, t: [_e(ev.Order, m, t - 2 * DAY, amount=20.0)],
    ),
    "days_since_visit": (
        {"max_days_since_visit": 3},
        lambda m, t: [_e(ev.PageView, m, t - DAY, page_type="home")],
        lambda m, t: [_e(ev.PageView, m, t - 10 * DAY, page_type="home")],
    ),
    "paid_renewal_window": (
        {"paid_expiring_within_days": 7},
        lambda m, t: [_e(ev.PaidMembershipStarted, m, t - 360 * DAY, plan="PLUS", expires_at=t + 4.5 * DAY)],
        lambda m, t: [_e(ev.PaidMembershipStarted, m, t - 360 * DAY, plan="PLUS", expires_at=t + 60 * DAY)],
    ),
    "tier_gap": (
        {"min_tier_gap": 1, "max_tier_gap": 200},
        lambda m, t: [_e(ev.Order, m, t - DAY, amount=2900.0)],
        lambda m, t: [_e(ev.Order, m, t - DAY, amount=500.0)],
    ),
    "points_expiring": (
        {"points_expiring_within_days": 30, "min_points_expiring": 100},
        lambda m, t: [
            _e(
                ev.PointsChanged,
                m,
                t - DAY,
                points=800,
                expiring=[ev.PointsLot(points=300, expires_at=t + 3600.0)],
            )
        ],
        lambda m, t: [_e(ev.PointsChanged, m, t - DAY, points=800)],
    ),
}


@pytest.mark.parametrize("rule", list(CASES))
async def test_each_lifecycle_rule_over_http(
    client: httpx.AsyncClient, settings: Settings, rule: str
) -> None:
    elig, passing, failing = CASES[rule]
    offer_id = f"lc-{rule.replace('_', '-')}"
    await put_offer(client, offer_id, **elig)
    now = _now()
    await put_member(settings, f"pass-{rule}", passing(f"pass-{rule}", now))
    await put_member(settings, f"fail-{rule}", failing(f"fail-{rule}", now))
    assert (await outcome(client, f"pass-{rule}", offer_id))["shown"]
    for locale in ("en", "zh-CN"):
        got = await outcome(client, f"fail-{rule}", offer_id, locale)
        assert not got["shown"] and got["reason"] == rule
        assert got["text"] == exclusion_text(rule, locale) and got["text"] != rule


async def test_lifecycle_reasons_are_true_of_the_state(client: httpx.AsyncClient, settings: Settings) -> None:
    now = _now()
    await put_offer(client, "lc-renewal", paid_expiring_within_days=7)
    await put_member(
        settings,
        "ending",
        [_e(ev.PaidMembershipStarted, "ending", now - 360 * DAY, plan="PLUS", expires_at=now + 4.5 * DAY)],
    )
    got = await outcome(client, "ending", "lc-renewal")
    assert got["reasons"]["paid_expiring"] == "Your PLUS membership ends in 5 days."
    got = await outcome(client, "ending", "lc-renewal", "zh-CN")
    assert got["reasons"]["paid_expiring"] == "您的PLUS会员将在5天后到期。"

    await put_offer(client, "lc-nudge", max_tier_gap=200)
    await put_member(settings, "near-gold", [_e(ev.Order, "near-gold", now - DAY, amount=2880.0)])
    got = await outcome(client, "near-gold", "lc-nudge")
    assert got["reasons"]["tier_progress"] == "Spend CN¥120 more to reach Gold."
    got = await outcome(client, "near-gold", "lc-nudge", "zh-CN")
    assert got["reasons"]["tier_progress"] == "再消费¥120即可升级为黄金会员。"

    # The sentence states the offer's window and counts the points expiring within it (300 in 10 days
    # and 200 in 25 are both within 30 days; the lot in 40 days is not).
    await put_offer(client, "lc-points", points_expiring_within_days=30, min_points_expiring=100)
    lots = [
        ev.PointsLot(points=300, expires_at=now + 10 * DAY),
        ev.PointsLot(points=200, expires_at=now + 25 * DAY),
        ev.PointsLot(points=900, expires_at=now + 40 * DAY),
    ]
    await put_member(
        settings, "points", [_e(ev.PointsChanged, "points", now - DAY, points=2000, expiring=lots)]
    )
    got = await outcome(client, "points", "lc-points")
    assert got["reasons"]["points_expiring"] == "500 of your points expire within 30 days."
    got = await outcome(client, "points", "lc-points", "zh-CN")
    assert got["reasons"]["points_expiring"] == "您有500积分将在30天内过期。"

    # "Welcome back." only for a member who came back (stage returning), not for one still away.
    await put_offer(client, "lc-wake", lifecycle_stages=["silent", "returning"])
    await put_member(settings, "asleep", [_e(ev.PageView, "asleep", now - 50 * DAY, page_type="home")])
    got = await outcome(client, "asleep", "lc-wake")
    assert got["shown"] and "welcome_back" not in got["reasons"]
    # ... who is told how long it has been instead (whole days since the last visit).
    assert got["reasons"]["missed_you"] == "It has been 50 days since your last visit."
    got = await outcome(client, "asleep", "lc-wake", "zh-CN")
    assert got["reasons"]["missed_you"] == "您已有50天没来逛逛了。"
    back = [_e(ev.PageView, "back", now - t * DAY, page_type="home") for t in (50, 2)]
    await put_member(settings, "back", back)
    got = await outcome(client, "back", "lc-wake")
    assert got["reasons"]["welcome_back"] == "Welcome back."


async def test_admin_refuses_bad_lifecycle_eligibility(client: httpx.AsyncClient) -> None:
    base = {"offer_id": "lc-bad", "kind": "coupon", "subtype": "no_threshold", "title": "x"}
    for elig, field in (
        ({"lifecycle_stages": ["asleep"]}, "lifecycle_stages"),
        ({"min_days_since_order": 30, "max_days_since_order": 5}, "max_days_since_order"),
        ({"paid_expiring_within_days": -1}, "paid_expiring_within_days"),
    ):
        r = await client.post("/v1/admin/offers", json={**base, "eligibility": elig}, headers=ADMIN)
        assert r.status_code == 422 and field in r.text, r.text
