"""End to end over real processes: broker → worker → Redis → API over HTTP, with a freshly trained model.

It runs twice: on a single Redis and on a three-master Redis Cluster. The test starts its own Redis
(or cluster) and broker (session fixtures), trains a tiny model into a temporary
registry, runs ``benefits worker`` and ``benefits serve`` as subprocesses, publishes a member's events
and watches (1) the member's state appear in Redis equal to the offline fold and (2) ``/v1/recommend``
change over real HTTP.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from benefits.demo import _publish
from features import events as ev
from features.state import fold
from harness import stack
from harness.embedded import Service
from infra.redis_client import open_client
from infra.redis_layout import MemberStore, StoredMember
from infra.settings import Settings
from tests.cluster.conftest import Backend
from tests.core.test_fold import assert_states_equal

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def running_stack(
    backend: Backend,
    broker: Service,
    topics: dict[str, str],
    unique: str,
    trained_registry: Path,
    tmp_path: Path,
) -> Iterator[tuple[Settings, str]]:
    settings = Settings(
        environment="test",
        redis_url=backend.url,
        redis_cluster=backend.cluster,
        kafka_bootstrap=broker.url,
        events_topic=topics["events"],
        dead_letter_topic=topics["dlq"],
        consumer_group=f"e2e-{unique}",
        redis_prefix=f"t{unique}",
        registry_dir=trained_registry,
    )
    api = stack.api_settings(settings)
    worker = stack.start_worker(settings, tmp_path)
    server = stack.start_api(api, tmp_path)
    try:
        base = f"http://127.0.0.1:{api.port}"
        stack.wait_ready(base, server)
        yield settings, base
    finally:
        server.stop()
        worker.stop()


def _recommend(base: str, settings: Settings, member_id: str) -> dict[str, object]:
    key = settings.storefront_api_keys[0].get_secret_value()
    r = httpx.post(
        f"{base}/v1/recommend",
        json={"member_id": member_id, "context": {"page_type": "home"}, "limit": 5},
        headers={"X-API-Key": key},
        timeout=5.0,
    )
    assert r.status_code == 200, r.text
    body: dict[str, object] = r.json()
    return body


def _ids(body: dict[str, object]) -> list[str]:
    return [o["offer_id"] for o in body["offers"]]  # type: ignore[index, union-attr]


async def _state(settings: Settings, member_id: str) -> StoredMember | None:
    assert settings.redis_url is not None
    client = await open_client(settings.redis_url, cluster=settings.redis_cluster, timeout_ms=2000)
    try:
        return await MemberStore(client, settings.layout).get_member(member_id)
    finally:
        await client.aclose()


def test_events_reach_redis_and_change_the_ranking(running_stack: tuple[Settings, str]) -> None:
    settings, base = running_stack
    member = "e2e-member-1"
    now = time.time()
    history: list[ev.Event] = [
        ev.TierChanged(event_id="h0", member_id=member, event_ts=now - 3600, tier="gold"),
        ev.PageView(event_id="h1", member_id=member, event_ts=now - 1800, page_type="home"),
        ev.Order(
            event_id="h2", member_id=member, event_ts=now - 1700, amount=120.0, categories=["electronics"]
        ),
    ]
    asyncio.run(_publish(settings, history))
    deadline = time.monotonic() + 60
    stored = None
    while time.monotonic() < deadline:
        stored = asyncio.run(_state(settings, member))
        if stored is not None and stored.state.events_total == len(history):
            break
        time.sleep(0.1)
    assert stored is not None, "the worker never wrote the member's state"
    assert_states_equal(stored.state, fold(list(history)))

    before = _recommend(base, settings, member)
    assert before["model_version"] and not before["degraded"]
    kinds = {o["kind"] for o in before["offers"]}  # type: ignore[union-attr]
    assert len(kinds) >= 2, f"slate should mix offer kinds, got {kinds}"

    burst = [
        ev.PageView(
            event_id=f"b{i}", member_id=member, event_ts=time.time(), page_type="category", category="baby"
        )
        for i in range(8)
    ]
    asyncio.run(_publish(settings, burst))
    t0 = time.monotonic()
    after = before
    while time.monotonic() - t0 < 10:
        after = _recommend(base, settings, member)
        if _ids(after) != _ids(before):
            break
        time.sleep(0.05)
    assert _ids(after) != _ids(before), "ranking did not react to the member's own events"
    stored = asyncio.run(_state(settings, member))
    assert stored is not None and stored.state.events_total == len(history) + len(burst)
