"""Slow clients cannot starve the API (real HTTP under uvicorn + httptools, real Redis): connections
that send a recommend's headers and then only part of the body, with and without an API key, hold no
in-flight slot. Real page views meanwhile stay personalised and ``/readyz`` answers; a keyless slow
client gets its 401 from the headers alone, a keyed one a 408 once the body deadline passes."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from harness.slowclient import open_slow_body, read_status
from infra.settings import Settings
from tests.service.conftest import SF, STOREFRONT_KEY, live_server
from tests.service.test_api import put_state

pytestmark = [pytest.mark.integration]

SLOW = 40  # more than max_in_flight (32): before the fix, 32 of these shed every real request


def test_slow_bodies_hold_no_slot_and_time_out(settings: Settings) -> None:
    s = settings.model_copy(update={"body_read_timeout_ms": 2000, "max_in_flight": 32})
    asyncio.run(put_state(s, "shopper"))
    with live_server(s) as base:
        port = int(base.rsplit(":", 1)[1])
        t0 = time.monotonic()
        keyless = [open_slow_body(port, None) for _ in range(SLOW // 2)]
        keyed = [open_slow_body(port, STOREFRONT_KEY) for _ in range(SLOW // 2)]
        try:
            with httpx.Client(base_url=base, timeout=5) as c:
                modes = []
                for _ in range(20):
                    r = c.post("/v1/recommend", json={"member_id": "shopper"}, headers=SF)
                    assert r.status_code == 200, r.text
                    body = r.json()
                    modes.append((body["mode"], body["degraded"]))
                ready = c.get("/readyz")
                fb = c.post(
                    "/v1/feedback",
                    json={"type": "click", "member_id": "shopper", "offer_id": "nope", "request_id": "r"},
                    headers=SF,
                )
            # All of that happened while every slow connection was still open and unanswered (keyed).
            assert time.monotonic() - t0 < 2.0, "too slow to prove anything: the slow bodies timed out first"
            assert modes == [("personalised", False)] * 20
            assert ready.status_code == 200 and ready.json()["ready"] is True
            assert ready.json()["in_flight"] <= 1
            assert fb.status_code == 404, fb.text  # an unknown offer, not a 503 "overloaded"
            assert [read_status(k) for k in keyless] == [401] * len(keyless)
            assert [read_status(k) for k in keyed] == [408] * len(keyed)
            assert time.monotonic() - t0 >= 1.9  # the 408s came at the deadline, not before
            metrics = httpx.get(f"{base}/metrics").text
            assert f'benefits_http_rejected_total{{cause="body_timeout"}} {float(len(keyed))}' in metrics
            assert 'cause="overloaded"' not in metrics
            # Slots came back: a full burst of real requests still gets personalised answers.
            r = httpx.post(f"{base}/v1/recommend", json={"member_id": "shopper"}, headers=SF)
            assert r.json()["mode"] == "personalised"
        finally:
            for sock in keyless + keyed:
                sock.close()
