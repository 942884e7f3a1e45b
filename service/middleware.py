"""Edge limits as pure ASGI middleware (no per-request objects beyond a closure; about a microsecond).

- Bounded in-flight requests: over ``max_in_flight`` a request is answered at once, before any work, so
  an overloaded replica sheds load quickly instead of queueing into everyone's deadline. A recommend
  request (a page view: "a valid page view never gets a 5xx") gets a 200 with the cached
  non-personalised answer flagged ``degraded_cause="overloaded"``; every other route gets a fast 503.
- Body size: a declared ``Content-Length`` over ``max_body_bytes`` is refused with 413 before reading;
  a chunked body is counted as it streams and cut off at the limit.

- Authentication from the headers alone, before any body byte is read: a request under ``/v1/`` with
  no API key, or a key that is not configured, gets its 401 at once (the route's scope check, 403,
  stays in the dependency). So invalid JSON without a key is a 401, never a 422, and a client without a
  key cannot hold anything by sending its body slowly.
- Slow bodies: the whole body must arrive within ``body_read_timeout_ms`` of the request's start, or the
  request gets a 408 and the connection is closed. uvicorn's ``timeout_keep_alive`` only times the gap
  between requests, never a body; this is the in-process bound. Headers are bounded by the buffering
  proxy in front (nginx ``client_header_timeout``, see deploy/): a connection still sending headers
  never reaches the app, so it holds no in-flight slot either.
- A request counts toward ``max_in_flight`` only once its body has been read (the middleware reads it,
  bounded in size and time, and replays it to the app), so slow clients cannot occupy the slots that
  real page views need.

Health and metrics endpoints are exempt so that probes still answer under overload.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

from service.auth import KeyRing
from service.metrics import Metrics

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_requests_log = logging.getLogger("service.requests")

EXEMPT = frozenset({"/healthz", "/readyz", "/metrics"})
RECOMMEND = "/v1/recommend"
#: Routes that need an API key (every API route; docs, console pages and probes do not).
KEYED_PREFIX = "/v1/"
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


async def _reply(send: Send, status: int, code: str, message: str, close: bool = False) -> None:
    await _send(send, status, orjson.dumps({"error": code, "message": message}), close)


async def _send(send: Send, status: int, body: bytes, close: bool = False) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if close:
        # The rest of the body (if any) is not wanted: uvicorn closes the connection after this answer
        # instead of parsing whatever the client still sends as the same request.
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class InFlight:
    """Requests holding a slot now; shared with ``/readyz`` so it can say how close to shedding it is."""

    __slots__ = ("n",)

    def __init__(self) -> None:
        self.n = 0


class _Refused(Exception):
    """Reading the body ended the request (answered, or the client went away)."""


class EdgeLimits:
    def __init__(
        self,
        app: ASGIApp,
        max_in_flight: int,
        max_body_bytes: int,
        metrics: Metrics,
        shed_recommend: Callable[[], bytes | None] | None = None,
        path_limits: dict[str, int] | None = None,
        keys: KeyRing | None = None,
        body_read_timeout_ms: float = 5000.0,
        in_flight: InFlight | None = None,
    ) -> None:
        self.app = app
        self.shed_recommend = shed_recommend
        self.max_in_flight = max_in_flight
        self.max_body_bytes = max_body_bytes
        #: Paths with their own body limit (a catalogue import is a file, not a page view).
        self.path_limits = path_limits or {}
        self.metrics = metrics
        self.keys = keys
        self.body_read_timeout_s = body_read_timeout_ms / 1000.0
        self.counter = in_flight if in_flight is not None else InFlight()

    @property
    def in_flight(self) -> int:
        return self.counter.n

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in EXEMPT:
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        declared: int | None = None
        api_key: bytes | None = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = None
            elif name == b"x-api-key":
                api_key = value
        if self.keys is not None and scope["path"].startswith(KEYED_PREFIX):
            if not api_key:
                self.metrics.rejected.labels(cause="unauthorized").inc()
                await _reply(
                    send, 401, "unauthorized", "missing API key: send it in the X-API-Key header", True
                )
                return
            if self.keys.scope_of(api_key.decode("latin-1")) is None:
                self.metrics.rejected.labels(cause="unauthorized").inc()
                await _reply(send, 401, "unauthorized", "invalid API key", True)
                return
        limit = self.path_limits.get(scope["path"], self.max_body_bytes)
        if declared is not None and declared > limit:
            self.metrics.rejected.labels(cause="body_too_large").inc()
            await _reply(send, 413, "too_large", f"request body over {limit} bytes", True)
            return
        if scope.get("method") in _BODY_METHODS or (declared is not None and declared > 0):
            try:
                body = await self._read_body(receive, send, started, limit)
            except _Refused:
                return
            replay: list[Message] = [{"type": "http.request", "body": body, "more_body": False}]

            async def replay_receive() -> Message:
                if replay:
                    return replay.pop()
                return await receive()

            receive = replay_receive

        # Only now, with the whole body in hand, does the request take an in-flight slot.
        counter = self.counter
        if counter.n >= self.max_in_flight:
            if self.shed_recommend is not None and scope["path"] == RECOMMEND and scope["method"] == "POST":
                shed = self.shed_recommend()
                if shed is not None:
                    self.metrics.rejected.labels(cause="overloaded_degraded").inc()
                    self.metrics.degraded.labels(cause="overloaded").inc()
                    await _send(send, 200, shed)
                    # A degraded answer is always logged (service.request_log): no sampling here.
                    _requests_log.info("recommend", extra={"fields": {"degraded_cause": "overloaded"}})
                    return
            self.metrics.rejected.labels(cause="overloaded").inc()
            await _reply(send, 503, "overloaded", "too many requests in flight; retry shortly")
            return
        counter.n += 1
        try:
            await self.app(scope, receive, send)
        finally:
            counter.n -= 1

    async def _read_body(self, receive: Receive, send: Send, started: float, limit: int) -> bytes:
        """The whole body, within ``limit`` bytes and the read deadline; else answer and raise _Refused."""
        chunks: list[bytes] = []
        size = 0
        more = True
        deadline = started + self.body_read_timeout_s
        while more:
            try:
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    message = await receive()
            except TimeoutError:
                self.metrics.rejected.labels(cause="body_timeout").inc()
                await _reply(
                    send,
                    408,
                    "body_timeout",
                    f"request body not received within {self.body_read_timeout_s:g}s",
                    True,
                )
                raise _Refused from None
            if message["type"] != "http.request":
                raise _Refused  # client went away
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                # Chunked bodies have no declared length: counted as they stream and cut off here.
                self.metrics.rejected.labels(cause="body_too_large").inc()
                await _reply(send, 413, "too_large", f"request body over {limit} bytes", True)
                raise _Refused
            chunks.append(chunk)
            more = message.get("more_body", False)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)
