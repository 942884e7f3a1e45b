"""The store epoch: one marker key that says "this Redis still holds the data it held when we started".

Key (``P`` the prefix; same TTL as the catalog, refreshed by every check)::

    P:{epoch}    a random token, SET NX by the first API process that finds none; read by every API
                 process's poller (once a second, not per request) and compared with the token it saw
                 at start.

A Redis that restarts without its data (no persistence, a failed-over replica that was empty, a
FLUSHALL) loses the marker with everything else. Member state looks exactly like unknown members then
(every answer a quiet ``cold_start``), so without the marker nothing would tell. A process that finds
the marker gone or changed reports ``state_lost`` (answers, ``/readyz``, a metric, an error log) and
writes a new marker so that every other replica notices too. Recovery: ``benefits replay`` rebuilds
member state from the event log; restart the API processes afterwards to clear the flag.

Limitation: a Redis emptied while no API process was running is indistinguishable from a fresh one at
the next start (the marker is simply created).
"""

from __future__ import annotations

import uuid

from infra.redis_client import AnyRedis
from infra.redis_layout import RedisLayout


class StoreEpoch:
    def __init__(self, client: AnyRedis, layout: RedisLayout) -> None:
        self.r = client
        self.key = f"{layout.prefix}:{{epoch}}"
        self.ttl_seconds = layout.catalog_ttl_seconds

    async def ensure(self) -> str:
        """The current epoch token, creating one if there is none."""
        token = uuid.uuid4().hex
        if await self.r.set(self.key, token, nx=True, ex=self.ttl_seconds):
            return token
        got = await self.r.get(self.key)
        if got is None:  # expired or deleted between the two calls: try once more
            await self.r.set(self.key, token, nx=True, ex=self.ttl_seconds)
            got = await self.r.get(self.key)
        return got.decode() if isinstance(got, bytes) else str(got)

    async def current(self) -> str | None:
        """The stored token (None: the marker is gone), its TTL refreshed."""
        got = await self.r.get(self.key)
        if got is None:
            return None
        await self.r.expire(self.key, self.ttl_seconds)
        return got.decode() if isinstance(got, bytes) else str(got)
