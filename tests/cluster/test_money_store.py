"""The money store contract (``infra.money_store``), on a single Redis and on a Redis Cluster: every limit
is enforced by the one script, atomically under concurrency, idempotently per key, in one slot per offer.
Cross-checks read the servers with plain clients, never through the store under test.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest
import redis.asyncio as aioredis
from redis.exceptions import TimeoutError as RedisTimeoutError

from features.offers import Caps, Offer
from infra.money_store import ClaimLimits, MoneyStore, RebuiltOffer, Usage, to_milli
from infra.redis_client import open_client
from tests.cluster.conftest import Backend

pytestmark = pytest.mark.integration

T = TypeVar("T")
NOW = time.time()


def limits(
    inventory: int | None = None,
    budget: float | None = None,
    cost: float = 0.0,
    max_claims: int = 1,
    cooldown_s: float = 0.0,
    expire_at: int = 0,
) -> ClaimLimits:
    return ClaimLimits(
        inventory=inventory,
        budget_milli=to_milli(budget) if budget is not None else None,
        cost_milli=to_milli(cost),
        max_claims_per_member=max_claims,
        cooldown_s=cooldown_s,
        expire_at=expire_at,
    )


def run(
    backend: Backend, prefix: str, body: Callable[[MoneyStore], Awaitable[T]], timeout_ms: int = 2000
) -> T:
    async def main() -> T:
        client = await open_client(backend.url, cluster=backend.cluster, timeout_ms=timeout_ms, retries=0)
        try:
            return await body(MoneyStore(client, prefix=prefix, idempotency_ttl_seconds=600))
        finally:
            await client.aclose()

    return asyncio.run(main())


def test_limits_from_an_offer() -> None:
    offer = Offer(
        offer_id="o1", kind="coupon", subtype="threshold", title="t", cost=30.0, budget=60.0, inventory=5,
        campaign_start_ts=NOW - 10, campaign_end_ts=NOW + 100,
        caps=Caps(max_claims_per_member=2, cooldown_after_claim_hours=1.5),
    )  # fmt: skip
    lim = ClaimLimits.of(offer, retention_seconds=1000)
    assert lim == ClaimLimits(5, 60_000, 30_000, 2, 5400.0, int(NOW + 100 + 1000))
    assert to_milli(0.1) * 3 == to_milli(0.3)


def test_budget_60_cost_30_accepts_two(backend: Backend, unique: str) -> None:
    """The issue's bug: budget 60, cost 30 accepted 4 claims. Now 2, and the third names its rule."""

    async def body(s: MoneyStore) -> list[tuple[str, str | None, int]]:
        lim = limits(budget=60.0, cost=30.0)
        outs = [await s.claim("o-b", f"m{i}", f"e{i}", NOW, NOW, lim) for i in range(4)]
        usage = await s.usage(["o-b"])
        assert usage["o-b"].cost == 60.0 and usage["o-b"].units == 2
        return [(o.status, o.reason, o.cost_used_milli) for o in outs]

    got = run(backend, f"t{unique}", body)
    assert got == [
        ("accepted", None, 30_000),
        ("accepted", None, 60_000),
        ("refused", "budget_exhausted", 60_000),
        ("refused", "budget_exhausted", 60_000),
    ]


def test_inventory_then_sold_out(backend: Backend, unique: str) -> None:
    async def body(s: MoneyStore) -> list[str | None]:
        lim = limits(inventory=2)
        return [(await s.claim("o-i", f"m{i}", f"e{i}", NOW, NOW, lim)).reason for i in range(3)]

    assert run(backend, f"t{unique}", body) == [None, None, "sold_out"]


def test_per_member_cap_and_cool_down(backend: Backend, unique: str) -> None:
    """The issue's bug: max_claims_per_member=1 claimed three times. Then a cap of 2 with a cool-down."""

    async def body(s: MoneyStore) -> None:
        one = limits(max_claims=1)
        outs = [await s.claim("o-c", "m1", f"e{i}", NOW, NOW, one) for i in range(3)]
        assert [o.reason for o in outs] == [None, "claimed", "claimed"]
        assert await s.member_claims("o-c", "m1") == (1, NOW)
        two = limits(max_claims=2, cooldown_s=3600.0)
        assert (await s.claim("o-d", "m1", "a", NOW, NOW, two)).accepted
        assert (await s.claim("o-d", "m1", "b", NOW + 60, NOW + 60, two)).reason == "claimed"
        assert (await s.claim("o-d", "m1", "c", NOW + 3600, NOW + 3600, two)).accepted
        assert (await s.claim("o-d", "m1", "d", NOW + 9000, NOW + 9000, two)).reason == "claimed"
        assert await s.member_claims("o-d", "m1") == (2, NOW + 3600)

    run(backend, f"t{unique}", body)


def test_same_key_returns_first_outcome_and_changes_nothing(backend: Backend, unique: str) -> None:
    async def body(s: MoneyStore) -> None:
        lim = limits(inventory=10, budget=100.0, cost=10.0, max_claims=5)
        first = await s.claim("o-k", "m1", "key-1", NOW, NOW, lim)
        assert first.accepted and first.first
        for _ in range(3):
            again = await s.claim("o-k", "m1", "key-1", NOW + 1, NOW + 1, lim)
            assert again == dataclasses.replace(first, first=False)
        assert (await s.usage(["o-k"]))["o-k"].units == 1
        assert await s.member_claims("o-k", "m1") == (1, NOW)
        stored = await s.outcome("o-k", "m1", "key-1")
        assert stored is not None and stored.event_id == "key-1" and stored.units_used == 1
        # A refusal is a first outcome too: the same key keeps answering it.
        refused = await s.refuse("o-k", "m2", "key-2", NOW, "tier")
        assert refused.reason == "tier" and refused.first
        assert (await s.claim("o-k", "m2", "key-2", NOW, NOW, lim)).reason == "tier"
        assert (await s.refuse("o-k", "m1", "key-1", NOW, "tier")).accepted  # first outcome wins

    run(backend, f"t{unique}", body)


def test_release_gives_everything_back_once(backend: Backend, unique: str) -> None:
    async def body(s: MoneyStore) -> None:
        lim = limits(inventory=1, budget=50.0, cost=20.0, max_claims=1)
        assert (await s.claim("o-r", "m1", "k1", NOW, NOW, lim)).accepted
        assert (await s.claim("o-r", "m2", "k2", NOW, NOW, lim)).reason == "sold_out"
        assert await s.release("o-r", "m1", "k1")
        assert not await s.release("o-r", "m1", "k1")  # idempotent: the record is gone
        assert await s.usage(["o-r"]) == {"o-r": Usage(0, 0)}
        assert await s.member_claims("o-r", "m1") == (0, 0.0)
        assert await s.outcome("o-r", "m1", "k1") is None
        assert (await s.claim("o-r", "m3", "k3", NOW, NOW, lim)).accepted

    run(backend, f"t{unique}", body)


def test_race_never_exceeds_any_limit(backend: Backend, unique: str) -> None:
    """300 concurrent claims (150 members, each twice with different keys), stock 50, budget for 40,
    one per member: exactly 40 accepted, budget exactly spent, no member with two."""

    async def body(s: MoneyStore) -> None:
        lim = limits(inventory=50, budget=400.0, cost=10.0, max_claims=1)
        calls = [s.claim("o-race", f"m{i % 150}", f"e{i}", NOW, NOW, lim) for i in range(300)]
        outs = await asyncio.gather(*calls)
        accepted = [o for o in outs if o.accepted]
        assert len(accepted) == 40
        assert Counter(o.reason for o in outs if not o.accepted).keys() <= {"budget_exhausted", "claimed"}
        members = Counter(int(o.event_id[1:]) % 150 for o in accepted)
        assert max(members.values()) == 1
        u = (await s.usage(["o-race"]))["o-race"]
        assert (u.units, u.cost_milli) == (40, 400_000)
        assert sorted(o.units_used for o in accepted) == list(range(1, 41))
        claims = await s.all_member_claims("o-race")
        assert len(claims) == 40 and {c for c, _ in claims.values()} == {1}

    run(backend, f"t{unique}", body)


def test_keys_of_an_offer_share_one_slot_and_expire_with_the_campaign(backend: Backend, unique: str) -> None:
    prefix = f"t{unique}"
    expire_at = int(NOW + 7200)

    async def body(s: MoneyStore) -> None:
        await s.claim("o-slot", "m1", "k1", NOW, NOW, limits(expire_at=expire_at))

    run(backend, prefix, body)

    async def check() -> None:
        for url in backend.node_urls:
            r = aioredis.Redis.from_url(url)
            try:
                keys = [k async for k in r.scan_iter(match=f"{prefix}:money:*", count=500)]
                if backend.cluster and keys:
                    slots = {await r.cluster("KEYSLOT", k) for k in keys}
                    assert len(slots) == 1, slots
                for k in keys:
                    ttl = await r.ttl(k)
                    if b":idem:" in k:
                        assert 0 < ttl <= 600
                    else:
                        assert abs(ttl - (expire_at - time.time())) < 30
                if keys:
                    assert len(keys) == 3
                    return
            finally:
                await r.aclose()
        raise AssertionError("no money keys found on any node")

    asyncio.run(check())


def test_restore_replaces_state_and_records(backend: Backend, unique: str) -> None:
    async def body(s: MoneyStore) -> None:
        lim = limits(inventory=3, max_claims=1)
        await s.claim("o-x", "stale", "old", NOW, NOW, lim)
        rebuilt = RebuiltOffer(
            offer_id="o-x",
            units=2,
            cost_milli=0,
            members={"m1": (1, NOW - 5), "m2": (1, NOW - 1)},
            claims=[("m1", "e1", NOW - 5, 1, 0, 0), ("m2", "e2", NOW - 1, 2, 0, 0)],
        )
        await s.restore(rebuilt)
        assert (await s.usage(["o-x"]))["o-x"].units == 2
        assert await s.all_member_claims("o-x") == {"m1": (1, NOW - 5), "m2": (1, NOW - 1)}
        again = await s.claim("o-x", "m1", "e1", NOW, NOW, lim)
        assert again.accepted and not again.first and again.units_used == 1
        assert (await s.claim("o-x", "m3", "e3", NOW, NOW, lim)).accepted
        assert (await s.claim("o-x", "m4", "e4", NOW, NOW, lim)).reason == "sold_out"

    run(backend, f"t{unique}", body)


def test_stalled_redis_retry_with_the_same_key_takes_one_unit(backend: Backend, unique: str) -> None:
    """CLIENT PAUSE stalls every node longer than the client's timeout: the claim times out (outcome
    unknown), the delayed script may still run when Redis resumes, and a retry with the same key returns
    that first outcome. Nothing leaks: one unit for one claim."""
    prefix = f"t{unique}"

    async def body(s: MoneyStore) -> None:
        lim = limits(inventory=5, max_claims=5)
        plain = [aioredis.Redis.from_url(u) for u in backend.node_urls]
        try:
            for r in plain:
                await r.execute_command("CLIENT", "PAUSE", "300", "ALL")
            with pytest.raises((RedisTimeoutError, asyncio.TimeoutError)):
                await s.claim("o-stall", "m1", "key-stall", NOW, NOW, lim)
            await asyncio.sleep(0.4)
            retry = await s.claim("o-stall", "m1", "key-stall", NOW, NOW, lim)
            assert retry.accepted
            retry2 = await s.claim("o-stall", "m1", "key-stall", NOW, NOW, lim)
            assert retry2.accepted and not retry2.first
            assert (await s.usage(["o-stall"]))["o-stall"].units == 1
            assert await s.member_claims("o-stall", "m1") == (1, NOW)
        finally:
            for r in plain:
                await r.execute_command("CLIENT", "UNPAUSE")
                await r.aclose()

    run(backend, prefix, body, timeout_ms=80)


_BUSY_LUA = """
local t = redis.call('TIME')
local start = t[1] * 1000 + t[2] / 1000
repeat t = redis.call('TIME') until t[1] * 1000 + t[2] / 1000 - start >= tonumber(ARGV[1])
return 1
"""


@pytest.mark.parametrize("client_retries", [0, 2])
def test_a_late_script_and_its_retries_reserve_once(
    backend: Backend, unique: str, client_retries: int
) -> None:
    """The issue's mechanism: the server is busy, the claim times out, its script runs late anyway, and
    redis-py's own retry sent it again (39 units for 25 claims). Idempotent per key, it reserves once,
    with or without the client's automatic retries."""
    if backend.cluster:
        pytest.skip("one busy node is enough to show it; the script is the same on a cluster")
    prefix = f"t{unique}"

    async def main() -> None:
        client = await open_client(backend.url, cluster=False, timeout_ms=60, retries=client_retries)
        busy_client = aioredis.Redis.from_url(backend.url)
        s = MoneyStore(client, prefix=prefix, idempotency_ttl_seconds=600)
        lim = limits(inventory=5, max_claims=5)
        try:
            # Load the script first: a late EVALSHA of a script the server does not know yet is a harmless
            # NOSCRIPT error, not the case under test.
            await s.claim("o-warm", "m1", "warm", NOW, NOW, lim)
            for i in range(3):
                busy = asyncio.create_task(busy_client.eval(_BUSY_LUA, 0, 250))
                await asyncio.sleep(0.02)
                try:
                    out = await s.claim("o-late", "m1", f"late-{i}", NOW, NOW, lim)
                    assert out.accepted  # answered after the client's own retries
                except (TimeoutError, RedisTimeoutError):
                    pass  # outcome unknown to the caller
                await busy
                assert (await s.usage(["o-late"]))["o-late"].units == i + 1  # it ran, once
                again = await s.claim("o-late", "m1", f"late-{i}", NOW, NOW, lim)
                assert again.accepted and not again.first and again.units_used == i + 1
            assert (await s.usage(["o-late"]))["o-late"].units == 3
        finally:
            await client.aclose()
            await busy_client.aclose()

    asyncio.run(main())


def test_erasure_finds_a_members_records_on_every_node(backend: Backend, unique: str) -> None:
    """Erasure (service.erasure): the member's retry records go, on whichever node their offer lives,
    and only theirs (``m1:x``'s keys match ``m1``'s pattern); the claim counters stay and are listed."""

    async def body(s: MoneyStore) -> None:
        lim = limits(max_claims=3)
        offers = [f"o-{i}" for i in range(8)]  # spread over slots
        for oid in offers:
            assert (await s.claim(oid, "m1", f"k-{oid}", NOW, NOW, lim)).accepted
        assert (await s.claim("o-0", "m1:x", "k-o-0", NOW, NOW, lim)).accepted
        await s.refuse("o-1", "m1", "refused:1", NOW, "tier")
        assert await s.claim_record_offers("m1") == sorted(offers)
        assert await s.erase_idempotency_records("m1") == len(offers) + 1
        assert all([await s.outcome(oid, "m1", f"k-{oid}") is None for oid in offers])
        assert await s.outcome("o-0", "m1:x", "k-o-0") is not None
        assert await s.member_claims("o-3", "m1") == (1, NOW)  # the cap's record is kept
        assert await s.erase_idempotency_records("m1") == 0
        assert await s.claim_record_offers("nobody") == []

    run(backend, f"t{unique}", body)
