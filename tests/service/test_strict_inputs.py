"""Strict inputs over real HTTP (uvicorn + httptools, real Redis and broker): ids match in full (no
trailing newline), event times are bounded, bodies are not coerced, and a request without a valid key
gets its 401 before any byte of its body is parsed."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from features import events as ev
from harness.embedded import Service
from infra.settings import Settings
from tests.service.conftest import ADMIN, SF, live_server

pytestmark = [pytest.mark.integration]


@pytest.fixture
def base(settings: Settings, broker: Service, topics: dict[str, str]) -> Iterator[str]:
    s = settings.model_copy(update={"kafka_bootstrap": broker.url, "events_topic": topics["events"]})
    with live_server(s) as url:
        yield url


def _fields(r: httpx.Response) -> list[str]:
    assert r.status_code == 422, (r.status_code, r.text)
    body = r.json()
    assert body["error"] == "invalid_request"
    return [f["field"] for f in body["fields"]]


def _feedback(**over: Any) -> dict[str, Any]:
    return {"type": "impression", "member_id": "m1", "offer_id": "o1", "request_id": "r1", **over}


@pytest.mark.parametrize("member_id", ["nl-0\n", "nl-0\r\n", "nl-0\n\n", "\nnl-0"])
def test_ids_with_a_newline_are_refused(base: str, member_id: str) -> None:
    r = httpx.post(f"{base}/v1/recommend", json={"member_id": member_id}, headers=SF)
    assert _fields(r) == ["member_id"]
    r = httpx.post(f"{base}/v1/feedback", json=_feedback(member_id=member_id), headers=SF)
    assert _fields(r) == ["member_id"]
    r = httpx.post(f"{base}/v1/feedback", json=_feedback(offer_id="o1\n"), headers=SF)
    assert _fields(r) == ["offer_id"]


def test_event_ids_with_a_newline_are_schema_errors() -> None:
    raw = b'{"type":"page_view","event_id":"e1","member_id":"nl-0\\n","event_ts":1.7e9,"page_type":"home"}'
    with pytest.raises(ev.InvalidEvent) as err:
        ev.decode(raw)
    assert err.value.reason == "schema" and "member_id" in err.value.detail


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"member_id": "m1", "limit": "5"}, "limit"),
        ({"member_id": "m1", "limit": True}, "limit"),
        # A fraction is refused; 5.0 is the integer 5 (JSON has one number type, and JSON Schema's
        # "integer" admits it: schemathesis' positive_data_acceptance holds the API to that).
        ({"member_id": "m1", "limit": 5.5}, "limit"),
        ({"member_id": "m1", "explain": "yes"}, "explain"),
        ({"member_id": "m1", "explain": 0}, "explain"),
        ({"member_id": "m1", "explain": 1}, "explain"),
        ({"member_id": 12345}, "member_id"),
    ],
)
def test_recommend_body_is_not_coerced(base: str, body: dict[str, Any], field: str) -> None:
    assert _fields(httpx.post(f"{base}/v1/recommend", json=body, headers=SF)) == [field]


def test_an_integral_number_is_an_integer(base: str) -> None:
    r = httpx.post(f"{base}/v1/recommend", json={"member_id": "m1", "limit": 2.0}, headers=SF)
    assert r.status_code == 200 and len(r.json()["offers"]) <= 2
    r = httpx.post(f"{base}/v1/feedback", json=_feedback(position=3.0, offer_id="nope"), headers=SF)
    assert r.status_code == 404, r.text  # validated (3.0 is 3), then the unknown offer


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"position": "3"}, "position"),
        ({"position": True}, "position"),
        ({"position": 2.5}, "position"),
        ({"event_ts": "1767225600"}, "event_ts"),
        ({"propensity": "0.5"}, "propensity"),
    ],
)
def test_feedback_body_is_not_coerced(base: str, over: dict[str, Any], field: str) -> None:
    assert _fields(httpx.post(f"{base}/v1/feedback", json=_feedback(**over), headers=SF)) == [field]


def test_event_times_are_bounded(base: str, settings: Settings) -> None:
    now = time.time()
    future = now + settings.event_max_future_skew_seconds + 60
    expired = now - settings.member_ttl_seconds - 60
    for ts in (future, 4102444800.0, expired):
        r = httpx.post(f"{base}/v1/feedback", json=_feedback(event_ts=ts), headers=SF)
        assert _fields(r) == ["event_ts"], ts
    # Inside the bounds (a little clock skew ahead, or a day old) it is accepted.
    shown = httpx.post(f"{base}/v1/recommend", json={"member_id": "m1"}, headers=SF).json()["offers"][0]
    for ts in (now + settings.event_max_future_skew_seconds / 2, now - 86400):
        body = _feedback(event_ts=ts, offer_id=shown["offer_id"])
        r = httpx.post(f"{base}/v1/feedback", json=body, headers=SF, timeout=20)
        assert r.status_code == 202, r.text


@pytest.mark.parametrize("path", ["/v1/recommend", "/v1/feedback", "/v1/admin/offers"])
@pytest.mark.parametrize("headers", [{}, {"X-API-Key": "not-a-configured-key"}])
def test_no_valid_key_is_401_before_the_body_is_parsed(base: str, path: str, headers: dict[str, str]) -> None:
    for raw in (b"{not json", b"\xff\xfe", b'{"member_id": 1}'):
        r = httpx.post(f"{base}{path}", content=raw, headers={"content-type": "application/json", **headers})
        assert r.status_code == 401, (path, raw, r.status_code, r.text)
        assert r.json()["error"] == "unauthorized"


def test_a_valid_key_of_the_wrong_scope_is_still_403(base: str) -> None:
    r = httpx.post(f"{base}/v1/recommend", content=b"{not json", headers=ADMIN)
    assert r.status_code == 403, r.text


def test_feedback_batch_is_strict_and_time_bounded(base: str) -> None:
    batch = {"member_id": "m1", "request_id": "r1", "items": [{"offer_id": "o1"}]}
    r = httpx.post(f"{base}/v1/feedback/batch", json={**batch, "event_ts": 4102444799.0}, headers=SF)
    assert _fields(r) == ["event_ts"]
    r = httpx.post(
        f"{base}/v1/feedback/batch",
        json={**batch, "items": [{"offer_id": "o1", "position": "2"}]},
        headers=SF,
    )
    assert _fields(r) == ["items.0.position"]
    r = httpx.post(f"{base}/v1/feedback/batch", json={**batch, "member_id": "m1\n"}, headers=SF)
    assert _fields(r) == ["member_id"]
