"""``POST /v1/recommend`` served straight from ASGI, past the framework's routing and dependencies.

The issue's profile of the event loop under load put FastAPI's per-request machinery for this one route
(routing, ``solve_dependencies`` for the key, the resources and the recommender, the request object,
exception middleware) at about a fifth of a request's CPU, more than the model. The route is the one
the storefront calls on every page view, so it is answered here, inside the edge limits (in-flight
bound, body size) and before the router: the same key check (:class:`service.auth.KeyRing`), the same
body decoder (:func:`service.body.decode_recommend`), the same answer builder
(:func:`service.api.recommend_answer`) and the same error bodies as the app's exception handlers. The
FastAPI route stays: it documents the operation in OpenAPI and serves it whenever the app has no
resources yet. Every other route goes through FastAPI as before.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from fastapi.exceptions import RequestValidationError
from redis.exceptions import RedisError

from service.api import recommend_answer
from service.auth import RECOMMEND_SCOPES
from service.body import invalid_body
from service.deps import Resources
from service.errors import ServiceError, service_error_body, store_error_body
from service.middleware import ASGIApp, Receive, Scope, Send

log = logging.getLogger(__name__)

PATH = "/v1/recommend"
_JSON = (b"content-type", b"application/json")


async def _send(send: Send, status: int, body: bytes, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    headers = [_JSON, (b"content-length", str(len(body)).encode()), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class RecommendFastPath:
    def __init__(self, app: ASGIApp, resources: Callable[[], Resources | None]) -> None:
        self.app = app
        self.resources = resources

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        res = self.resources() if scope["type"] == "http" and scope["path"] == PATH else None
        if res is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        key: str | None = None
        language: str | None = None
        member_token: str | None = None
        for name, value in scope["headers"]:
            if name == b"x-api-key":
                key = value.decode("latin-1")
            elif name == b"accept-language":
                language = value.decode("latin-1")
            elif name == b"x-member-token":
                member_token = value.decode("latin-1")
        try:
            key_scope = res.keys.require_any(key, RECOMMEND_SCOPES)
            chunks = []
            more = True
            while more:
                message = await receive()
                if message["type"] != "http.request":
                    return  # the client went away
                chunks.append(message.get("body", b""))
                more = message.get("more_body", False)
            body = await recommend_answer(res, b"".join(chunks), language, key_scope, member_token)
        except ServiceError as exc:
            await _send(send, exc.status, service_error_body(exc))
            return
        except RequestValidationError as exc:
            await _send(send, 422, invalid_body(exc))
            return
        except (RedisError, TimeoutError) as exc:
            log.warning("store error on POST %s: %s", PATH, type(exc).__name__)
            await _send(send, 503, store_error_body(), [(b"retry-after", b"1")])
            return
        await _send(send, 200, body)
