"""Edge limits as pure ASGI middleware (no per-request objects beyond a closure; about a microsecond).

- Bounded in-flight requests: over ``max_in_flight`` a request is answered at once, before any work, so
  an overloaded replica sheds load quickly instead of queueing into everyone's deadline. A recommend
  request (a page view: "a valid page view never gets a 5xx") gets a 200 with the cached
  non-personalised answer flagged ``degraded_cause="overloaded"``; every other route gets a fast 503.
- Body size: a declared ``Content-Length`` over ``max_body_bytes`` is refused with 413 before reading;
  a chunked body is counted as it streams and cut off at the limit.

Health and metrics endpoints are exempt so that probes still answer under overload.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

from service.metrics import Metrics

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

EXEMPT = frozenset({"/healthz", "/readyz", "/metrics"})
RECOMMEND = "/v1/recommend"


async def _reply(send: Send, status: int, code: str, message: str) -> None:
    await _send(send, status, orjson.dumps({"error": code, "message": message}))


async def _send(send: Send, status: int, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


class EdgeLimits:
    def __init__(
        self,
        app: ASGIApp,
        max_in_flight: int,
        max_body_bytes: int,
        metrics: Metrics,
        shed_recommend: Callable[[], bytes | None] | None = None,
        path_limits: dict[str, int] | None = None,
    ) -> None:
        self.app = app
        self.shed_recommend = shed_recommend
        self.max_in_flight = max_in_flight
        self.max_body_bytes = max_body_bytes
        #: Paths with their own body limit (a catalogue import is a file, not a page view).
        self.path_limits = path_limits or {}
        self.metrics = metrics
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in EXEMPT:
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.max_in_flight:
            if self.shed_recommend is not None and scope["path"] == RECOMMEND and scope["method"] == "POST":
                body = self.shed_recommend()
                if body is not None:
                    self.metrics.rejected.labels(cause="overloaded_degraded").inc()
                    self.metrics.degraded.labels(cause="overloaded").inc()
                    await _send(send, 200, body)
                    return
            self.metrics.rejected.labels(cause="overloaded").inc()
            await _reply(send, 503, "overloaded", "too many requests in flight; retry shortly")
            return
        limit = self.path_limits.get(scope["path"], self.max_body_bytes)
        declared: int | None = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = None
                break
        if declared is not None and declared > limit:
            self.metrics.rejected.labels(cause="body_too_large").inc()
            await _reply(send, 413, "too_large", f"request body over {limit} bytes")
            return
        if declared is None and scope.get("method") in ("POST", "PUT", "PATCH"):
            # Chunked body of unknown length: read it here (bounded) and replay it, so an oversized
            # one is a clean 413 rather than an error in the middle of the route's body parsing.
            chunks: list[bytes] = []
            size = 0
            more = True
            while more:
                message = await receive()
                if message["type"] != "http.request":
                    return  # client went away
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    self.metrics.rejected.labels(cause="body_too_large").inc()
                    await _reply(send, 413, "too_large", f"request body over {limit} bytes")
                    return
                chunks.append(chunk)
                more = message.get("more_body", False)
            replay: list[Message] = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

            async def replay_receive() -> Message:
                if replay:
                    return replay.pop()
                return await receive()

            receive = replay_receive

        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1
