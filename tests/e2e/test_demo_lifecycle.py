"""The demo's lifecycle cases over real processes: the three members' events go through the broker, the
worker folds them into Redis, and the API (a freshly trained model, the demo catalogue) shows each member
their lifecycle offer with its sentence, and no other case's offer."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from benefits import demo_lifecycle
from features import lifecycle as lc
from features.decay import DAY
from features.demo_catalog import demo_catalog
from harness import stack
from harness.embedded import Service
from harness.stream_driver import read_members
from infra.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def running(
    redis_server: Service,
    broker: Service,
    topics: dict[str, str],
    unique: str,
    trained_registry: Path,
    tmp_path: Path,
) -> Iterator[tuple[Settings, str, stack.Proc]]:
    # A small catalogue (the demo's benefits, consults, lifecycle offers and a few coupons) and no
    # per-category cap: every eligible offer is in the answer, whatever the tiny test model's order.
    catalog = tmp_path / "catalog.json"
    offers = demo_catalog(time.time() - DAY, n_offers=40)
    catalog.write_text(json.dumps([o.model_dump(mode="json") for o in offers]))
    settings = Settings(
        environment="test",
        catalog_seed_path=catalog,
        slate_max_per_category=50,
        redis_url=redis_server.url,
        kafka_bootstrap=broker.url,
        events_topic=topics["events"],
        dead_letter_topic=topics["dlq"],
        consumer_group=f"life-{unique}",
        redis_prefix=f"t{unique}",
        registry_dir=trained_registry,
    )
    api = stack.api_settings(settings)
    worker = stack.start_worker(settings, tmp_path)
    server = stack.start_api(api, tmp_path)
    try:
        base = f"http://127.0.0.1:{api.port}"
        stack.wait_ready(base, server)
        yield settings, base, worker
    finally:
        server.stop()
        worker.stop()


def test_each_demo_member_gets_their_lifecycle_offer_and_sentence(
    running: tuple[Settings, str, stack.Proc], unique: str
) -> None:
    settings, base, worker = running
    now = time.time()
    cases = demo_lifecycle.cases(now, tag=f"-{unique}")
    demo_lifecycle.publish_and_wait(settings, cases, worker)

    # What the worker folded is what each case is about.
    assert settings.redis_url is not None
    stored = asyncio.run(
        read_members(settings.redis_url, settings.redis_prefix, [c.member_id for c in cases])
    )
    silent, renewing, climber = (stored[c.member_id].state for c in cases)
    assert lc.stage(silent, now) == "silent"
    days_left = lc.paid_days_left(renewing, now)
    assert days_left is not None and 4.9 < days_left < 5.0 and renewing.paid_plan == "PLUS"
    progress = lc.tier_progress(climber, now)
    assert (progress.tier, progress.next_tier, progress.gap) == ("silver", "gold", 100.0)

    key = settings.storefront_api_keys[0].get_secret_value()
    offers = {c.offer_id for c in cases}
    with httpx.Client(base_url=base, headers={"X-API-Key": key}, timeout=10.0) as client:
        for case in cases:
            # Every eligible offer (the tiny test model's order is not the point here).
            body = demo_lifecycle.recommend(client, case.member_id, limit=50)
            result = demo_lifecycle.outcome(case, body)
            assert result.position is not None, f"{case.offer_id} not shown to {case.member_id}"
            assert result.ok, (case.sentence, result.reasons)
            others = {o["offer_id"] for o in body["offers"]} & (offers - {case.offer_id})
            assert not others, f"{case.member_id} was shown {others}"
