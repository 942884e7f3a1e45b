"""The Redis layout: every key the system writes, its format and its TTL. Key names and scripts live in
``infra/`` only: :class:`RedisLayout` and :class:`MemberStore` here (member state, offer statistics,
inventory), ``infra/catalog_store.py`` (the catalog, keys from :class:`RedisLayout`) and
``infra/money_store.py`` (money state, which names its own keys and documents them in full).

Keys (``P`` is the configured prefix, default ``bn``; ``{...}`` is a Redis Cluster hash tag)::

    P:m:{MEMBER_ID}:state      member blob: msgpack of StoredMember (state + applied Kafka offsets +
                               layout version); SET with EX member_ttl_seconds on every write (worker),
                               GET on every request (API). Deleted by erasure and by tombstones.
                               SCANned (P:m:*:state) only by offline tools (benefits fairness).
    P:m:{MEMBER_ID}:*          the member's namespace: any later per-member key goes here (same slot),
                               so erasure (SCAN + DEL of this pattern) removes it too.
    P:os:{pPARTITION}          per-partition offer counters: msgpack of StoredOfferStats (counters +
                               applied offset + layout version); SET EX stats_ttl_seconds (worker);
                               SCANned by the API's usage refresh.
    P:{catalog}                hash offer_id -> offer JSON (the live catalog); written by the admin API
                               (HSET, or the seed-if-empty script), read by every replica's poller and
                               the worker (offer costs); EXPIRE catalog_ttl_seconds, refreshed on every
                               catalog write and by the service's catalog poller.
    P:{inc}:TOPIC              hash partition -> "INCARNATION OFFSET FINGERPRINT": which incarnation
                               of the topic the watermarks belong to and the last record folded there
                               (``infra/topic_incarnation.py``); HSET by the worker after each batch,
                               no TTL (a few bytes per partition).
    P:{catalog}:version        integer bumped on every catalog change; replicas and the worker poll it.
                               Same hash tag as the catalog so that the seed script (both keys) is one
                               call on a cluster; same TTL as the catalog.
    P:inv:{OFFER_ID}           integer: units of a limited offer reserved so far (the atomic reserve
                               script; DECRBY to give a unit back). EXPIRE refreshed on every reserve
                               with the TTL the caller passes (the API uses stats_ttl_seconds).
    P:money:{o:OFFER_ID}...    money state of an offer (stock, budget, per-member claims, idempotency
                               records): see ``infra/money_store.py``. No TTL on the two money hashes
                               (they live as long as the campaign and survive a Redis restart).

Scripts: ``_RESERVE_LUA`` (check-and-reserve one inventory key), ``_SET_MANY_LUA`` (the worker's batch
write on a single node), and the catalog's seed-if-empty in ``infra/catalog_store.py``.

Everything a member owns sits under ``P:m:{MEMBER_ID}:`` so erasure is one ``DEL`` per key in one
slot, and a cluster never needs a cross-slot operation for a member.

Exactly-once in effect: Kafka redelivers everything after the last committed offset when a worker
dies. Each member blob records, per partition, the offset of the last event folded into it; a
redelivered event at or below that offset is skipped. A member's events all come from one partition
(key = member id), so the check is exact. Per-offer counters get the same treatment per partition:
each partition has its own partial, with its own watermark, written by whichever worker owns it.

Layout version: every blob carries ``layout`` and every read checks it against :data:`LAYOUT_VERSION`.
A blob of another version is treated as **missing** (counted in ``MemberStore.stale_layout_reads``,
logged): the member is cold, the worker folds them from a fresh state and overwrites the blob in the
current layout, a partial restarts from nothing. Why missing, not an error: these blobs are derived
data (the fold of the event log, which can be replayed), so losing one is what a TTL expiry already
does, while misreading one whose fields changed meaning would serve and fold wrong numbers silently;
raising would stop the worker (every member stale) over one format change. Money state (inventory,
the catalog) is not a versioned blob and never affected. Hazards: bumping the version turns every
member cold (replay the archive to rebuild); never run workers of two layout versions in one group
(each would reset the other's blobs).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import msgspec
import redis.asyncio as aioredis

from features.offer_stats import OfferCounters
from features.state import MemberState

log = logging.getLogger(__name__)

#: The blob format. Bump it with any change an older reader would misread (see "Layout version").
LAYOUT_VERSION = 1
#: The version of a blob without a ``layout`` field. Member blobs omit fields equal to their default
#: (``omit_defaults``), so every member blob written at version 1 is unmarked: never change this, or
#: old blobs would pass for the current version. The encoders stamp :data:`LAYOUT_VERSION`.
UNMARKED_LAYOUT = 1


class LayoutMismatch(msgspec.ValidationError):
    """A stored blob of another layout version. A ``msgspec.ValidationError``, so a caller that already
    treats an undecodable blob as unusable (the recommend path) treats this one the same way."""


class StoredMember(msgspec.Struct, omit_defaults=True):
    state: MemberState
    #: partition -> offset of the last event folded into this blob.
    offsets: dict[int, int] = {}
    layout: int = UNMARKED_LAYOUT
    #: partition -> the topic incarnation its offset belongs to (see infra/topic_incarnation.py);
    #: absent means the original incarnation "" (blobs written before incarnations existed).
    incarnations: dict[int, str] = {}


class StoredOfferStats(msgspec.Struct):
    partition: int
    offset: int
    counters: dict[str, OfferCounters]
    layout: int = UNMARKED_LAYOUT
    #: The topic incarnation ``offset`` belongs to ("" the original one).
    incarnation: str = ""


def _b(raw: bytes | str) -> bytes:
    # The client is created without decode_responses, so values are bytes; the str branch is for typing.
    return raw if isinstance(raw, bytes) else raw.encode()


_member_enc = msgspec.msgpack.Encoder()
_member_dec = msgspec.msgpack.Decoder(StoredMember)
_stats_dec = msgspec.msgpack.Decoder(StoredOfferStats)


def encode_member(stored: StoredMember) -> bytes:
    """The blob of ``stored``, stamped with the current layout version (``stored.layout`` is set)."""
    stored.layout = LAYOUT_VERSION
    return _member_enc.encode(stored)


def decode_member(raw: bytes) -> StoredMember:
    """The stored member; raises :class:`LayoutMismatch` for a blob of another layout version."""
    stored = _member_dec.decode(raw)
    if stored.layout != LAYOUT_VERSION:
        raise LayoutMismatch(f"member blob has layout {stored.layout}, this code reads {LAYOUT_VERSION}")
    return stored


def encode_offer_stats(stored: StoredOfferStats) -> bytes:
    """The blob of ``stored``, stamped with the current layout version (``stored.layout`` is set)."""
    stored.layout = LAYOUT_VERSION
    return _member_enc.encode(stored)


def decode_offer_stats(raw: bytes) -> StoredOfferStats:
    """The stored partial; raises :class:`LayoutMismatch` for a blob of another layout version."""
    stored = _stats_dec.decode(raw)
    if stored.layout != LAYOUT_VERSION:
        raise LayoutMismatch(f"offer-stats blob has layout {stored.layout}, this code reads {LAYOUT_VERSION}")
    return stored


# Reserve ``n`` units of a limited offer only if it stays within ``limit``: check and increment in one
# atomic script, so concurrent claims can never oversell.
_RESERVE_LUA = """
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
local n = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
if used + n > limit then return -1 end
used = redis.call('INCRBY', KEYS[1], n)
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
return used
"""

# SET each KEYS[i] to ARGV[2i-1] with EX ARGV[2i]: a batch of blobs, each with its TTL, in one command.
# Not atomic as a whole from the caller's point of view (see write_batch); only used on a single node.
_SET_MANY_LUA = """
for i, key in ipairs(KEYS) do
  redis.call('SET', key, ARGV[2 * i - 1], 'EX', tonumber(ARGV[2 * i]))
end
return #KEYS
"""


@dataclass(frozen=True)
class RedisLayout:
    prefix: str = "bn"
    member_ttl_seconds: int = 90 * 24 * 3600
    stats_ttl_seconds: int = 90 * 24 * 3600
    catalog_ttl_seconds: int = 365 * 24 * 3600

    def member_key(self, member_id: str) -> str:
        return f"{self.prefix}:m:{{{member_id}}}:state"

    def member_pattern(self, member_id: str) -> str:
        """Glob of every key of one member (for erasure scans)."""
        return f"{self.prefix}:m:{{{member_id}}}:*"

    def members_pattern(self) -> str:
        """Glob of every member blob (an offline tool's sample of members, never the request path)."""
        return f"{self.prefix}:m:*:state"

    def member_id_of(self, key: str) -> str:
        """The member id of a :meth:`member_key`."""
        return key[len(self.prefix) + 4 : -len("}:state")]

    def offer_stats_key(self, partition: int) -> str:
        return f"{self.prefix}:os:{{p{partition}}}"

    def topic_incarnation_key(self, topic: str) -> str:
        return f"{self.prefix}:{{inc}}:{topic}"

    def offer_stats_pattern(self) -> str:
        return f"{self.prefix}:os:*"

    @property
    def catalog_key(self) -> str:
        return f"{self.prefix}:{{catalog}}"

    @property
    def catalog_version_key(self) -> str:
        return f"{self.prefix}:{{catalog}}:version"

    def inventory_key(self, offer_id: str) -> str:
        return f"{self.prefix}:inv:{{{offer_id}}}"


class MemberStore:
    """Async access to the layout. One code path for the worker, the service and the tests."""

    def __init__(self, client: aioredis.Redis | aioredis.RedisCluster, layout: RedisLayout) -> None:
        self.r = client
        self.layout = layout
        self._reserve = client.register_script(_RESERVE_LUA)
        self._set_many = client.register_script(_SET_MANY_LUA)
        # Multi-key commands (MGET, the SET script) are only safe when all keys are on one node.
        self._single_node = not isinstance(client, aioredis.RedisCluster)
        #: Blobs of another layout version read (and treated as missing) by this store.
        self.stale_layout_reads = 0

    def _stale(self, exc: LayoutMismatch) -> None:
        self.stale_layout_reads += 1
        n = self.stale_layout_reads
        if n & (n - 1) == 0:  # the 1st, 2nd, 4th, 8th...: visible without flooding the log
            log.warning("%s; treated as missing (%d such blobs read so far)", exc, n)

    def _member(self, raw: bytes | None) -> StoredMember | None:
        if raw is None:
            return None
        try:
            return decode_member(raw)
        except LayoutMismatch as exc:
            self._stale(exc)
            return None

    def _offer_stats(self, raw: bytes | None) -> StoredOfferStats | None:
        if raw is None:
            return None
        try:
            return decode_offer_stats(raw)
        except LayoutMismatch as exc:
            self._stale(exc)
            return None

    # -- members -------------------------------------------------------------------------------------
    async def get_member_raw(self, member_id: str) -> bytes | None:
        """The member blob in one round trip (decode with :func:`decode_member`)."""
        raw = await self.r.get(self.layout.member_key(member_id))
        return _b(raw) if raw is not None else None

    async def get_member(self, member_id: str) -> StoredMember | None:
        """The member, or None when absent or of another layout version."""
        return self._member(await self.get_member_raw(member_id))

    async def get_members(self, member_ids: list[str]) -> list[StoredMember | None]:
        """Read many members in one pipelined round trip (non-transactional, so it works on a cluster)."""
        if not member_ids:
            return []
        async with self.r.pipeline(transaction=False) as pipe:
            for mid in member_ids:
                pipe.get(self.layout.member_key(mid))
            raws = await pipe.execute()
        return [self._member(raw) for raw in raws]

    async def put_members(self, members: Iterable[StoredMember]) -> int:
        """Write blobs (each with its TTL) in one pipelined round trip; returns how many."""
        n = 0
        async with self.r.pipeline(transaction=False) as pipe:
            for stored in members:
                pipe.set(
                    self.layout.member_key(stored.state.member_id),
                    encode_member(stored),
                    ex=self.layout.member_ttl_seconds,
                )
                n += 1
            if n:
                await pipe.execute()
        return n

    async def erase_member(self, member_id: str) -> int:
        """Delete every key of the member; returns the number of keys removed."""
        keys = [k async for k in self.r.scan_iter(match=self.layout.member_pattern(member_id), count=100)]
        keys.append(self.layout.member_key(member_id))
        deleted: int = await self.r.delete(*set(keys))
        return deleted

    async def member_ids(self, limit: int) -> list[str]:
        """Up to ``limit`` ids of members with a stored state, by SCAN (``benefits fairness`` samples
        members this way; SCAN does not block Redis, but it walks the keyspace: offline tools only)."""
        out: list[str] = []
        async for key in self.r.scan_iter(match=self.layout.members_pattern(), count=1000):
            out.append(self.layout.member_id_of(_b(key).decode()))
            if len(out) >= limit:
                break
        return out

    # -- per-partition offer statistics ------------------------------------------------------------
    async def get_offer_stats(self, partition: int) -> StoredOfferStats | None:
        raw = await self.r.get(self.layout.offer_stats_key(partition))
        return self._offer_stats(_b(raw) if raw is not None else None)

    async def put_offer_stats(self, stored: StoredOfferStats) -> None:
        await self.r.set(
            self.layout.offer_stats_key(stored.partition),
            encode_offer_stats(stored),
            ex=self.layout.stats_ttl_seconds,
        )

    # -- batches (the stream worker): one round trip to read, one to write ---------------------------
    async def read_batch(
        self, member_ids: list[str], partitions: list[int]
    ) -> tuple[list[StoredMember | None], list[StoredOfferStats | None]]:
        """Members and per-partition offer stats in one pipelined round trip (non-transactional)."""
        if not member_ids and not partitions:
            return [], []
        keys = [self.layout.member_key(mid) for mid in member_ids]
        keys += [self.layout.offer_stats_key(p) for p in partitions]
        if self._single_node:
            # One MGET costs a fraction of N pipelined GETs in redis-py (one reply to parse, not N).
            raws: list[Any] = await self.r.mget(keys)
        else:
            # Keys of different members live in different cluster slots: MGET would be cross-slot.
            async with self.r.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.get(key)
                raws = await pipe.execute()
        n = len(member_ids)
        members = [self._member(raw) for raw in raws[:n]]
        stats = [self._offer_stats(raw) for raw in raws[n:]]
        return members, stats

    async def write_batch(self, members: Iterable[StoredMember], stats: Iterable[StoredOfferStats]) -> int:
        """Write member blobs and offer-stat partials, each with its TTL, in one round trip (one script
        call on a single node, a non-transactional pipeline on a cluster).

        On a cluster it is not a transaction: a crash mid-pipeline can leave some keys written and others
        not. That is safe because every key carries its own applied-offset watermark, so redelivered
        events are folded exactly into the keys that missed them and skipped by the keys that have them.
        """
        layout = self.layout
        items = [
            (layout.member_key(m.state.member_id), encode_member(m), layout.member_ttl_seconds)
            for m in members
        ]
        items += [
            (layout.offer_stats_key(st.partition), encode_offer_stats(st), layout.stats_ttl_seconds)
            for st in stats
        ]
        if not items:
            return 0
        if self._single_node:
            # One script call instead of N pipelined SETs: redis-py spends ~30 us per pipelined command
            # packing and parsing, which capped the worker well below 20k events/s.
            args: list[bytes | int] = []
            for _, blob, ttl in items:
                args.append(blob)
                args.append(ttl)
            await self._set_many(keys=[k for k, _, _ in items], args=args)
        else:
            async with self.r.pipeline(transaction=False) as pipe:
                for key, blob, ttl in items:
                    pipe.set(key, blob, ex=ttl)
                await pipe.execute()
        return len(items)

    async def delete_members(self, member_ids: list[str]) -> int:
        """Delete member blobs (the worker applying erasure tombstones); one round trip."""
        if not member_ids:
            return 0
        async with self.r.pipeline(transaction=False) as pipe:
            for mid in member_ids:
                pipe.delete(self.layout.member_key(mid))
            deleted = await pipe.execute()
        return int(sum(deleted))

    async def all_offer_stats(self) -> list[StoredOfferStats]:
        keys = [k async for k in self.r.scan_iter(match=self.layout.offer_stats_pattern(), count=100)]
        out = []
        for key in keys:
            raw = await self.r.get(key)
            stored = self._offer_stats(_b(raw) if raw is not None else None)
            if stored is not None:
                out.append(stored)
        return out

    # -- inventory -----------------------------------------------------------------------------------
    async def reserve(self, offer_id: str, limit: int, ttl_seconds: int, n: int = 1) -> int | None:
        """Atomically reserve ``n`` units; returns units used after, or None when sold out."""
        used = int(
            await self._reserve(keys=[self.layout.inventory_key(offer_id)], args=[n, limit, ttl_seconds])
        )
        return None if used < 0 else used

    async def release(self, offer_id: str, n: int = 1) -> int:
        """Give back ``n`` reserved units (a claim that was reserved but not recorded); returns units
        used after. Not bounded below: only call it for units this caller reserved."""
        return int(await self.r.decrby(self.layout.inventory_key(offer_id), n))

    async def reserved(self, offer_ids: list[str]) -> dict[str, int]:
        """Units reserved so far per limited offer (offers never reserved are absent)."""
        if not offer_ids:
            return {}
        async with self.r.pipeline(transaction=False) as pipe:
            for oid in offer_ids:
                pipe.get(self.layout.inventory_key(oid))
            raws = await pipe.execute()
        return {oid: int(raw) for oid, raw in zip(offer_ids, raws, strict=True) if raw is not None}
