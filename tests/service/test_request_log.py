"""Log volume over real HTTP: ordinary recommend lines are sampled (``request_log_sample_rate``), while
degraded and refused requests are always logged."""

from __future__ import annotations

import logging
from pathlib import Path

import httpx
import pytest

from harness.embedded import Service
from infra.registry import Registry
from tests.service.conftest import SF, live_server, make_settings

pytestmark = [pytest.mark.integration]


def _lines(caplog: pytest.LogCaptureFixture, msg: str) -> list[dict[str, object]]:
    return [r.fields for r in caplog.records if r.name == "service.requests" and r.getMessage() == msg]  # type: ignore[attr-defined]


def test_ordinary_lines_are_sampled_refused_and_degraded_always_logged(
    redis_server: Service, registry: Registry, tmp_path: Path, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="service.requests")
    off = make_settings(redis_server.url, registry.root, unique, request_log_sample_rate=0.0)
    with live_server(off) as base, httpx.Client(base_url=base, timeout=10) as c:
        for i in range(10):
            r = c.post("/v1/recommend", json={"member_id": f"log-{i}"}, headers=SF)
            assert r.status_code == 200 and not r.json()["degraded"]
        assert _lines(caplog, "recommend") == []
        assert c.post("/v1/recommend", json={"member_id": "x"}).status_code == 401
        assert c.post("/v1/recommend", json={"member_id": 5}, headers=SF).status_code == 422
        assert (
            c.post("/v1/recommend", json={"member_id": "x", "explain": True}, headers=SF).status_code == 403
        )
        assert c.get("/v1/admin/offers", headers=SF).status_code == 403
    refused = _lines(caplog, "refused")
    assert [(f["path"], f["status"]) for f in refused] == [
        ("/v1/recommend", 401), ("/v1/recommend", 422), ("/v1/recommend", 403), ("/v1/admin/offers", 403),
    ]  # fmt: skip
    assert all("member" not in f and "member_id" not in f for f in refused)

    # No model promoted: every answer is degraded (no_model), so every one is logged at rate 0.
    caplog.clear()
    empty = tmp_path / "empty-registry"
    empty.mkdir()
    degraded = make_settings(redis_server.url, empty, f"{unique}d", request_log_sample_rate=0.0)
    with live_server(degraded) as base, httpx.Client(base_url=base, timeout=10) as c:
        for i in range(3):
            assert c.post("/v1/recommend", json={"member_id": f"d-{i}"}, headers=SF).json()["degraded"]
    lines = _lines(caplog, "recommend")
    assert len(lines) == 3 and {f["degraded_cause"] for f in lines} == {"no_model"}
    assert {f["sample_rate"] for f in lines} == {1.0}

    # At rate 1 every ordinary request has its line, as before.
    caplog.clear()
    full = make_settings(redis_server.url, registry.root, f"{unique}f", request_log_sample_rate=1.0)
    with live_server(full) as base, httpx.Client(base_url=base, timeout=10) as c:
        for i in range(4):
            assert c.post("/v1/recommend", json={"member_id": f"f-{i}"}, headers=SF).status_code == 200
    assert len(_lines(caplog, "recommend")) == 4
