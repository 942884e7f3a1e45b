"""Edge limits as pure ASGI middleware (no per-request objects beyond a closure; about a microsecond).

- Bounded in-flight requests: over ``max_in_flight`` the request is refused at once with 503, before
  any work, so an overloaded replica sheds load quickly instead of queueing into everyone's deadline.
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


async def _reply(send: Send, status: int, code: str, message: str) -> None:
    body = orjson.dumps({"error": code, "message": message})
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


class EdgeLimits:
    def __init__(self, app: ASGIApp, max_in_flight: int, max_body_bytes: int, metrics: Metrics) -> None:
        self.app = app
        self.max_in_flight = max_in_flight
        self.max_body_bytes = max_body_bytes
        self.metrics = metrics
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in EXEMPT:
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.max_in_flight:
            self.metrics.rejected.labels(cause="overloaded").inc()
            await _reply(send, 503, "overloaded", "too many requests in flight; retry shortly")
            return
        limit = self.max_body_bytes
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
