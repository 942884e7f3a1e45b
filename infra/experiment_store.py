"""The experiment store: the declared experiment with its bucket allocation, and per-arm counters.

Keys (``P`` is the configured prefix)::

    P:{xp}:current              JSON of service.experiments.StoredExperiment (declaration, each arm's
                                bucket ranges, revision). SET EX catalog_ttl_seconds on every write;
                                every API replica polls it. Written only by ``put_if_revision`` (a Lua
                                compare-and-set on the revision), so two admins racing cannot both win.
    P:{xp}:arms:EXPERIMENT_ID   hash "ARM|COUNTER" -> number (views, impressions, clicks, claims,
                                redemptions, dismisses, cost). HINCRBYFLOAT from the replicas' periodic
                                flush (never on the request path); EXPIRE stats_ttl_seconds on each flush.

All keys share the ``{xp}`` hash tag, so the compare-and-set and a flush are single-slot on a cluster.
The store knows nothing of the declaration's shape: it keeps bytes and numbers.
"""

from __future__ import annotations

from collections.abc import Mapping

from infra.redis_client import AnyRedis
from infra.redis_layout import RedisLayout

#: Counter names kept per arm (the report's vocabulary).
ARM_COUNTERS: tuple[str, ...] = (
    "views",
    "impressions",
    "clicks",
    "claims",
    "redemptions",
    "dismisses",
    "cost",
)

# Write ARGV[1] with EX ARGV[3] only if the stored revision is ARGV[2] (0 = nothing stored yet).
# cjson is available in every Redis with Lua; the revision sits at the top level of the JSON.
_CAS_LUA = """
local cur = redis.call('GET', KEYS[1])
local rev = 0
if cur then rev = tonumber(cjson.decode(cur)['revision']) or 0 end
if rev ~= tonumber(ARGV[2]) then return rev end
redis.call('SET', KEYS[1], ARGV[1], 'EX', tonumber(ARGV[3]))
return -1
"""


def current_key(layout: RedisLayout) -> str:
    return f"{layout.prefix}:{{xp}}:current"


def arms_key(layout: RedisLayout, experiment_id: str) -> str:
    return f"{layout.prefix}:{{xp}}:arms:{experiment_id}"


class ExperimentStore:
    def __init__(self, client: AnyRedis, layout: RedisLayout) -> None:
        self.r = client
        self.layout = layout
        self._cas = client.register_script(_CAS_LUA)

    async def get_raw(self) -> bytes | None:
        raw = await self.r.get(current_key(self.layout))
        if raw is None:
            return None
        return raw if isinstance(raw, bytes) else raw.encode()

    async def put_if_revision(self, raw: bytes, expected_revision: int) -> int | None:
        """Store ``raw`` if the stored revision is ``expected_revision``; else return the stored one."""
        got = int(
            await self._cas(
                keys=[current_key(self.layout)],
                args=[raw, expected_revision, self.layout.catalog_ttl_seconds],
            )
        )
        return None if got < 0 else got

    async def delete(self) -> bool:
        return bool(await self.r.delete(current_key(self.layout)))

    async def add_counts(self, experiment_id: str, deltas: Mapping[str, Mapping[str, float]]) -> None:
        """Add ``{arm: {counter: delta}}`` to the experiment's counters in one pipelined round trip."""
        key = arms_key(self.layout, experiment_id)
        async with self.r.pipeline(transaction=False) as pipe:
            n = 0
            for arm, counters in deltas.items():
                for name, delta in counters.items():
                    if delta:
                        pipe.hincrbyfloat(key, f"{arm}|{name}", float(delta))
                        n += 1
            if n:
                pipe.expire(key, self.layout.stats_ttl_seconds)
                await pipe.execute()

    async def counts(self, experiment_id: str) -> dict[str, dict[str, float]]:
        """``{arm: {counter: value}}`` summed over every replica's flushes."""
        raw = await self.r.hgetall(arms_key(self.layout, experiment_id))
        out: dict[str, dict[str, float]] = {}
        for k, v in raw.items():
            field = k.decode() if isinstance(k, bytes) else str(k)
            arm, _, name = field.rpartition("|")
            out.setdefault(arm, dict.fromkeys(ARM_COUNTERS, 0.0))[name] = float(v)
        return out
