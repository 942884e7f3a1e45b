"""Degradation: Redis down, Redis hung, no model. A valid request still gets a 200 with offers,
flagged ``degraded`` with its cause; some of it over real HTTP (uvicorn in a thread)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest
import redis

from harness.embedded import free_port, start_redis
from infra.registry import Registry
from infra.settings import Settings
from service.app import create_app
from tests.service.conftest import SF, live_server, make_settings, running

pytestmark = [pytest.mark.integration]


def test_redis_down_answers_fallback_over_http(registry: Registry, unique: str) -> None:
    closed = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    settings = make_settings(closed, registry.root, unique)
    with live_server(settings) as base, httpx.Client(base_url=base, timeout=5.0) as c:
        assert c.get("/healthz").status_code == 200
        ready = c.get("/readyz")
        assert ready.status_code == 503 and ready.json()["redis"] is False
        for _ in range(5):  # also after the breaker opens
            r = c.post("/v1/recommend", json={"member_id": "m1", "limit": 4}, headers=SF)
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["degraded"] and body["degraded_cause"] == "state_unavailable"
            assert body["mode"] == "fallback" and len(body["offers"]) == 4
        # Offers restricted to higher tiers are never offered to an unknown member.
        assert not [o for o in body["offers"] if o["offer_id"] in ("benefit-priority_delivery",)]
        metrics = c.get("/metrics").text
        assert 'benefits_recommend_degraded_total{cause="state_unavailable"}' in metrics


@pytest.mark.anyio
async def test_hung_redis_answers_within_the_deadline(registry: Registry, unique: str) -> None:
    svc = start_redis()  # a private one: we are going to freeze it
    try:
        settings = make_settings(svc.url, registry.root, unique, deadline_ms=60.0, redis_timeout_ms=1000)
        async with running(create_app(settings)) as c:
            ok = await c.post("/v1/recommend", json={"member_id": "m1"}, headers=SF)
            assert ok.status_code == 200 and not ok.json()["degraded"]
            redis.Redis.from_url(svc.url).execute_command("CLIENT", "PAUSE", "1500", "ALL")
            t0 = time.perf_counter()
            r = await c.post("/v1/recommend", json={"member_id": "m1"}, headers=SF)
            elapsed = time.perf_counter() - t0
            assert r.status_code == 200
            assert r.json()["degraded_cause"] == "state_timeout" and r.json()["offers"]
            assert elapsed < 0.5, elapsed
            await asyncio.sleep(1.7)  # pause over, breaker closed again
            r = await c.post("/v1/recommend", json={"member_id": "m1"}, headers=SF)
            assert r.json()["degraded"] is False, r.json()
    finally:
        svc.stop()


@pytest.mark.anyio
async def test_no_model_answers_non_personalised(redis_server: object, tmp_path: Path, unique: str) -> None:
    url = redis_server.url  # type: ignore[attr-defined]
    settings: Settings = make_settings(url, tmp_path / "empty-registry", unique)
    async with running(create_app(settings)) as c:
        r = await c.post("/v1/recommend", json={"member_id": "m1", "limit": 5}, headers=SF)
        assert r.status_code == 200
        body = r.json()
        assert body["degraded"] and body["degraded_cause"] == "no_model" and body["model_version"] is None
        assert len(body["offers"]) == 5
        assert (await c.get("/readyz")).status_code == 503


def test_redis_down_admin_routes_answer_503_not_500(registry: Registry, unique: str) -> None:
    """Every route that touches a store maps its failure to one 503 shape (service.app), none a 500."""
    from tests.service.conftest import ADMIN

    closed = f"redis://127.0.0.1:{free_port()}/0"
    settings = make_settings(closed, registry.root, unique)
    offer = {"offer_id": "c-down", "kind": "coupon", "subtype": "threshold", "title": "t", "value": 5.0}
    with live_server(settings) as base, httpx.Client(base_url=base, timeout=5.0) as c:
        calls = [
            c.get("/v1/admin/offers", headers=ADMIN),
            c.get("/v1/admin/offers/c-down", headers=ADMIN),
            c.post("/v1/admin/offers", json=offer, headers=ADMIN),
            c.put("/v1/admin/offers/c-down", json=offer, headers=ADMIN),
            c.delete("/v1/admin/offers/c-down", headers=ADMIN),
        ]
        for r in calls:
            assert r.status_code == 503, (r.request.method, r.request.url.path, r.status_code, r.text)
            assert r.json()["error"] == "unavailable"
            assert "Traceback" not in r.text
