"""The catalog in Redis: the hash of offers and its version key (``P:{catalog}``, ``P:{catalog}:version``;
see :mod:`infra.redis_layout` for the whole key spec). Writes by the admin API, reads by every API
replica's poller (``service/catalog.py``) and by the stream worker (offer costs).

Hazards:

- The version is read *before* the hash and bumped *after* it, each in one pipeline without MULTI (the
  two keys share the ``{catalog}`` hash tag, but a pipeline keeps this cluster-safe whatever the tags).
  So a reader may label newer offers with the older version (and reload on its next poll), never old
  offers with the new version (which would miss the change for good).
- Seeding is one Lua script that checks the hash is empty and inserts everything: replicas starting
  together (or re-seeding after Redis lost its data) cannot interleave two seeds.
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec
from pydantic import ValidationError

from features.offers import Offer
from infra.redis_client import AnyRedis
from infra.redis_layout import RedisLayout

log = logging.getLogger(__name__)

# Insert every offer only if the catalog hash is empty, in one atomic step, so replicas starting
# together cannot interleave two seeds. KEYS: catalog, version. ARGV: ttl, then id/json pairs.
_SEED_LUA = """
if redis.call('HLEN', KEYS[1]) > 0 then return 0 end
for i = 2, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('INCR', KEYS[2])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[1]))
redis.call('EXPIRE', KEYS[2], tonumber(ARGV[1]))
return 1
"""


class _CostOnly(msgspec.Struct):
    cost: float = 0.0


_cost_decoder = msgspec.json.Decoder(_CostOnly)


class CatalogStore:
    """Catalog reads and writes in Redis (the hash + version key of the layout)."""

    def __init__(self, client: AnyRedis, layout: RedisLayout) -> None:
        self.r = client
        self.layout = layout
        self._seed = client.register_script(_SEED_LUA)

    async def version(self) -> int:
        """The catalog version (0 when there is no catalog)."""
        raw = await self.r.get(self.layout.catalog_version_key)
        return int(raw) if raw is not None else 0

    async def read_all(self) -> tuple[int, list[Offer]]:
        """(version, offers); invalid stored offers are skipped.

        The version is read *before* the hash (one pipeline, no MULTI so it also works on a cluster):
        a write landing in between labels newer offers with the older version, and the next poll sees
        the bumped version and reloads. The reverse order could label old offers with the new version
        and miss the change.
        """
        async with self.r.pipeline(transaction=False) as pipe:
            pipe.get(self.layout.catalog_version_key)
            pipe.hgetall(self.layout.catalog_key)
            raw_version, raw_offers = await pipe.execute()
        offers = []
        for oid, raw in raw_offers.items():
            try:
                offers.append(Offer.model_validate_json(raw))
            except ValidationError as exc:
                log.error("stored offer %r is invalid, skipped: %s", oid, exc.errors()[:1])
        return (int(raw_version) if raw_version is not None else 0), offers

    async def costs(self) -> dict[str, float]:
        """Offer id -> cost per claim from the live catalog hash (empty when there is no catalog).

        Reads only the ``cost`` field of each offer (the stream worker charges it to ``cost_used``); an
        entry that is not valid JSON costs 0 rather than stopping the worker.
        """
        raw: dict[Any, Any] = await self.r.hgetall(self.layout.catalog_key)
        costs: dict[str, float] = {}
        for oid, blob in raw.items():
            try:
                key = oid.decode() if isinstance(oid, bytes) else str(oid)
                costs[key] = _cost_decoder.decode(blob).cost
            except (msgspec.DecodeError, UnicodeDecodeError):
                log.warning("catalog entry %r is not valid JSON; cost taken as 0", oid)
        return costs

    async def get(self, offer_id: str) -> Offer | None:
        raw = await self.r.hget(self.layout.catalog_key, offer_id)
        return Offer.model_validate_json(raw) if raw is not None else None

    async def put(self, offer: Offer) -> int:
        """Create or replace one offer; returns the new catalog version.

        Hash first, version bump second (pipelined in that order, no MULTI: cluster-safe); see
        :meth:`read_all` for why a reader can never miss the change.
        """
        ttl = self.layout.catalog_ttl_seconds
        async with self.r.pipeline(transaction=False) as pipe:
            pipe.hset(self.layout.catalog_key, offer.offer_id, offer.model_dump_json())
            pipe.incr(self.layout.catalog_version_key)
            pipe.expire(self.layout.catalog_key, ttl)
            pipe.expire(self.layout.catalog_version_key, ttl)
            res = await pipe.execute()
        return int(res[1])

    async def put_many(self, offers: list[Offer]) -> int:
        """Create or replace several offers with ONE version bump (a bulk import); returns the version.

        One HSET of every offer, then the bump, pipelined in that order like :meth:`put`. Nothing to
        write returns the current version untouched (an idempotent re-import moves nothing).
        """
        if not offers:
            return await self.version()
        ttl = self.layout.catalog_ttl_seconds
        mapping: dict[Any, Any] = {o.offer_id: o.model_dump_json() for o in offers}
        async with self.r.pipeline(transaction=False) as pipe:
            pipe.hset(self.layout.catalog_key, mapping=mapping)
            pipe.incr(self.layout.catalog_version_key)
            pipe.expire(self.layout.catalog_key, ttl)
            pipe.expire(self.layout.catalog_version_key, ttl)
            res = await pipe.execute()
        return int(res[1])

    async def seed_if_empty(self, offers: list[Offer]) -> bool:
        """Write ``offers`` only if the catalog is empty (atomic); True when this call seeded it."""
        args: list[str | int] = [self.layout.catalog_ttl_seconds]
        for o in offers:
            args += [o.offer_id, o.model_dump_json()]
        done = await self._seed(keys=[self.layout.catalog_key, self.layout.catalog_version_key], args=args)
        return bool(done)

    async def touch(self) -> None:
        """Refresh the TTLs (every key has one; a live catalog must not expire)."""
        ttl = self.layout.catalog_ttl_seconds
        async with self.r.pipeline(transaction=False) as pipe:
            pipe.expire(self.layout.catalog_key, ttl)
            pipe.expire(self.layout.catalog_version_key, ttl)
            await pipe.execute()
