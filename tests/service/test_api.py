"""The HTTP API in process (ASGI transport, real Redis, real ONNX model, lifespan running)."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from features import events as ev
from features.state import new_state
from infra.redis_layout import MemberStore, StoredMember
from infra.settings import Settings
from service.app import create_app
from tests.service.conftest import ADMIN, SF, SUPPORT, running

pytestmark = [pytest.mark.anyio, pytest.mark.integration]


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with running(create_app(settings)) as c:
        yield c


async def put_state(settings: Settings, member_id: str, **attrs: Any) -> None:
    assert settings.redis_url
    r = aioredis.Redis.from_url(settings.redis_url)
    try:
        state = new_state(member_id)
        from features.state import apply

        apply(state, ev.PageView(event_id="e1", member_id=member_id, event_ts=1.76e9, page_type="home"))
        for k, v in attrs.items():
            setattr(state, k, v)
        await MemberStore(r, settings.layout).put_members([StoredMember(state=state)])
    finally:
        await r.aclose()


async def recommend(c: httpx.AsyncClient, member_id: str = "m1", **body: Any) -> dict[str, Any]:
    headers = SUPPORT if body.get("explain") else SF
    r = await c.post("/v1/recommend", json={"member_id": member_id, **body}, headers=headers)
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


async def test_unknown_member_gets_a_cold_start_ranking(client: httpx.AsyncClient) -> None:
    body = await recommend(client, "never-seen", limit=6)
    assert body["mode"] == "cold_start" and not body["degraded"] and body["model_version"] == "v1"
    assert len(body["offers"]) == 6 and body["candidates"] == 200
    assert len({o["kind"] for o in body["offers"]}) >= 2
    assert [o["position"] for o in body["offers"]] == list(range(6))
    for o in body["offers"]:
        assert o["reasons"] and o["propensity"] == 1.0 and math.isfinite(o["score"])
    assert len(body["request_id"]) == 32


async def test_known_member_is_personalised_and_consent_off_is_not(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    await put_state(settings, "known")
    await put_state(settings, "private", personalization_consent=False)
    body = await recommend(client, "known")
    assert body["mode"] == "personalised" and body["model_version"] == "v1"
    body = await recommend(client, "private")
    assert body["mode"] == "non_personalised" and body["model_version"] is None and not body["degraded"]
    assert {r["code"] for o in body["offers"] for r in o["reasons"]} <= {
        "featured", "page_context", "high_value", "limited_quantity", "popular", "available",
    }  # fmt: skip


async def test_explain_lists_excluded_offers_with_reasons(client: httpx.AsyncClient) -> None:
    body = await recommend(client, "m1", explain=True)
    excluded = body["excluded"]
    assert len(excluded) == body["candidates"] - body["eligible"] > 0
    by_id = {e["offer_id"]: e for e in excluded}
    assert by_id["benefit-partner_perk"]["reason"] == "paid_only"
    assert by_id["benefit-priority_delivery"]["reason"] == "tier"
    assert all(e["text"] for e in excluded)
    assert "excluded" not in await recommend(client, "m1")


async def test_unknown_context_values_rank_as_other_and_are_counted(client: httpx.AsyncClient) -> None:
    body = {"member_id": "m1", "context": {"page_type": "landing", "category": "cars", "device": "fridge"}}
    r = await client.post("/v1/recommend", json=body, headers=SF)
    assert r.status_code == 200 and r.json()["offers"], r.text
    text = (await client.get("/metrics")).text
    for field in ("page_type", "category", "device"):
        assert f'benefits_context_value_unknown_total{{field="{field}"}} 1.0' in text


@pytest.mark.parametrize(
    ("body", "field"),
    [
        # Malformed values are refused; unknown but well-formed ones rank as "other" (next test).
        ({"member_id": "m1", "context": {"page_type": 7}}, "context.page_type"),
        ({"member_id": "m1", "context": {"category": "c" * 49}}, "context.category"),
        ({"member_id": "m1", "context": {"device": "fr{dge}"}}, "context.device"),
        ({"member_id": "m1", "limit": 0}, "limit"),
        ({"member_id": "m1", "limit": 51}, "limit"),
        ({"member_id": "m1", "surprise": True}, "surprise"),
        ({"member_id": "m1", "context": {"page_type": "home", "extra": 1}}, "context.extra"),
        ({"context": {}}, "member_id"),
        ({"member_id": "has space"}, "member_id"),
    ],
)
async def test_bad_input_is_422_naming_the_field(
    client: httpx.AsyncClient, body: dict[str, Any], field: str
) -> None:
    r = await client.post("/v1/recommend", json=body, headers=SF)
    assert r.status_code == 422, r.text
    err = r.json()
    assert err["error"] == "invalid_request"
    assert field in [f["field"] for f in err["fields"]]
    assert field in err["message"]


ROUTES: list[tuple[str, str, dict[str, Any] | None, str]] = [
    ("POST", "/v1/recommend", {"member_id": "m1"}, "storefront"),
    (
        "POST",
        "/v1/feedback",
        {"type": "click", "member_id": "m1", "offer_id": "x", "request_id": "r"},
        "storefront",
    ),
    ("GET", "/v1/admin/offers", None, "admin"),
    ("GET", "/v1/admin/offers/consult-health", None, "admin"),
    ("DELETE", "/v1/admin/offers/nope", None, "admin"),
    ("GET", "/v1/admin/models", None, "admin"),
    ("POST", "/v1/admin/models/nope/promote", None, "admin"),
    ("DELETE", "/v1/members/someone", None, "admin"),
]
KEYS = {"none": {}, "bad": {"X-API-Key": "not-a-real-key-at-all"}, "storefront": SF, "admin": ADMIN}


@pytest.mark.parametrize(
    ("method", "path", "body", "scope"), ROUTES, ids=[f"{m} {p}" for m, p, _, _ in ROUTES]
)
async def test_auth_matrix(
    client: httpx.AsyncClient, method: str, path: str, body: dict[str, Any] | None, scope: str
) -> None:
    for key_name, headers in KEYS.items():
        r = await client.request(method, path, json=body, headers=headers)
        if key_name in ("none", "bad"):
            assert r.status_code == 401, (key_name, r.text)
        elif key_name != scope:
            assert r.status_code == 403, (key_name, r.text)
            assert r.json()["error"] == "forbidden"
        else:
            assert r.status_code not in (401, 403), (key_name, r.text)


async def test_ops_endpoints_are_open(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert (
        ready.status_code == 200 and ready.json()["model"] == "v1" and ready.json()["catalog_offers"] == 200
    )
    await recommend(client)
    text = (await client.get("/metrics")).text
    for stage in ("state_read", "features", "model", "rerank", "total"):
        assert f'benefits_recommend_stage_seconds_count{{stage="{stage}"}}' in text
    assert 'benefits_model_info{version="v1"} 1.0' in text
    assert "benefits_recommend_candidates_bucket" in text
    assert (await client.get("/docs")).status_code == 200
    spec = (await client.get("/openapi.json")).json()
    assert "/v1/recommend" in spec["paths"]


async def test_body_over_the_limit_is_413(client: httpx.AsyncClient, settings: Settings) -> None:
    big = {"member_id": "m1", "pad": "x" * (settings.max_body_bytes + 10)}
    r = await client.post("/v1/recommend", json=big, headers=SF)
    assert r.status_code == 413 and r.json()["error"] == "too_large"

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(settings.max_body_bytes // 1000 + 2):
            yield b" " * 1000

    r = await client.post(
        "/v1/recommend", content=chunks(), headers={**SF, "content-type": "application/json"}
    )
    assert r.status_code == 413


async def test_admin_catalog_crud_and_invalid_offer(client: httpx.AsyncClient) -> None:
    new = {"offer_id": "new-baby-coupon", "kind": "coupon", "subtype": "category", "title": "5 off baby",
           "category": "baby", "value": 5.0, "threshold": 50.0, "cost": 3.0}  # fmt: skip
    bad = {**new, "subtype": "free_shipping"}
    r = await client.post("/v1/admin/offers", json=bad, headers=ADMIN)
    assert r.status_code == 422 and "subtype" in r.json()["message"]
    r = await client.post("/v1/admin/offers", json={**new, "value": -1}, headers=ADMIN)
    assert r.status_code == 422 and "value" in [f["field"] for f in r.json()["fields"]]
    r = await client.post("/v1/admin/offers", json=new, headers=ADMIN)
    assert r.status_code == 201, r.text
    assert (await client.post("/v1/admin/offers", json=new, headers=ADMIN)).status_code == 409
    got = await client.get("/v1/admin/offers/new-baby-coupon", headers=ADMIN)
    assert got.status_code == 200 and got.json()["title"] == "5 off baby"
    r = await client.put("/v1/admin/offers/other-id", json=new, headers=ADMIN)
    assert r.status_code == 422 and "differs" in r.json()["message"]
    r = await client.put(
        "/v1/admin/offers/new-baby-coupon", json={**new, "title": "6 off baby"}, headers=ADMIN
    )
    assert r.status_code == 200
    body = await recommend(client, "m1", explain=True)
    assert body["candidates"] == 201
    r = await client.delete("/v1/admin/offers/new-baby-coupon", headers=ADMIN)
    assert r.status_code == 200 and r.json()["offer"]["active"] is False
    body = await recommend(client, "m1", explain=True, limit=50)
    assert "new-baby-coupon" not in [o["offer_id"] for o in body["offers"]]
    assert {"offer_id": "new-baby-coupon", "reason": "inactive"}.items() <= next(
        e for e in body["excluded"] if e["offer_id"] == "new-baby-coupon"
    ).items()
    assert (await client.get("/v1/admin/offers/missing", headers=ADMIN)).status_code == 404
    listing = (await client.get("/v1/admin/offers", headers=ADMIN)).json()
    assert len(listing["offers"]) == 201


async def test_in_flight_limit_sheds_load_fast() -> None:
    """Over max_in_flight the middleware answers at once (503, or a degraded 200 for recommend); probes
    stay exempt."""
    import asyncio

    from service.metrics import Metrics
    from service.middleware import EdgeLimits

    release = asyncio.Event()

    async def slow_app(scope: Any, receive: Any, send: Any) -> None:
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    shed = b'{"degraded": true, "degraded_cause": "overloaded", "offers": []}'
    app = EdgeLimits(
        slow_app, max_in_flight=2, max_body_bytes=1024, metrics=Metrics(), shed_recommend=lambda: shed
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://x") as c:
        held = [asyncio.create_task(c.get("/v1/anything")) for _ in range(2)]
        await asyncio.sleep(0.05)
        r = await c.get("/v1/anything")
        assert r.status_code == 503 and r.json()["error"] == "overloaded"
        # A page view is never refused: it gets the cached degraded answer instead of a 503.
        r = await c.post("/v1/recommend", json={"member_id": "m"})
        assert r.status_code == 200 and r.json()["degraded_cause"] == "overloaded"
        probe = asyncio.create_task(c.get("/healthz"))
        await asyncio.sleep(0.05)
        release.set()
        assert [t.status_code for t in await asyncio.gather(*held, probe)] == [200, 200, 200]
        assert app.in_flight == 0


async def test_shed_answer_is_a_valid_degraded_ranking(client: httpx.AsyncClient) -> None:
    """The cached answer given under overload is a real non-personalised slate in the response schema."""
    from service.schemas import RecommendResponse

    app = client._transport.app  # type: ignore[attr-defined]
    body = app.state.resources.recommender.shed_answer()
    parsed = RecommendResponse.model_validate_json(body)
    assert parsed.degraded and parsed.degraded_cause == "overloaded" and parsed.mode == "fallback"
    assert parsed.offers, "the shed answer should still fill the slots"
    assert app.state.resources.recommender.shed_answer() is body  # cached until catalog/minute changes
