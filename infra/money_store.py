"""Money state: inventory, budget use and per-member claims of each offer, changed only by one script.

Keys (``P`` is the configured prefix; ``{o:OFFER_ID}`` is a Redis Cluster hash tag, so every key of one
offer lives in one slot and the claim script is legal on a cluster)::

    P:money:{o:OFFER_ID}                     hash  units -> units reserved (= accepted claims)
                                                   cost_milli -> budget used, in 1/1000 of the currency
    P:money:{o:OFFER_ID}:members             hash  member_id -> "CLAIMS:LAST_CLAIM_TS" (claims accepted
                                                   for the member and the time of the last one)
    P:money:{o:OFFER_ID}:idem:MEMBER:EVENT   string JSON outcome of the claim with that idempotency key
                                                   (the claim's event id), EX idempotency_ttl_seconds

The two hashes are the money itself. The design exempts them from the TTL-on-every-key rule: they live
as long as the campaign (``EXPIREAT`` the offer's campaign or validity end plus ``retention_seconds``;
no expiry for an offer with neither) and must survive a Redis restart (AOF in production, see the
README, and ``benefits replay`` rebuilds them from the event log after a data loss).

Budget is kept in integer milli-units: Lua numbers are doubles, and a float running sum would make
"60 budget, cost 0.1" refuse or accept the 600th claim depending on rounding. Exact up to 9e12 currency.

Why one script: the check and the reservation (stock, budget, the member's claim cap and cool-down) and
the stored outcome must be one atomic step, or two concurrent claims both pass the check. The script is
idempotent per key: a call whose idempotency record exists returns that first outcome and changes
nothing, so a client retry, a retry by redis-py after a timeout, or a command delayed by a Redis stall
and executed after its retry, all reserve at most once.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import orjson
import redis.asyncio as aioredis

from features.decay import HOUR
from features.offers import Offer

MILLI = 1000

# KEYS: money hash, members hash, idempotency record.
# ARGV: 1 member_id, 2 now (s), 3 inventory (-1: unlimited), 4 budget_milli (-1: none), 5 cost_milli,
#       6 max_claims_per_member, 7 cool-down after a claim (s), 8 idempotency ttl (s),
#       9 EXPIREAT of the money keys (0: none), 10 event_id, 11 event_ts (string, kept exact),
#       12 a refusal the caller found on the member's state for a rule ordered after budget_exhausted
#          ('claimed' or 'dismissed'; '' for none), so the reported rule is the first one in RULES order
# Returns {1, outcome} for a new outcome, {0, outcome} for the stored first outcome of this key.
# The order of the checks is the order of features.eligibility.RULES (sold_out, budget_exhausted,
# claimed), so a claim and a ranking give the same reason for the same facts.
_CLAIM_LUA = """
local prior = redis.call('GET', KEYS[3])
if prior then return {0, prior} end
local units = tonumber(redis.call('HGET', KEYS[1], 'units') or '0')
local used = tonumber(redis.call('HGET', KEYS[1], 'cost_milli') or '0')
local inventory = tonumber(ARGV[3])
local budget = tonumber(ARGV[4])
local cost = tonumber(ARGV[5])
local now = tonumber(ARGV[2])
local prev = redis.call('HGET', KEYS[2], ARGV[1])
local count, last = 0, 0
if prev then
  local c, t = string.match(prev, '^(%d+):(.+)$')
  count, last = tonumber(c), tonumber(t)
end
local reason = nil
if inventory >= 0 and units + 1 > inventory then
  reason = 'sold_out'
elseif budget >= 0 and used + cost > budget then
  reason = 'budget_exhausted'
elseif ARGV[12] == 'claimed' or count >= tonumber(ARGV[6])
    or (count > 0 and now - last < tonumber(ARGV[7])) then
  reason = 'claimed'
elseif ARGV[12] ~= '' then
  reason = ARGV[12]
end
local out
if reason then
  out = cjson.encode({status = 'refused', reason = reason, event_id = ARGV[10], event_ts = ARGV[11],
                      units = units, cost_milli = used})
else
  units = redis.call('HINCRBY', KEYS[1], 'units', 1)
  used = redis.call('HINCRBY', KEYS[1], 'cost_milli', cost)
  redis.call('HSET', KEYS[2], ARGV[1], (count + 1) .. ':' .. ARGV[2])
  local expire_at = tonumber(ARGV[9])
  if expire_at > 0 then
    redis.call('EXPIREAT', KEYS[1], expire_at)
    redis.call('EXPIREAT', KEYS[2], expire_at)
  end
  out = cjson.encode({status = 'accepted', event_id = ARGV[10], event_ts = ARGV[11], units = units,
                      cost_milli = used, charged_milli = cost, prev = prev or ''})
end
redis.call('SET', KEYS[3], out, 'EX', tonumber(ARGV[8]))
return {1, out}
"""

# Undo an accepted claim whose event could not be published (so it is recorded nowhere else): give the
# unit, the budget and the member's claim back and forget the outcome, only if the stored outcome is
# still that accepted claim. KEYS as for the claim; ARGV: member_id. Returns 1 when undone, else 0.
_RELEASE_LUA = """
local raw = redis.call('GET', KEYS[3])
if not raw then return 0 end
local rec = cjson.decode(raw)
if rec.status ~= 'accepted' then return 0 end
redis.call('HINCRBY', KEYS[1], 'units', -1)
redis.call('HINCRBY', KEYS[1], 'cost_milli', -tonumber(rec.charged_milli))
if rec.prev == '' then
  redis.call('HDEL', KEYS[2], ARGV[1])
else
  redis.call('HSET', KEYS[2], ARGV[1], rec.prev)
end
redis.call('DEL', KEYS[3])
return 1
"""

# Store a refusal decided before the claim script (eligibility on the member's state) unless an outcome
# is stored already; returns the stored first outcome. KEYS[1]: record; ARGV: outcome, ttl (s).
_REFUSE_LUA = """
local prior = redis.call('GET', KEYS[1])
if prior then return {0, prior} end
redis.call('SET', KEYS[1], ARGV[1], 'EX', tonumber(ARGV[2]))
return {1, ARGV[1]}
"""

# Replace one offer's money state (replay after a data loss). KEYS: money hash, members hash.
# ARGV: 1 units, 2 cost_milli, 3 EXPIREAT (0: none), then member_id / "CLAIMS:LAST_TS" pairs.
_RESTORE_LUA = """
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('HSET', KEYS[1], 'units', ARGV[1], 'cost_milli', ARGV[2])
for i = 4, #ARGV, 2 do redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]) end
local expire_at = tonumber(ARGV[3])
if expire_at > 0 then
  redis.call('EXPIREAT', KEYS[1], expire_at)
  if #ARGV >= 4 then redis.call('EXPIREAT', KEYS[2], expire_at) end
end
return 1
"""


def to_milli(amount: float) -> int:
    """Currency to integer milli-units (rounded half away from zero, like a cashier)."""
    return math.floor(amount * MILLI + 0.5)


@dataclass(frozen=True)
class ClaimLimits:
    """The limits of one offer the claim script enforces, taken from the offer at claim time."""

    inventory: int | None
    budget_milli: int | None
    cost_milli: int
    max_claims_per_member: int
    cooldown_s: float
    #: Unix seconds when the offer's money keys may expire (0: never).
    expire_at: int

    @classmethod
    def of(cls, offer: Offer, retention_seconds: int) -> ClaimLimits:
        end = offer.campaign_end_ts if offer.campaign_end_ts is not None else offer.eligibility.valid_to_ts
        return cls(
            inventory=offer.inventory,
            budget_milli=to_milli(offer.budget) if offer.budget is not None else None,
            cost_milli=to_milli(offer.cost),
            max_claims_per_member=offer.caps.max_claims_per_member,
            cooldown_s=offer.caps.cooldown_after_claim_hours * HOUR,
            expire_at=int(end + retention_seconds) if end is not None else 0,
        )


@dataclass(frozen=True)
class ClaimOutcome:
    """What a claim decided. ``first`` is False when this is the stored outcome of an earlier call with
    the same idempotency key (nothing changed this time)."""

    status: Literal["accepted", "refused"]
    reason: str | None
    event_id: str
    event_ts: float
    #: Units reserved and budget used (milli) right after this claim was decided.
    units_used: int
    cost_used_milli: int
    first: bool

    @property
    def accepted(self) -> bool:
        return self.status == "accepted"


@dataclass(frozen=True)
class Usage:
    units: int = 0
    cost_milli: int = 0

    @property
    def cost(self) -> float:
        return self.cost_milli / MILLI


@dataclass(frozen=True)
class RebuiltOffer:
    """One offer's money state recomputed from the event log (``benefits replay``)."""

    offer_id: str
    units: int
    cost_milli: int
    #: member_id -> (claims, last claim ts)
    members: dict[str, tuple[int, float]]
    #: accepted claims as (member_id, event_id, event_ts, units after, cost_milli after, charged_milli)
    claims: list[tuple[str, str, float, int, int, int]]
    expire_at: int = 0


def _offer_of(key: bytes | str) -> str:
    """The offer id inside a money key's hash tag (``...:money:{o:OFFER_ID}...``)."""
    text = key.decode() if isinstance(key, bytes) else key
    return text.split("{o:", 1)[1].split("}", 1)[0]


def _outcome(raw: bytes | str, first: bool) -> ClaimOutcome:
    rec = orjson.loads(raw)
    return ClaimOutcome(
        status=rec["status"],
        reason=rec.get("reason"),
        event_id=rec["event_id"],
        event_ts=float(rec["event_ts"]),
        units_used=int(rec.get("units", 0)),
        cost_used_milli=int(rec.get("cost_milli", 0)),
        first=first,
    )


class MoneyStore:
    """Claims against an offer's limits, atomically and idempotently; works on Redis and Redis Cluster.

    Give it a client without automatic retries (``infra.redis_client.connect(..., retries=0)``): the
    script is safe to retry, but the caller decides how long a claim may wait, and a retry hidden in the
    client would spend that budget without the caller knowing the first attempt timed out.
    """

    def __init__(
        self,
        client: aioredis.Redis | aioredis.RedisCluster,
        prefix: str = "bn",
        idempotency_ttl_seconds: int = 24 * 3600,
        retention_seconds: int = 90 * 24 * 3600,
    ) -> None:
        self.r = client
        self.prefix = prefix
        self.idempotency_ttl_seconds = idempotency_ttl_seconds
        self.retention_seconds = retention_seconds
        self._claim = client.register_script(_CLAIM_LUA)
        self._release = client.register_script(_RELEASE_LUA)
        self._refuse = client.register_script(_REFUSE_LUA)
        self._restore = client.register_script(_RESTORE_LUA)

    # -- keys ----------------------------------------------------------------------------------------
    def money_key(self, offer_id: str) -> str:
        return f"{self.prefix}:money:{{o:{offer_id}}}"

    def members_key(self, offer_id: str) -> str:
        return f"{self.prefix}:money:{{o:{offer_id}}}:members"

    def record_key(self, offer_id: str, member_id: str, event_id: str) -> str:
        return f"{self.prefix}:money:{{o:{offer_id}}}:idem:{member_id}:{event_id}"

    def pattern(self) -> str:
        """Glob of every money key (all offers)."""
        return f"{self.prefix}:money:*"

    def limits(self, offer: Offer) -> ClaimLimits:
        return ClaimLimits.of(offer, self.retention_seconds)

    def _keys(self, offer_id: str, member_id: str, event_id: str) -> list[str]:
        return [
            self.money_key(offer_id),
            self.members_key(offer_id),
            self.record_key(offer_id, member_id, event_id),
        ]

    # -- the claim -----------------------------------------------------------------------------------
    async def claim(
        self,
        offer_id: str,
        member_id: str,
        event_id: str,
        event_ts: float,
        now: float,
        limits: ClaimLimits,
        later_refusal: str | None = None,
    ) -> ClaimOutcome:
        """Check every limit and reserve one unit, budget and a member claim in one atomic step.

        ``event_id`` is the idempotency key: calling again with it returns the first outcome unchanged.
        ``later_refusal``: a rule the caller found failing on the member's state that comes after
        ``budget_exhausted`` in ``features.eligibility.RULES`` (``claimed``, ``dismissed``); the script
        refuses with it unless stock or budget, which come first, refuse already.
        """
        args: list[str | int] = [
            member_id,
            repr(float(now)),
            limits.inventory if limits.inventory is not None else -1,
            limits.budget_milli if limits.budget_milli is not None else -1,
            limits.cost_milli,
            limits.max_claims_per_member,
            repr(float(limits.cooldown_s)),
            self.idempotency_ttl_seconds,
            limits.expire_at,
            event_id,
            repr(float(event_ts)),
            later_refusal or "",
        ]
        fresh, raw = await self._claim(keys=self._keys(offer_id, member_id, event_id), args=args)
        return _outcome(raw, first=bool(fresh))

    async def outcome(self, offer_id: str, member_id: str, event_id: str) -> ClaimOutcome | None:
        """The stored outcome of a claim with this idempotency key, if any."""
        raw = await self.r.get(self.record_key(offer_id, member_id, event_id))
        return _outcome(raw, first=False) if raw is not None else None

    async def refuse(
        self, offer_id: str, member_id: str, event_id: str, event_ts: float, reason: str
    ) -> ClaimOutcome:
        """Record a refusal decided before the script (unless an outcome exists); returns the first one."""
        out = orjson.dumps(
            {"status": "refused", "reason": reason, "event_id": event_id, "event_ts": repr(float(event_ts))}
        )
        fresh, raw = await self._refuse(
            keys=[self.record_key(offer_id, member_id, event_id)], args=[out, self.idempotency_ttl_seconds]
        )
        return _outcome(raw, first=bool(fresh))

    async def release(self, offer_id: str, member_id: str, event_id: str) -> bool:
        """Undo an accepted claim that was not recorded anywhere (its event was never published)."""
        done = await self._release(keys=self._keys(offer_id, member_id, event_id), args=[member_id])
        return bool(done)

    # -- reads ---------------------------------------------------------------------------------------
    async def usage(self, offer_ids: Iterable[str]) -> dict[str, Usage]:
        """Units and budget used per offer (one non-transactional pipeline, so it works on a cluster);
        offers never claimed are absent."""
        ids = list(offer_ids)
        if not ids:
            return {}
        async with self.r.pipeline(transaction=False) as pipe:
            for oid in ids:
                pipe.hmget(self.money_key(oid), ["units", "cost_milli"])
            raws = await pipe.execute()
        out = {}
        for oid, (units, cost) in zip(ids, raws, strict=True):
            if units is not None or cost is not None:
                out[oid] = Usage(int(units or 0), int(cost or 0))
        return out

    async def member_claims(self, offer_id: str, member_id: str) -> tuple[int, float]:
        """(claims accepted, last claim ts) of one member on one offer; (0, 0.0) when none."""
        raw = await self.r.hget(self.members_key(offer_id), member_id)
        if raw is None:
            return 0, 0.0
        count, _, ts = (raw.decode() if isinstance(raw, bytes) else raw).partition(":")
        return int(count), float(ts)

    async def all_member_claims(self, offer_id: str) -> dict[str, tuple[int, float]]:
        raw = await self.r.hgetall(self.members_key(offer_id))
        out = {}
        for k, v in raw.items():
            count, _, ts = (v.decode() if isinstance(v, bytes) else v).partition(":")
            out[k.decode() if isinstance(k, bytes) else k] = (int(count), float(ts))
        return out

    # -- erasure (DELETE /v1/members/{id}) ---------------------------------------------------------
    async def claim_record_offers(self, member_id: str) -> list[str]:
        """Offers whose per-member claim counter names the member (kept on erasure: see the README)."""
        keys = [k async for k in self.r.scan_iter(match=f"{self.prefix}:money:{{o:*}}:members", count=500)]
        if not keys:
            return []
        async with self.r.pipeline(transaction=False) as pipe:
            for k in keys:
                pipe.hexists(k, member_id)
            hits = await pipe.execute()
        return sorted(_offer_of(k) for k, hit in zip(keys, hits, strict=True) if hit)

    async def erase_idempotency_records(self, member_id: str) -> int:
        """Delete the member's stored claim outcomes (retry records); returns how many. A key names the
        member and the event id, both of which may contain ':', so each record's own event id decides
        whether a key matching the pattern is this member's."""
        pattern = f"{self.prefix}:money:{{o:*}}:idem:{member_id}:*"
        keys = [k async for k in self.r.scan_iter(match=pattern, count=500)]
        mine = []
        for k in keys:
            raw = await self.r.get(k)
            if raw is None:
                continue
            key = k.decode() if isinstance(k, bytes) else k
            if key == self.record_key(_offer_of(key), member_id, str(orjson.loads(raw).get("event_id"))):
                mine.append(key)
        for k in mine:
            await self.r.delete(k)  # one key per call: the records of many offers span cluster slots
        return len(mine)

    # -- rebuild (benefits replay) -------------------------------------------------------------------
    async def restore(self, rebuilt: RebuiltOffer) -> None:
        """Replace one offer's money state and recreate the idempotency records of its accepted claims
        (each with the TTL it has left, so a retry after the data loss still returns "accepted")."""
        args: list[str | int] = [rebuilt.units, rebuilt.cost_milli, rebuilt.expire_at]
        for mid, (count, ts) in sorted(rebuilt.members.items()):
            args += [mid, f"{count}:{float(ts)!r}"]
        await self._restore(
            keys=[self.money_key(rebuilt.offer_id), self.members_key(rebuilt.offer_id)], args=args
        )
        now = time.time()
        async with self.r.pipeline(transaction=False) as pipe:
            n = 0
            for mid, eid, ts, units, cost, charged in rebuilt.claims:
                ttl = int(ts + self.idempotency_ttl_seconds - now)
                if ttl <= 0:
                    continue
                rec = {
                    "status": "accepted",
                    "event_id": eid,
                    "event_ts": repr(float(ts)),
                    "units": units,
                    "cost_milli": cost,
                    "charged_milli": charged,
                    "prev": "",
                }
                pipe.set(self.record_key(rebuilt.offer_id, mid, eid), orjson.dumps(rec), ex=ttl)
                n += 1
            if n:
                await pipe.execute()
