"""Log volume under control: which requests get a line.

At 200 requests/s one line per request is ~800 bytes, 39 MB in 5 minutes. So the per-request recommend
line (``service.requests``, written by :class:`service.recommend.Recommender`) is sampled at
``request_log_sample_rate``, except that a degraded answer (any ``degraded_cause``, including the
``overloaded`` shed answer) and a slow one (over the deadline) are always logged. Every refused request
(any status >= 400, from the edge limits, the fast path or the routes) is always logged by
:class:`RefusalLog`, the outermost ASGI layer, with method, path, status and milliseconds (no body, no
member id). Logs go to stdout only; rotation and retention are the platform's (Kubernetes / Docker
log drivers), see the README.
"""

from __future__ import annotations

import logging
import random
import time

from service.middleware import ASGIApp, Message, Receive, Scope, Send

request_log = logging.getLogger("service.requests")


def sampled(rate: float) -> bool:
    """True for a share ``rate`` of calls (always at 1.0, never at 0.0)."""
    return rate >= 1.0 or (rate > 0.0 and random.random() < rate)


class RefusalLog:
    """Outermost layer: one line for every HTTP answer with status >= 400."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 0

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            if status >= 400 or status == 0:
                request_log.info(
                    "refused",
                    extra={
                        "fields": {
                            "method": scope["method"],
                            "path": scope["path"],
                            "status": status or None,  # None: no answer (client gone or a crash)
                            "ms": round((time.perf_counter() - t0) * 1e3, 3),
                        }
                    },
                )
