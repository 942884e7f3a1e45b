"""Feedback and erasure against the session's real broker and Redis."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, ConsumerRecord

from features import events as ev
from features.state import new_state
from harness.embedded import Service, free_port
from infra.money_store import MoneyStore, Usage
from infra.redis_layout import MemberStore, StoredMember
from infra.settings import Settings
from service.app import create_app
from tests.service.conftest import ADMIN, SF, live_server, running, wait_for

pytestmark = [pytest.mark.integration]


@pytest.fixture
def fb_settings(settings: Settings, broker: Service, topics: dict[str, str]) -> Settings:
    return settings.model_copy(update={"kafka_bootstrap": broker.url, "events_topic": topics["events"]})


@pytest.fixture
async def client(fb_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(fb_settings)
    async with running(app) as c:

        async def ready() -> bool:
            return bool(app.state.resources.feedback.publisher.ready)

        assert await wait_for(ready, timeout_s=20), "producer never connected"
        yield c


async def consume(settings: Settings, n: int, timeout_s: float = 20.0) -> list[ConsumerRecord[bytes, bytes]]:
    consumer = AIOKafkaConsumer(
        settings.events_topic,
        bootstrap_servers=settings.kafka_bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )
    await consumer.start()
    out: list[ConsumerRecord[bytes, bytes]] = []
    try:
        async with asyncio.timeout(timeout_s):
            while len(out) < n:
                batch = await consumer.getmany(timeout_ms=500)
                for records in batch.values():
                    out.extend(records)
    finally:
        await consumer.stop()
    return out


@pytest.mark.anyio
async def test_feedback_is_published_keyed_by_member(
    client: httpx.AsyncClient, fb_settings: Settings
) -> None:
    rec = (await client.post("/v1/recommend", json={"member_id": "fb-1"}, headers=SF)).json()
    shown = rec["offers"][0]
    posts: list[dict[str, Any]] = [
        {"type": "impression", "position": 0, "propensity": shown["propensity"]},
        {"type": "click"},
        {"type": "dismiss"},
        {"type": "claim"},
    ]
    for p in posts:
        body = {"member_id": "fb-1", "offer_id": shown["offer_id"], "request_id": rec["request_id"], **p}
        r = await client.post("/v1/feedback", json=body, headers=SF)
        assert r.status_code == 202, r.text
    records = await consume(fb_settings, len(posts))
    assert {rec_.key for rec_ in records} == {b"fb-1"}
    events = [ev.decode(rec_.value) for rec_ in sorted(records, key=lambda x: x.timestamp)]
    kinds = sorted(ev.event_type(e) for e in events)
    claim_kind = {"coupon": "coupon_claim", "benefit": "benefit_use", "consult": "consult_booked"}[
        shown["kind"]
    ]
    assert kinds == sorted(["impression", "click", "dismiss", claim_kind])
    imp = next(e for e in events if isinstance(e, ev.Impression))
    assert imp.request_id == rec["request_id"] and imp.offer_id == shown["offer_id"]
    bad = {"type": "purchase", "member_id": "fb-1", "offer_id": "x", "request_id": "r"}
    r = await client.post("/v1/feedback", json=bad, headers=SF)
    assert r.status_code == 422 and r.json()["fields"][0]["field"] == "type"
    unknown = {"type": "click", "member_id": "fb-1", "offer_id": "no-such-offer", "request_id": "r"}
    assert (await client.post("/v1/feedback", json=unknown, headers=SF)).status_code == 404


def test_concurrent_claims_on_ten_left_succeed_exactly_ten_times(fb_settings: Settings) -> None:
    """Real HTTP, 40 concurrent claims on an offer with inventory 10: exactly 10 accepted, 30 sold out."""
    # Room for all 40 at once: this is about inventory, not load shedding (max_in_flight defaults to 32).
    with live_server(fb_settings.model_copy(update={"max_in_flight": 64})) as base:

        async def go() -> list[int]:
            async with httpx.AsyncClient(base_url=base, timeout=10.0) as c:
                offer = {"offer_id": "ten-left", "kind": "coupon", "subtype": "limited", "title": "Only 10",
                         "value": 10.0, "cost": 5.0, "inventory": 10}  # fmt: skip
                assert (
                    await c.put("/v1/admin/offers/ten-left", json=offer, headers=ADMIN)
                ).status_code == 200

                async def producer_ready() -> bool:
                    body = {"type": "click", "member_id": "warm", "offer_id": "ten-left", "request_id": "w"}
                    return (await c.post("/v1/feedback", json=body, headers=SF)).status_code == 202

                assert await wait_for(producer_ready, timeout_s=20, interval_s=0.2)

                async def claim(i: int) -> int:
                    body = {
                        "type": "claim",
                        "member_id": f"claimer-{i}",
                        "offer_id": "ten-left",
                        "request_id": f"r{i}",
                    }
                    return (await c.post("/v1/feedback", json=body, headers=SF)).status_code

                return list(await asyncio.gather(*(claim(i) for i in range(40))))

        statuses = asyncio.run(go())
    assert statuses.count(202) == 10, statuses
    assert statuses.count(409) == 30, statuses


@pytest.mark.anyio
async def test_broker_down_is_503_with_a_clear_message(settings: Settings) -> None:
    down = settings.model_copy(update={"kafka_bootstrap": f"127.0.0.1:{free_port()}"})
    async with running(create_app(down)) as c:
        body = {"type": "click", "member_id": "m1", "offer_id": "consult-health", "request_id": "r1"}
        r = await c.post("/v1/feedback", json=body, headers=SF)
        assert r.status_code == 503
        assert "unreachable" in r.json()["message"] and "nothing was recorded" in r.json()["message"]
        # A limited claim that could not be published does not keep its unit.
        limited = next(
            o for o in (await c.get("/v1/admin/offers", headers=ADMIN)).json()["offers"] if o["inventory"]
        )
        claim = {"type": "claim", "member_id": "m1", "offer_id": limited["offer_id"], "request_id": "r2",
                 "event_id": "ev-down-1"}  # fmt: skip
        r = await c.post("/v1/feedback", json=claim, headers=SF)
        assert r.status_code == 503 and "not recorded" in r.json()["message"], r.text
        assert settings.redis_url
        r_ = aioredis.Redis.from_url(settings.redis_url)
        try:
            money = MoneyStore(r_, settings.redis_prefix)
            used = await money.usage([limited["offer_id"]])
            assert await money.outcome(limited["offer_id"], "m1", "ev-down-1") is None
        finally:
            await r_.aclose()
        assert used.get(limited["offer_id"], Usage()).units == 0
        # Recommend does not care about the broker.
        rec = await c.post("/v1/recommend", json={"member_id": "m1"}, headers=SF)
        assert rec.status_code == 200 and not rec.json()["degraded"]


@pytest.mark.anyio
async def test_erasure_leaves_no_member_key_and_publishes_a_tombstone(
    client: httpx.AsyncClient, fb_settings: Settings
) -> None:
    assert fb_settings.redis_url
    r = aioredis.Redis.from_url(fb_settings.redis_url)
    layout = fb_settings.layout
    try:
        await MemberStore(r, layout).put_members([StoredMember(state=new_state("gone-1"))])
        # Any other key a future feature keeps under the member's tag must go too.
        await r.set(layout.member_pattern("gone-1").replace("*", "extra"), b"x", ex=60)
        await MemberStore(r, layout).put_members([StoredMember(state=new_state("stays-1"))])
        resp = await client.delete("/v1/members/gone-1", headers=ADMIN)
        assert resp.status_code == 200, resp.text
        assert resp.json()["keys_deleted"] == 2 and resp.json()["tombstone"] is True
        left = [k async for k in r.scan_iter(match=f"{layout.prefix}:*gone-1*")]
        assert left == []
        assert await r.exists(layout.member_key("stays-1")) == 1
    finally:
        await r.aclose()
    records = await consume(fb_settings, 1)
    assert records[0].key == b"gone-1" and records[0].value is None
    assert ("benefits-erasure", b"1") in list(records[0].headers)
