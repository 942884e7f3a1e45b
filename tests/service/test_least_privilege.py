"""Least privilege over real HTTP: ``explain`` needs the support or admin scope (on the recommend fast
path and on the FastAPI route it stands in for), and signed member tokens bind storefront requests
(recommend, feedback, claims, feedback batches) to the member they are for."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import pytest

from harness.embedded import Service
from infra.settings import Settings
from service.app import create_app
from service.fastpath import RecommendFastPath
from tests.service.conftest import ADMIN, SF, SUPPORT, live_server

pytestmark = [pytest.mark.integration]

SECRET = "a-member-token-secret-of-32-chars!!"


def _app(settings: Settings, fast_path: bool) -> Any:
    app = create_app(settings)
    assert any(m.cls is RecommendFastPath for m in app.user_middleware)
    if not fast_path:
        # Serve recommend through the FastAPI route instead (what runs before resources exist).
        app.user_middleware = [m for m in app.user_middleware if m.cls is not RecommendFastPath]
    return app


@pytest.fixture(params=[True, False], ids=["fast-path", "fastapi-route"])
def base(request: pytest.FixtureRequest, settings: Settings) -> Iterator[str]:
    with live_server(settings, _app(settings, request.param)) as url:
        yield url


def test_explain_needs_the_support_or_admin_scope(base: str) -> None:
    body = {"member_id": "lp-1", "explain": True}
    r = httpx.post(f"{base}/v1/recommend", json=body, headers=SF)
    assert r.status_code == 403 and r.json()["error"] == "forbidden"
    assert "explain" in r.json()["message"] and "support" in r.json()["message"]
    for headers in (SUPPORT, ADMIN):
        r = httpx.post(f"{base}/v1/recommend", json=body, headers=headers)
        assert r.status_code == 200, r.text
        assert "excluded" in r.json()
    # Support and admin keys are for explanations only: not traffic, not feedback.
    r = httpx.post(f"{base}/v1/recommend", json={"member_id": "lp-1"}, headers=SUPPORT)
    assert r.status_code == 403 and "explain: true" in r.json()["message"]
    r = httpx.post(f"{base}/v1/recommend", json={}, headers=ADMIN)
    assert r.status_code == 403
    r = httpx.post(f"{base}/v1/recommend", json={"member_id": "lp-1", "explain": True}, headers=SUPPORT)
    assert r.status_code == 200
    fb = {"type": "click", "member_id": "lp-1", "offer_id": "x", "request_id": "r"}
    assert httpx.post(f"{base}/v1/feedback", json=fb, headers=SUPPORT).status_code == 403
    assert httpx.get(f"{base}/v1/admin/offers", headers=SUPPORT).status_code == 403
    # The storefront key keeps its ordinary recommend.
    assert httpx.post(f"{base}/v1/recommend", json={"member_id": "lp-1"}, headers=SF).status_code == 200


def _token(member_id: str, exp_in_s: float = 300, secret: str = SECRET) -> str:
    return jwt.encode({"sub": member_id, "exp": int(time.time() + exp_in_s)}, secret, algorithm="HS256")


@pytest.fixture(params=[True, False], ids=["fast-path", "fastapi-route"])
def token_base(
    request: pytest.FixtureRequest, settings: Settings, broker: Service, topics: dict[str, str]
) -> Iterator[str]:
    s = settings.model_copy(
        update={
            "kafka_bootstrap": broker.url,
            "events_topic": topics["events"],
            "member_token_secret": Settings(member_token_secret=SECRET).member_token_secret,
            "member_tokens_required": True,
        }
    )
    with live_server(s, _app(s, request.param)) as url:
        yield url


def _status(base: str, path: str, body: dict[str, Any], token: str | None) -> httpx.Response:
    headers = {**SF, **({"X-Member-Token": token} if token is not None else {})}
    return httpx.post(f"{base}{path}", json=body, headers=headers, timeout=10)


def test_member_tokens_bind_storefront_requests_to_their_member(token_base: str) -> None:
    base = token_base
    rec = {"member_id": "tok-1"}
    wrong = [
        (None, "required"),
        (_token("tok-2"), "another member"),
        (_token("tok-1", exp_in_s=-60), "expired"),
        (_token("tok-1", secret="another-secret-of-at-least-32-chars"), "not a valid"),
        (jwt.encode({"sub": "tok-1"}, SECRET, algorithm="HS256"), "not a valid"),  # no exp
        ("garbage", "not a valid"),
    ]
    for token, why in wrong:
        r = _status(base, "/v1/recommend", rec, token)
        assert r.status_code == 403 and why in r.json()["message"], (token, r.text)
    r = _status(base, "/v1/recommend", rec, _token("tok-1"))
    assert r.status_code == 200, r.text
    answer = r.json()
    offer = answer["offers"][0]
    fb = {"member_id": "tok-1", "offer_id": offer["offer_id"], "request_id": answer["request_id"]}
    claim = {"coupon": "claim", "benefit": "claim", "consult": "claim"}[offer["kind"]]
    for kind in ("click", claim):
        for token, why in wrong[:3]:
            r = _status(base, "/v1/feedback", {**fb, "type": kind}, token)
            assert r.status_code == 403 and why in r.json()["message"], (kind, token, r.text)
        r = _status(base, "/v1/feedback", {**fb, "type": kind}, _token("tok-1"))
        assert r.status_code == 202, r.text
    batch = {
        "member_id": "tok-1",
        "request_id": answer["request_id"],
        "items": [{"offer_id": offer["offer_id"]}],
    }
    assert _status(base, "/v1/feedback/batch", batch, _token("tok-2")).status_code == 403
    assert _status(base, "/v1/feedback/batch", batch, None).status_code == 403
    assert _status(base, "/v1/feedback/batch", batch, _token("tok-1")).status_code == 202


def test_tokens_required_needs_a_secret_and_a_strong_one() -> None:
    with pytest.raises(ValueError, match="MEMBER_TOKEN_SECRET"):
        Settings(member_tokens_required=True)
    with pytest.raises(ValueError, match="32 characters"):
        Settings(member_token_secret="short")
