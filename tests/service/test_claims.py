"""Claims over real HTTP against the session's Redis and broker: every rule enforced, refusals name the
rule, concurrent claims never exceed a limit, and retries with the same key return the first outcome
and change nothing, also when Redis stalls longer than the client's timeout (CLIENT PAUSE)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from features import events as ev
from infra.money_store import MoneyStore, Usage
from infra.settings import Settings
from service.i18n import exclusion_text
from tests.service.conftest import ADMIN, SF, live_server, wait_for
from tests.service.test_feedback import consume

pytestmark = [pytest.mark.integration]

NOW = time.time()


@pytest.fixture
def fb_settings(settings: Settings, broker: Any, topics: dict[str, str]) -> Settings:
    return settings.model_copy(update={"kafka_bootstrap": broker.url, "events_topic": topics["events"]})


def offer(offer_id: str, **extra: Any) -> dict[str, Any]:
    return {"offer_id": offer_id, "kind": "coupon", "subtype": "limited", "title": offer_id, "value": 10.0,
            "cost": 5.0, **extra}  # fmt: skip


async def setup(c: httpx.AsyncClient, *offers: dict[str, Any]) -> None:
    for o in offers:
        r = await c.put(f"/v1/admin/offers/{o['offer_id']}", json=o, headers=ADMIN)
        assert r.status_code == 200, r.text

    async def producer_ready() -> bool:
        body = {"type": "click", "member_id": "warm", "offer_id": offers[0]["offer_id"], "request_id": "w"}
        return (await c.post("/v1/feedback", json=body, headers=SF)).status_code == 202

    assert await wait_for(producer_ready, timeout_s=20, interval_s=0.2)


async def claim(
    c: httpx.AsyncClient,
    member: str,
    offer_id: str,
    key: str | None = None,
    accept_language: str | None = "en",
    **extra: Any,
) -> httpx.Response:
    """A claim from a storefront that reads English unless told otherwise (refusal sentences follow the
    body's ``locale``, then Accept-Language, then the service default, zh-CN)."""
    body = {"type": "claim", "member_id": member, "offer_id": offer_id, "request_id": "r", **extra}
    headers = {**SF, "Idempotency-Key": key} if key else dict(SF)
    if accept_language is not None:
        headers["Accept-Language"] = accept_language
    return await c.post("/v1/feedback", json=body, headers=headers)


async def usage(settings: Settings, offer_id: str) -> tuple[Usage, dict[str, tuple[int, float]]]:
    assert settings.redis_url
    r = aioredis.Redis.from_url(settings.redis_url)
    try:
        money = MoneyStore(r, settings.redis_prefix)
        return (await money.usage([offer_id])).get(offer_id, Usage()), await money.all_member_claims(offer_id)
    finally:
        await r.aclose()


def test_the_issue_bugs_are_refused_with_their_rule(fb_settings: Settings) -> None:
    """A regular-tier member claimed a diamond-only offer (max one per member) three times; an offer with
    budget 60 and cost 30 accepted four claims. Now: 409 naming the rule, and limits hold."""

    async def go(base: str) -> None:
        async with httpx.AsyncClient(base_url=base, timeout=10.0) as c:
            diamond = offer("diamond-only", inventory=5, eligibility={"tiers": ["diamond"]},
                            caps={"max_claims_per_member": 1})  # fmt: skip
            budget = offer("budget-60", cost=30.0, budget=60.0)
            await setup(c, diamond, budget)
            for i in range(3):
                r = await claim(c, "regular-1", "diamond-only", key=f"reg-{i}")
                assert r.status_code == 409, r.text
                assert r.json()["error"] == "claim_refused" and r.json()["reason"] == "tier"
                assert r.json()["message"] == "The offer is for a higher membership tier."
            assert (await usage(fb_settings, "diamond-only"))[0].units == 0
            statuses = [(await claim(c, f"b{i}", "budget-60", key=f"b{i}")) for i in range(4)]
            assert [r.status_code for r in statuses] == [202, 202, 409, 409]
            assert statuses[1].json()["budget_left"] == 0.0
            assert {r.json()["reason"] for r in statuses[2:]} == {"budget_exhausted"}
            u, _ = await usage(fb_settings, "budget-60")
            assert (u.units, u.cost) == (2, 60.0)
            # One claim per member: a second claim with a new key is refused by the script at once
            # (before the stream has folded the first one into the member's state).
            r = await claim(c, "b0", "budget-60", key="b0-again")
            assert r.status_code == 409 and r.json()["reason"] in ("claimed", "budget_exhausted")
            # A channel rule applies when the claim names its context.
            web = offer("web-only", eligibility={"channels": ["web"]})
            await setup(c, web)
            r = await claim(c, "m-ch", "web-only", key="ch1", context={"channel": "app"})
            assert r.status_code == 409 and r.json()["reason"] == "channel"
            assert (
                await claim(c, "m-ch", "web-only", key="ch2", context={"channel": "web"})
            ).status_code == 202

    with live_server(fb_settings) as base:
        asyncio.run(go(base))


def test_a_retry_with_the_same_key_returns_the_first_outcome_and_changes_nothing(
    fb_settings: Settings,
) -> None:
    async def go(base: str) -> None:
        async with httpx.AsyncClient(base_url=base, timeout=10.0) as c:
            await setup(c, offer("idem", inventory=3, caps={"max_claims_per_member": 3,
                                                             "cooldown_after_claim_hours": 0}))  # fmt: skip
            first = await claim(c, "m-idem", "idem", key="key-1")
            assert first.status_code == 202 and first.json()["inventory_left"] == 2
            for _ in range(3):
                again = await claim(c, "m-idem", "idem", key="key-1")
                assert (again.status_code, again.json()) == (202, first.json())
            u, members = await usage(fb_settings, "idem")
            assert u.units == 1 and members["m-idem"][0] == 1
            # event_id in the body is the same kind of key; both at once is refused.
            a = await claim(c, "m-idem", "idem", event_id="ev-2")
            assert (await claim(c, "m-idem", "idem", event_id="ev-2")).json() == a.json()
            both = await claim(c, "m-idem", "idem", key="k", event_id="e")
            assert both.status_code == 422
            bad = await claim(c, "m-idem", "idem", key="has space")
            assert bad.status_code == 422 and "idempotency" in bad.text.lower()
            # Refusals are first outcomes too.
            for _ in range(2):
                r = await claim(c, "m-idem", "idem", key="key-3")
                assert r.status_code == 202
            u, _ = await usage(fb_settings, "idem")
            assert u.units == 3
            r = await claim(c, "m-idem", "idem", key="key-4")
            assert r.status_code == 409 and r.json()["reason"] == "sold_out"
            # Feedback: the same key publishes the same event id (the fold skips the copy).
            for _ in range(2):
                body = {"type": "click", "member_id": "m-idem", "offer_id": "idem", "request_id": "r"}
                r2 = await c.post("/v1/feedback", json=body, headers={**SF, "Idempotency-Key": "click-1"})
                assert r2.status_code == 202
            # warm-up click, key-1 x4, ev-2 x2, key-3 x2, click x2: a retry of an accepted claim publishes
            # its event again (same id and time), so a first publish that was lost is completed.
            records = await consume(fb_settings, 11)
            claims = [ev.decode(x.value) for x in records if x.value and b"coupon_claim" in x.value]
            assert len(claims) == 8 and len({(e.event_id, e.event_ts) for e in claims}) == 3
            clicks = [ev.decode(x.value) for x in records if x.value and b'"click"' in x.value]
            assert len({e.event_id for e in clicks if e.member_id == "m-idem"}) == 1
            assert all(isinstance(e, ev.CouponClaim) and e.cost == 5.0 for e in claims)

    with live_server(fb_settings) as base:
        asyncio.run(go(base))


def test_300_concurrent_claims_never_exceed_any_limit(fb_settings: Settings) -> None:
    """Stock 50, budget for 40 claims, one per member; 300 concurrent claims from 150 members (each twice
    with different keys): exactly 40 accepted, budget exactly spent, no member with two."""

    async def go(base: str) -> list[httpx.Response]:
        async with httpx.AsyncClient(
            base_url=base, timeout=30.0, limits=httpx.Limits(max_connections=300)
        ) as c:
            await setup(c, offer("race", inventory=50, cost=10.0, budget=400.0))
            return list(
                await asyncio.gather(*(claim(c, f"racer-{i % 150}", "race", key=f"k{i}") for i in range(300)))
            )

    # Room for all 300 at once (the default sheds past 32 in flight: those would be 503s to retry).
    with live_server(fb_settings.model_copy(update={"max_in_flight": 400})) as base:
        responses = asyncio.run(go(base))
    statuses = Counter(r.status_code for r in responses)
    assert statuses[202] == 40, statuses
    assert statuses[409] == 260, statuses
    reasons = Counter(r.json()["reason"] for r in responses if r.status_code == 409)
    assert set(reasons) <= {"budget_exhausted", "claimed"}, reasons
    winners = Counter(
        int(r.request.headers["Idempotency-Key"][1:]) % 150 for r in responses if r.status_code == 202
    )
    assert max(winners.values()) == 1
    u, members = asyncio.run(usage(fb_settings, "race"))
    assert (u.units, u.cost) == (40, 400.0)
    assert len(members) == 40 and {n for n, _ in members.values()} == {1}


# Keeps the server busy for ARGV[1] ms (like a slow command): commands already sent wait, then run.
_BUSY_LUA = """
local t = redis.call('TIME')
local start = t[1] * 1000 + t[2] / 1000
repeat t = redis.call('TIME') until t[1] * 1000 + t[2] / 1000 - start >= tonumber(ARGV[1])
return 1
"""


@pytest.mark.parametrize(
    ("how", "stall_ms", "deadline_ms"), [("pause", 80, 1000), ("pause", 300, 150), ("busy", 300, 1000)]
)
def test_redis_stalls_leak_nothing(
    fb_settings: Settings, redis_server: Any, how: str, stall_ms: int, deadline_ms: int
) -> None:
    """The issue: with 80 ms stalls around 25 claims, 39 units were taken; with 300 ms stalls claims
    answered 503 while each held a unit. Now: short stalls are ridden out (retries with the same key);
    long ones answer 503 "outcome unknown", and retrying with the same key gives the first outcome.
    Either way units reserved == claims accepted."""
    settings = fb_settings.model_copy(update={"claim_redis_timeout_ms": 50, "claim_deadline_ms": deadline_ms})

    async def go(base: str) -> tuple[dict[str, int], int]:
        async with httpx.AsyncClient(base_url=base, timeout=30.0) as c:
            await setup(c, offer("stall", inventory=1000, caps={"max_claims_per_member": 1}))
            pauser = aioredis.Redis.from_url(redis_server.url)
            outcomes: dict[str, int] = {}
            unknown = 0
            try:
                for i in range(25):
                    if how == "pause":
                        # WRITE: reads pass and the claim script waits (dropped if its client gives up).
                        await pauser.execute_command("CLIENT", "PAUSE", str(stall_ms), "WRITE")
                        r = await claim(c, f"st-{i}", "stall", key=f"s{i}")
                    else:
                        # A busy server: the script already sent runs late, after its caller timed out.
                        busy = asyncio.create_task(pauser.eval(_BUSY_LUA, 0, stall_ms))
                        await asyncio.sleep(0.01)
                        r = await claim(c, f"st-{i}", "stall", key=f"s{i}")
                        await busy
                    if r.status_code == 503:
                        unknown += 1
                        assert "retry with the same Idempotency-Key" in r.json()["message"], r.text
                    outcomes[f"s{i}"] = r.status_code
                await asyncio.sleep(stall_ms / 1000 + 0.2)
                mid_usage, _ = await usage(settings, "stall")
                # Paused scripts whose client gave up are dropped; late ones on a busy server run, once
                # (tests/cluster/test_money_store.py shows that case on its own).
                assert mid_usage.units <= 25, mid_usage
                for i in range(25):
                    r = await claim(c, f"st-{i}", "stall", key=f"s{i}")
                    assert r.status_code == 202, r.text
            finally:
                await pauser.execute_command("CLIENT", "UNPAUSE")
                await pauser.aclose()
            return outcomes, unknown

    with live_server(settings) as base:
        outcomes, unknown = asyncio.run(go(base))
    u, members = asyncio.run(usage(settings, "stall"))
    assert u.units == 25 and len(members) == 25, (u, outcomes)
    if stall_ms > deadline_ms:
        assert unknown > 0, outcomes
    else:
        assert unknown == 0, outcomes


def test_a_refusal_speaks_the_requests_language(fb_settings: Settings) -> None:
    """The refusal's sentence comes from the message catalogue: the body's locale, else Accept-Language,
    else the service default (zh-CN), as recommend chooses; the rule code stays the same."""
    zh = exclusion_text("tier", "zh-CN")
    assert zh != exclusion_text("tier", "en") and zh != "tier"

    async def go(base: str) -> None:
        async with httpx.AsyncClient(base_url=base, timeout=10.0) as c:
            await setup(c, offer("diamond-zh", eligibility={"tiers": ["diamond"]}))
            by_body = await claim(c, "reg-zh", "diamond-zh", key="zh-1", locale="zh-CN")
            by_header = await claim(c, "reg-zh", "diamond-zh", key="zh-2", accept_language="zh-CN,zh;q=0.9")
            by_default = await claim(c, "reg-zh", "diamond-zh", key="zh-3", accept_language=None)
            english = await claim(c, "reg-zh", "diamond-zh", key="zh-4", accept_language="zh-CN", locale="en")
            # A retry with the same key returns the first outcome, in the retry's language.
            retry = await claim(c, "reg-zh", "diamond-zh", key="zh-1", locale="en")
            for r in (by_body, by_header, by_default, english, retry):
                assert r.status_code == 409, r.text
                assert r.json()["reason"] == "tier"
            assert (
                by_body.json()["message"] == by_header.json()["message"] == by_default.json()["message"] == zh
            )
            assert english.json()["message"] == retry.json()["message"] == exclusion_text("tier", "en")
            bad = await claim(c, "reg-zh", "diamond-zh", key="zh-5", locale="xx-YY")
            assert bad.status_code == 422 and "locale" in bad.text

    with live_server(fb_settings) as base:
        asyncio.run(go(base))
