"""A Redis that comes back empty is detected (real HTTP, a private real Redis restarted on its port
without its data): answers say ``degraded_cause: state_lost``, ``/readyz`` and the metric report it,
an error line is logged. Before, every member silently became a ``cold_start`` with ``degraded: false``.
"""

from __future__ import annotations

import asyncio
import logging
import time

import httpx
import pytest

from harness.embedded import restart_redis_empty, start_redis
from infra.registry import Registry
from tests.service.conftest import SF, live_server, make_settings
from tests.service.test_api import put_state

pytestmark = [pytest.mark.integration]


def test_an_emptied_redis_is_reported_as_state_lost(
    registry: Registry, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    redis = start_redis()
    settings = make_settings(redis.url, registry.root, unique)
    asyncio.run(put_state(settings, "loyal"))
    try:
        with live_server(settings) as base, httpx.Client(base_url=base, timeout=5.0) as c:
            body = c.post("/v1/recommend", json={"member_id": "loyal"}, headers=SF).json()
            assert body["mode"] == "personalised" and body["degraded"] is False
            cold = c.post("/v1/recommend", json={"member_id": "new-member"}, headers=SF).json()
            assert cold["mode"] == "cold_start" and cold["degraded"] is False  # unknown, nothing lost yet
            assert c.get("/readyz").json()["state_lost"] is False

            redis = restart_redis_empty(redis)  # no persistence: it comes back empty, on the same port
            with caplog.at_level(logging.ERROR, logger="service.epoch"):
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    body = c.post("/v1/recommend", json={"member_id": "loyal"}, headers=SF).json()
                    if body["degraded_cause"] == "state_lost":
                        break
                    time.sleep(0.2)
            assert body["degraded_cause"] == "state_lost" and body["degraded"] is True, body
            assert body["mode"] == "cold_start" and body["offers"]
            ready = c.get("/readyz").json()
            assert ready["state_lost"] is True
            assert "benefits_store_state_lost 1.0" in c.get("/metrics").text
            assert any("Redis lost its data" in r.getMessage() for r in caplog.records)
    finally:
        redis.stop()
