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

import os
import time
import uuid

from infra.redis_client import AnyRedis
from infra.redis_layout import RedisLayout


class StoreEpoch:
    def __init__(self, client: AnyRedis, layout: RedisLayout) -> None:
        self.r = client
        self.key = f"{layout.prefix}:{{epoch}}"
        self.lost_key = f"{self.key}:lost"
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
        return _text(got) or token

    async def current(self) -> str | None:
        """The stored token (None: the marker is gone), its TTL refreshed."""
        got = await self.r.get(self.key)
        if got is None:
            return None
        await self.r.expire(self.key, self.ttl_seconds)
        return _text(got)

    async def read(self) -> tuple[str | None, str | None]:
        """(the stored token, the ``lost`` record) in one round trip; the marker's TTL refreshed."""
        # Two GETs, not MGET: a Redis Cluster pipeline refuses multi-key commands (both keys share the
        # {epoch} hash tag, so the whole pipeline still goes to one node in one round trip).
        async with self.r.pipeline(transaction=False) as pipe:
            pipe.get(self.key)
            pipe.get(self.lost_key)
            pipe.expire(self.key, self.ttl_seconds)  # a no-op when the marker is gone
            token, lost, _ = await pipe.execute()
        return _text(token), _text(lost)

    async def mark_lost(self, detail: str) -> None:
        """Record that the store lost its data (kept by the first process that noticed)."""
        await self.r.set(self.lost_key, detail, nx=True, ex=self.ttl_seconds)

    async def report_lost(self, who: str, known: str, seen: str | None) -> tuple[str, str]:
        """The marker ``known`` is gone (``seen`` None) or was replaced by ``seen``: record ``lost``
        (unless another process did) and make sure a marker exists, so that every other process notices.
        Returns (what happened, in words; the token to know from now on)."""
        what = f"store epoch marker {'vanished' if seen is None else f'changed to {seen}'} (was {known})"
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        await self.mark_lost(f"{when} {who} pid {os.getpid()}: {what}")
        return what, await self.ensure()

    async def lost(self) -> str | None:
        """The ``lost`` record (None: the store is not awaiting a replay)."""
        return _text(await self.r.get(self.lost_key))

    async def rebuilt(self) -> bool:
        """The store was rebuilt (``benefits replay``): clear the ``lost`` record, make sure a marker
        exists. True when there was a record to clear."""
        await self.ensure()
        return bool(await self.r.delete(self.lost_key))


def _text(raw: object) -> str | None:
    if raw is None:
        return None
    return raw.decode() if isinstance(raw, bytes) else str(raw)
