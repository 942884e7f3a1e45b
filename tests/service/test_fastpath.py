"""The recommend fast path (service.fastpath) answers like the FastAPI route it stands in for."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from infra.settings import Settings
from service.app import create_app
from tests.service.conftest import ADMIN, SF, running

pytestmark = [pytest.mark.anyio, pytest.mark.integration]


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with running(create_app(settings)) as c:
        yield c


async def test_an_over_long_accept_language_is_a_422_naming_the_header(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/v1/recommend", json={"member_id": "m1"}, headers={**SF, "Accept-Language": "x" * 513}
    )
    assert r.status_code == 422
    assert [f["field"] for f in r.json()["fields"]] == ["header.accept-language"]


async def test_other_methods_and_keys_fall_through_to_the_same_answers(client: httpx.AsyncClient) -> None:
    assert (await client.get("/v1/recommend", headers=SF)).status_code == 405
    r = await client.post("/v1/recommend", json={"member_id": "m1"}, headers=ADMIN)
    assert r.status_code == 403 and r.json()["error"] == "forbidden"
    r = await client.post("/v1/recommend", content=b"\xff", headers=SF)
    assert r.status_code == 422 and r.json()["fields"][0]["field"] == "body"
    r = await client.post("/v1/recommend", json={"member_id": "m1", "limit": 2}, headers=SF)
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert len(r.json()["offers"]) == 2
