"""Money state survives: a Redis restart on its AOF keeps every counter; after a total loss (Redis killed,
its files deleted) ``benefits replay`` rebuilds member state, offer statistics, per-member claims,
inventory and budget use from the events topic, every counter equal to its value before.

Real parts: a Redis started here with AOF in a temporary data directory, the session broker, the stream
worker as a child process, the API under uvicorn, and the ``benefits replay`` command as a child process.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer

from features import events as ev
from features.offer_stats import merge_all
from harness import stack
from harness.embedded import Service, start_redis
from infra.money_store import MoneyStore
from infra.redis_layout import MemberStore
from infra.settings import Settings
from tests.service.conftest import ADMIN, ADMIN_KEY, SF, STOREFRONT_KEY, live_server, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

OFFERS: list[dict[str, Any]] = [
    {"offer_id": "ltd", "kind": "coupon", "subtype": "limited", "title": "Limited", "value": 20.0,
     "cost": 10.0, "inventory": 6, "budget": 50.0,
     "caps": {"max_claims_per_member": 2, "cooldown_after_claim_hours": 0}},
    {"offer_id": "perk", "kind": "benefit", "subtype": "partner_perk", "title": "Perk", "value": 5.0,
     "cost": 1.5},
]  # fmt: skip
MEMBERS = [f"mm-{i}" for i in range(8)]


async def snapshot(settings: Settings) -> dict[str, Any]:
    """Every counter the issue names, read straight from Redis."""
    assert settings.redis_url
    r = aioredis.Redis.from_url(settings.redis_url)
    try:
        store = MemberStore(r, settings.layout)
        money = MoneyStore(r, settings.redis_prefix)
        members = {m: await store.get_member(m) for m in MEMBERS}
        stats = merge_all([p.counters for p in await store.all_offer_stats()])
        out: dict[str, Any] = {
            "members": {m: msgspec.to_builtins(s.state) if s else None for m, s in members.items()},
            "offsets": {m: s.offsets if s else None for m, s in members.items()},
            "stats": msgspec.to_builtins(stats),
            "usage": {o: u.__dict__ for o, u in (await money.usage([o["offer_id"] for o in OFFERS])).items()},
            "claims": {o["offer_id"]: await money.all_member_claims(o["offer_id"]) for o in OFFERS},
        }
        return out
    finally:
        await r.aclose()


async def drive(base: str, settings: Settings) -> dict[str, int]:
    """Feedback, claims (some retried, some refused) and orders from another producer (one published
    twice). Returns the API's view: accepted claims per offer."""
    accepted = {"ltd": 0, "perk": 0}
    async with httpx.AsyncClient(base_url=base, timeout=10.0) as c:
        for o in OFFERS:
            assert (
                await c.put(f"/v1/admin/offers/{o['offer_id']}", json=o, headers=ADMIN)
            ).status_code == 200

        async def ready() -> bool:
            body = {"type": "impression", "member_id": MEMBERS[0], "offer_id": "perk", "request_id": "w"}
            return (await c.post("/v1/feedback", json=body, headers=SF)).status_code == 202

        assert await wait_for(ready, timeout_s=20, interval_s=0.2)
        for i, m in enumerate(MEMBERS):
            for kind in ("impression", "click"):
                body = {"type": kind, "member_id": m, "offer_id": "ltd", "request_id": f"r{i}"}
                assert (await c.post("/v1/feedback", json=body, headers=SF)).status_code == 202
            for attempt, key in enumerate([f"{m}-a", f"{m}-a", f"{m}-b", f"{m}-c"]):
                body = {"type": "claim", "member_id": m, "offer_id": "ltd", "request_id": f"r{i}"}
                r = await c.post("/v1/feedback", json=body, headers={**SF, "Idempotency-Key": key})
                assert r.status_code in (202, 409), r.text
                accepted["ltd"] += r.status_code == 202 and attempt != 1
            body = {"type": "claim", "member_id": m, "offer_id": "perk", "request_id": f"r{i}"}
            r = await c.post("/v1/feedback", json=body, headers={**SF, "Idempotency-Key": f"{m}-p"})
            assert r.status_code == 202, r.text
            accepted["perk"] += 1
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    await producer.start()
    try:
        for m in MEMBERS:
            order = ev.Order(event_id=f"{m}-order", member_id=m, event_ts=time.time(), amount=100.0)
            for _ in range(2):  # a producer retry: the same event twice
                await producer.send_and_wait(settings.events_topic, ev.encode(order), key=m.encode())
    finally:
        await producer.stop()
    return accepted


def test_money_survives_a_restart_and_a_total_loss(
    tmp_path: Path, broker: Service, topics: dict[str, str], unique: str
) -> None:
    data_dir = tmp_path / "redis"
    redis = start_redis(data_dir=data_dir)
    settings = Settings(
        environment="test",
        redis_url=redis.url,
        redis_prefix=f"t{unique}",
        kafka_bootstrap=broker.url,
        events_topic=topics["events"],
        dead_letter_topic=topics["dlq"],
        consumer_group=f"g{unique}",
        registry_dir=tmp_path / "registry",
        storefront_api_keys=[STOREFRONT_KEY],
        admin_api_keys=[ADMIN_KEY],
        catalog_poll_seconds=0.2,
        model_poll_seconds=0.5,
        deadline_ms=200.0,
    )
    worker = stack.start_worker(settings, log_dir=tmp_path)
    try:
        with live_server(settings) as base:
            accepted = asyncio.run(drive(base, settings))

        async def folded() -> bool:
            snap = await snapshot(settings)
            members = snap["members"]
            return all(
                s and s["orders_total"] == 1 and s["events_total"] >= 4 for s in members.values()
            ) and (snap["stats"].get("perk", [0, 0, 0])[2] == len(MEMBERS))

        assert asyncio.run(wait_for(folded, timeout_s=60, interval_s=0.5)), worker.tail()
        time.sleep(1.0)  # let the worker finish any batch in flight
        before = asyncio.run(snapshot(settings))
        assert before["usage"]["ltd"] == {"units": 5, "cost_milli": 50_000}  # budget for 5 of 6 units
        assert accepted["ltd"] == 5 and before["usage"]["perk"]["units"] == len(MEMBERS)
        assert all(s["orders_total"] == 1 and s["spend_total"] == 100.0 for s in before["members"].values())
        assert before["stats"]["ltd"][2] == 5  # claims counted once although retries republished them
        worker.stop()

        # 1. A restart on the same files (AOF, fsync every second) keeps everything.
        time.sleep(1.2)
        redis.kill()
        redis = start_redis(port=redis.port, data_dir=data_dir)
        assert asyncio.run(snapshot(settings)) == before

        # 2. A total loss: killed, files deleted, an empty Redis. Replay from the topic.
        redis.kill()
        shutil.rmtree(data_dir)
        redis = start_redis(port=redis.port, data_dir=data_dir)
        assert asyncio.run(snapshot(settings))["usage"] == {}
        replay = subprocess.run(
            [sys.executable, "-m", "benefits.cli", "replay"],
            env=stack.child_env(settings),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert replay.returncode == 0, replay.stderr[-2000:]
        after = asyncio.run(snapshot(settings))
        for part in before:
            assert after[part] == before[part], part
        # And the money rules still hold on the rebuilt state: a retry is the first outcome, the budget
        # is spent.
        with live_server(settings) as base:

            async def more() -> tuple[int, int]:
                async with httpx.AsyncClient(base_url=base, timeout=10.0) as c:
                    # The catalog is not in the event log: after a total loss it is loaded again (here
                    # by the admin API; a running replica writes its in-process copy back by itself).
                    for o in OFFERS:
                        r = await c.put(f"/v1/admin/offers/{o['offer_id']}", json=o, headers=ADMIN)
                        assert r.status_code == 200
                    body = {"type": "claim", "member_id": MEMBERS[0], "offer_id": "ltd", "request_id": "z"}
                    h = {**SF, "Idempotency-Key": f"{MEMBERS[0]}-a"}
                    retry = await c.post("/v1/feedback", json=body, headers=h)
                    new = await c.post("/v1/feedback", json={**body, "member_id": "fresh"}, headers=SF)
                    return retry.status_code, new.status_code

            assert asyncio.run(more()) == (202, 409)
        assert asyncio.run(snapshot(settings))["usage"] == before["usage"]
    finally:
        worker.stop()
        redis.stop()
