"""The floors of ``benchmarks.http``: the least an HTTP recommend could cost on this stack.

Two uvicorn apps (uvloop + httptools, GC tuned after start-up like ``benefits serve``), each taking the
recommend body as the documented pydantic model and answering orjson bytes:

- ``plain_app``: ``POST /v1/recommend`` validates the body and answers a constant;
- ``redis_app``: the same plus the service's one state read (``MemberStore.get_member_raw``: one GET of
  the member's blob through the project's Redis client, hiredis).

Run with ``uvicorn --factory benchmarks.http_floor:plain_app`` (``redis_app`` reads its Redis URL and
prefix from the BENEFITS_* settings, as the service does).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import orjson
from fastapi import FastAPI
from fastapi.responses import Response

from infra.redis_client import connect
from infra.redis_layout import MemberStore
from infra.settings import Settings
from service.app import _tune_gc
from service.schemas import RecommendRequest

_ANSWER = orjson.dumps({"offers": [], "mode": "floor"})


def plain_app() -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        _tune_gc()
        yield

    app = FastAPI(lifespan=lifespan)

    @app.post("/v1/recommend")
    async def recommend(body: RecommendRequest) -> Response:
        return Response(_ANSWER, media_type="application/json")

    return app


def redis_app() -> FastAPI:
    settings = Settings()
    assert settings.redis_url is not None, "BENEFITS_REDIS_URL is required"
    holder: dict[str, MemberStore] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client = connect(settings.redis_url or "", cluster=False, timeout_ms=settings.redis_timeout_ms)
        holder["store"] = MemberStore(client, settings.layout)
        _tune_gc()
        yield
        await client.aclose()

    app = FastAPI(lifespan=lifespan)

    @app.post("/v1/recommend")
    async def recommend(body: RecommendRequest) -> Response:
        raw = await holder["store"].get_member_raw(body.member_id)
        return Response(_ANSWER if raw is not None else b"{}", media_type="application/json")

    return app
