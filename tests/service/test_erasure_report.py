"""``DELETE /v1/members/{id}`` over real HTTP (uvicorn) with the session's real Redis and broker and a real
event archive: the member leaves Redis, the archive and the retry records, the answer reports what was
removed where and what remains (claim counters, the topic until its retention), and a retry is harmless.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer

from features import events as ev
from features.state import new_state
from harness.embedded import Service, create_topics, free_port, topic_configs
from infra.archive import ArchiveWriter, Record, is_archive, read_archive
from infra.money_store import ClaimLimits, MoneyStore
from infra.redis_layout import MemberStore, StoredMember
from infra.registry import Registry
from infra.settings import Settings
from service.app import create_app
from tests.service.conftest import ADMIN, live_server, make_settings

pytestmark = [pytest.mark.integration]

T0 = 1_760_000_000.0
GONE, STAYS, LOOKALIKE = "gone-1", "stays-1", "gone-1:x"  # the look-alike's retry keys match GONE's glob


def _view(i: int, member: str, ts: float) -> ev.Event:
    return ev.PageView(event_id=f"{member}-{i}", member_id=member, event_ts=ts, page_type="home")


def _write_archive(root: Path, topic: str) -> int:
    """Two dates, two partitions; returns how many of GONE's rows it holds."""
    writer = ArchiveWriter(root, topic)
    events = [_view(i, m, T0 + i * 40_000) for i in range(6) for m in (GONE, STAYS)]
    records = [Record(i % 2, i, ev.encode(e), e) for i, e in enumerate(events)]
    writer.write(records, {0: len(records), 1: len(records)})
    return sum(e.member_id == GONE for e in events)


async def _seed_redis(settings: Settings) -> None:
    assert settings.redis_url
    r = aioredis.Redis.from_url(settings.redis_url)
    try:
        store = MemberStore(r, settings.layout)
        await store.put_members([StoredMember(state=new_state(m)) for m in (GONE, STAYS, LOOKALIKE)])
        money = MoneyStore(r, settings.redis_prefix)
        limits = ClaimLimits(
            inventory=10,
            budget_milli=None,
            cost_milli=0,
            max_claims_per_member=1,
            cooldown_s=0.0,
            expire_at=0,
        )
        for member in (GONE, LOOKALIKE):
            out = await money.claim("o-capped", member, f"{member}:claim", T0, time.time(), limits)
            assert out.accepted
    finally:
        await r.aclose()


async def _redis_facts(settings: Settings) -> dict[str, object]:
    assert settings.redis_url
    r = aioredis.Redis.from_url(settings.redis_url)
    try:
        money = MoneyStore(r, settings.redis_prefix)
        return {
            "gone_state": await r.exists(settings.layout.member_key(GONE)),
            "stays_state": await r.exists(settings.layout.member_key(STAYS)),
            "gone_claims": await money.member_claims("o-capped", GONE),
            "gone_outcome": await money.outcome("o-capped", GONE, f"{GONE}:claim"),
            "lookalike_outcome": await money.outcome("o-capped", LOOKALIKE, f"{LOOKALIKE}:claim"),
        }
    finally:
        await r.aclose()


async def _tombstones(settings: Settings) -> list[bytes]:
    consumer = AIOKafkaConsumer(
        settings.events_topic, bootstrap_servers=settings.kafka_bootstrap, auto_offset_reset="earliest"
    )
    await consumer.start()
    keys: list[bytes] = []
    try:
        async with asyncio.timeout(20):
            while not keys:
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    keys += [r.key for r in records if r.value is None and r.key is not None]
    finally:
        await consumer.stop()
    return keys


def _ready(app: object) -> bool:
    return bool(app.state.resources.feedback.publisher.ready)  # type: ignore[attr-defined]


def _serve_and_delete(settings: Settings, times: int = 1) -> list[httpx.Response]:
    app = create_app(settings)
    with live_server(settings, app) as base, httpx.Client(base_url=base, timeout=30) as c:
        deadline = time.monotonic() + 20
        while not _ready(app) and time.monotonic() < deadline:
            time.sleep(0.05)
        return [c.delete(f"/v1/members/{GONE}", headers=ADMIN) for _ in range(times)]


@pytest.fixture
def erasure_settings(
    redis_server: Service, broker: Service, registry: Registry, unique: str, tmp_path: Path
) -> Settings:
    topic = f"member-events-erasure-{unique}"
    # The topic as the project creates it: an explicit retention (1 hour here).
    asyncio.run(create_topics(broker.url, {topic: 2}, configs=topic_configs(topic, 3600)))
    return make_settings(
        redis_server.url,
        registry.root,
        unique,
        kafka_bootstrap=broker.url,
        events_topic=topic,
        archive_dir=tmp_path / "archive",
        events_retention_seconds=86_400,
    )


def test_erasure_removes_the_member_everywhere_and_reports_it(erasure_settings: Settings) -> None:
    settings = erasure_settings
    rows = _write_archive(settings.archive_dir, settings.events_topic)
    asyncio.run(_seed_redis(settings))
    first, again = _serve_and_delete(settings, times=2)

    assert first.status_code == 200, first.text
    body = first.json()
    assert body["status"] == "erased" and body["member_id"] == GONE and body["tombstone"] is True
    assert body["redis"] == {
        "status": "removed",
        "keys_deleted": 1,
        "claim_outcomes_deleted": 1,
        "detail": body["redis"]["detail"],
    }
    assert body["keys_deleted"] == 1
    money = body["money_state"]
    assert money["status"] == "kept" and money["offers"] == ["o-capped"] and money["claim_counters_kept"] == 1
    assert "cap" in money["reason"]
    archive = body["archive"]
    assert archive["status"] == "removed" and archive["rows_removed"] == rows
    assert archive["files_rewritten"] >= 2 and archive["archive_dir"] == str(settings.archive_dir)
    assert body["training_sets"]["status"] == "none_kept"
    kafka = body["kafka"]
    assert kafka["topic"] == settings.events_topic and kafka["tombstone_published"] is True
    # What the broker says about the topic wins over the setting (86,400 s).
    assert kafka["retention_source"] == "broker" and kafka["retention_seconds"] == 3600
    assert kafka["gone_by"] > body["erased_at"]
    assert body["not_covered"]

    # The archive holds every other row and none of the member's.
    left = read_archive(settings.archive_dir)
    assert {e.member_id for e in left} == {STAYS} and len(left) == 6
    facts = asyncio.run(_redis_facts(settings))
    assert facts["gone_state"] == 0 and facts["stays_state"] == 1
    assert facts["gone_claims"][0] == 1  # type: ignore[index]  # the cap's record stays
    assert facts["gone_outcome"] is None and facts["lookalike_outcome"] is not None
    assert GONE.encode() in asyncio.run(_tombstones(settings))

    # A retry finds nothing more to remove and says so.
    assert again.status_code == 200
    retry = again.json()
    assert retry["redis"]["status"] == "nothing_stored" and retry["archive"]["status"] == "nothing_stored"
    assert retry["money_state"]["status"] == "kept"


def test_without_the_archive_the_report_says_pending(erasure_settings: Settings, tmp_path: Path) -> None:
    settings = erasure_settings.model_copy(update={"archive_dir": tmp_path / "not-here"})
    (response,) = _serve_and_delete(settings)
    assert response.status_code == 200, response.text
    archive = response.json()["archive"]
    assert archive["status"] == "pending" and archive["archive_dir"] is None
    assert "archiver" in archive["detail"]
    assert not is_archive(settings.archive_dir)


def test_broker_down_answers_503_after_erasing_redis(erasure_settings: Settings) -> None:
    settings = erasure_settings.model_copy(update={"kafka_bootstrap": f"127.0.0.1:{free_port()}"})
    rows = _write_archive(settings.archive_dir, settings.events_topic)
    asyncio.run(_seed_redis(settings))
    app = create_app(settings)
    with live_server(settings, app) as base, httpx.Client(base_url=base, timeout=30) as c:
        response = c.delete(f"/v1/members/{GONE}", headers=ADMIN)
    assert response.status_code == 503
    assert "tombstone was not published" in response.json()["message"]
    # Retried later: the archive is untouched until the tombstone is out (the retry does it all).
    assert sum(e.member_id == GONE for e in read_archive(settings.archive_dir)) == rows
