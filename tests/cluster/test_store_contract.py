"""The store contract, run on a single Redis and on a Redis Cluster (see conftest): what the worker and
the API rely on must behave the same on both, with the client built by ``infra.redis_client``.

Checks that matter on a cluster: pipelines whose keys span slots (non-transactional), the inventory
Lua script (one key), erasure and offer-stat listing that must see keys on every master, and a TTL on
every key written. Cross-checks read every node with a plain client, never the client under test.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest
import redis.asyncio as aioredis

from features.offer_stats import OfferCounters
from features.state import new_state
from infra.redis_client import connect, open_client
from infra.redis_layout import MemberStore, RedisLayout, StoredMember, StoredOfferStats
from tests.cluster.conftest import Backend

pytestmark = pytest.mark.integration

T = TypeVar("T")


def _layout(unique: str) -> RedisLayout:
    return RedisLayout(prefix=f"t{unique}", member_ttl_seconds=3600, stats_ttl_seconds=1800)


def run(backend: Backend, layout: RedisLayout, body: Callable[[MemberStore], Awaitable[T]]) -> T:
    async def main() -> T:
        client = await open_client(backend.url, cluster=backend.cluster, timeout_ms=2000)
        try:
            return await body(MemberStore(client, layout))
        finally:
            await client.aclose()

    return asyncio.run(main())


def node_keys(backend: Backend, pattern: str) -> dict[str, dict[bytes, int]]:
    """node url -> {key: ttl} for every key matching ``pattern``, read node by node."""

    async def main() -> dict[str, dict[bytes, int]]:
        out: dict[str, dict[bytes, int]] = {}
        for url in backend.node_urls:
            r = aioredis.Redis.from_url(url)
            try:
                keys = [k async for k in r.scan_iter(match=pattern, count=500)]
                out[url] = {k: int(await r.ttl(k)) for k in keys}
            finally:
                await r.aclose()
        return out

    return asyncio.run(main())


def member(mid: str, orders: int = 1) -> StoredMember:
    state = new_state(mid)
    state.orders_total = orders
    return StoredMember(state=state, offsets={0: orders})


def test_member_round_trip(backend: Backend, unique: str) -> None:
    layout = _layout(unique)

    async def body(store: MemberStore) -> None:
        assert await store.get_member("m-1") is None
        assert await store.put_members([member("m-1", orders=3)]) == 1
        got = await store.get_member("m-1")
        assert got is not None
        assert got.state.member_id == "m-1"
        assert got.state.orders_total == 3
        assert got.offsets == {0: 3}

    run(backend, layout, body)


def test_get_members_pipelined_across_slots(backend: Backend, unique: str) -> None:
    layout = _layout(unique)
    ids = [f"m-{i}" for i in range(300)]
    written = ids[::2]

    async def body(store: MemberStore) -> list[StoredMember | None]:
        await store.put_members(member(mid, orders=i) for i, mid in enumerate(written))
        return await store.get_members([*ids, "never-seen"])

    got = run(backend, layout, body)
    assert len(got) == len(ids) + 1
    for mid, stored in zip([*ids, "never-seen"], got, strict=True):
        if mid in written:
            assert stored is not None and stored.state.member_id == mid
        else:
            assert stored is None
    # On the cluster the batch really did span every master (else the test proves nothing).
    per_node = node_keys(backend, f"{layout.prefix}:m:*")
    assert sum(len(k) for k in per_node.values()) == len(written)
    assert all(per_node.values()), f"some node holds no member: { {u: len(k) for u, k in per_node.items()} }"


def test_member_ids_scan_every_node(backend: Backend, unique: str) -> None:
    """The fairness audit samples members by SCAN: it must see the members on every master, and only
    member blobs of its own prefix."""
    layout = _layout(unique)
    other = _layout(f"{unique}x")  # a prefix that starts like this one
    written = [f"m-{i}" for i in range(120)]

    async def body(store: MemberStore) -> tuple[list[str], list[str]]:
        await store.put_members(member(mid) for mid in written)
        await MemberStore(store.r, other).put_members([member("someone-else")])
        await store.r.set(f"{layout.prefix}:m:{{m-1}}:extra", b"1", ex=60)  # not a state blob
        return await store.member_ids(limit=1000), await store.member_ids(limit=30)

    everyone, some = run(backend, layout, body)
    assert sorted(everyone) == sorted(written)
    assert len(some) == 30 and set(some) <= set(written)


def test_offer_stats_put_and_list_all(backend: Backend, unique: str) -> None:
    layout = _layout(unique)
    partitions = list(range(12))

    async def body(store: MemberStore) -> list[StoredOfferStats]:
        for p in partitions:
            await store.put_offer_stats(
                StoredOfferStats(partition=p, offset=100 + p, counters={"o1": OfferCounters(impressions=p)})
            )
        one = await store.get_offer_stats(5)
        assert one is not None and one.offset == 105
        return await store.all_offer_stats()

    stats = run(backend, layout, body)
    assert sorted(s.partition for s in stats) == partitions
    assert {s.partition: s.counters["o1"].impressions for s in stats} == {p: p for p in partitions}
    if backend.cluster:
        per_node = node_keys(backend, f"{layout.prefix}:os:*")
        assert sum(1 for keys in per_node.values() if keys) > 1, "partials should spread over masters"


def test_batch_read_and_write_span_slots(backend: Backend, unique: str) -> None:
    if not hasattr(MemberStore, "write_batch"):
        pytest.skip("MemberStore.write_batch/read_batch not present in this revision")
    layout = _layout(unique)
    ids = [f"b-{i}" for i in range(100)]

    async def body(store: MemberStore) -> None:
        stats = [StoredOfferStats(partition=p, offset=p, counters={}) for p in range(4)]
        assert await store.write_batch([member(m) for m in ids], stats) == len(ids) + 4
        members, partials = await store.read_batch(ids, [0, 1, 2, 3, 99])
        assert [m.state.member_id if m else None for m in members] == ids
        assert [s.partition if s else None for s in partials] == [0, 1, 2, 3, None]

    run(backend, layout, body)


def test_reserve_is_atomic_under_concurrency(backend: Backend, unique: str) -> None:
    layout = _layout(unique)
    offers = ["first-1000", "vip-gift", "stylist"]

    async def body(store: MemberStore) -> tuple[dict[str, list[int | None]], dict[str, int]]:
        async def claim(oid: str) -> int | None:
            return await store.reserve(oid, limit=10, ttl_seconds=600)

        results: dict[str, list[int | None]] = {}
        for oid in offers:
            results[oid] = list(await asyncio.gather(*(claim(oid) for _ in range(60))))
        return results, await store.reserved([*offers, "unknown"])

    results, reserved = run(backend, layout, body)
    for oid in offers:
        granted = sorted(r for r in results[oid] if r is not None)
        assert granted == list(range(1, 11)), f"{oid}: {granted}"
    assert reserved == dict.fromkeys(offers, 10)


def test_erase_member_removes_every_key_on_every_node(backend: Backend, unique: str) -> None:
    layout = _layout(unique)
    victim, bystander = "erase-me", "keep-me"
    # Keys a later feature may add under the member's namespace: same hash tag, so the same slot.
    extra = [layout.member_key(victim).replace(":state", suffix) for suffix in (":seen", ":caps")]

    async def body(store: MemberStore) -> int:
        await store.put_members([member(victim), member(bystander)])
        for key in extra:
            await store.r.set(key, b"x", ex=60)
        return await store.erase_member(victim)

    assert run(backend, layout, body) == 3
    left = node_keys(backend, f"{layout.prefix}:m:*")
    all_keys = {k for keys in left.values() for k in keys}
    assert all_keys == {layout.member_key(bystander).encode()}


def test_every_key_written_has_a_ttl(backend: Backend, unique: str) -> None:
    layout = _layout(unique)

    async def body(store: MemberStore) -> None:
        await store.put_members(member(f"ttl-{i}") for i in range(50))
        for p in range(6):
            await store.put_offer_stats(StoredOfferStats(partition=p, offset=1, counters={}))
        for i in range(6):
            await store.reserve(f"offer-{i}", limit=5, ttl_seconds=900)
        if hasattr(store, "write_batch"):
            await store.write_batch([member(f"wb-{i}") for i in range(20)], [])

    run(backend, layout, body)
    per_node = node_keys(backend, f"{layout.prefix}:*")
    keys = {k: ttl for node in per_node.values() for k, ttl in node.items()}
    assert len(keys) >= 50 + 6 + 6
    no_ttl = sorted(k for k, ttl in keys.items() if ttl <= 0)
    assert not no_ttl, f"keys without a TTL: {no_ttl[:5]}"
    # TTLs come from the layout, not a default.
    assert all(0 < keys[layout.member_key(f"ttl-{i}").encode()] <= 3600 for i in range(50))
    assert 0 < keys[layout.offer_stats_key(0).encode()] <= 1800
    assert 0 < keys[layout.inventory_key("offer-0").encode()] <= 900


def test_member_keys_share_one_slot(backend: Backend, unique: str) -> None:
    """The hash-tag contract the cluster relies on: one member, one slot."""
    if not backend.cluster:
        pytest.skip("slots exist only on a cluster")
    layout = _layout(unique)

    async def main() -> None:
        r = aioredis.Redis.from_url(backend.node_urls[0])
        try:
            for mid in ["m-1", "a:b", "x}y"]:
                slots = {
                    await r.cluster("KEYSLOT", key)
                    for key in (layout.member_key(mid), layout.member_pattern(mid).replace("*", "other"))
                }
                assert len(slots) == 1, (mid, slots)
        finally:
            await r.aclose()

    asyncio.run(main())


def test_fresh_cluster_client_survives_a_burst(backend: Backend, unique: str) -> None:
    """``connect()`` without ``open_client``: the first concurrent burst is misrouted until the slot
    map loads (redis-py 8.1). The factory's settings must turn that into redirects, not failures."""
    layout = _layout(unique)

    async def main() -> list[int | None]:
        client = connect(backend.url, cluster=backend.cluster, timeout_ms=2000)
        try:
            store = MemberStore(client, layout)
            return list(await asyncio.gather(*(store.reserve("burst", 10, 600) for _ in range(60))))
        finally:
            await client.aclose()

    for i in range(3):
        layout = _layout(f"{unique}{i}")
        results = asyncio.run(main())
        assert sorted(r for r in results if r is not None) == list(range(1, 11))


def test_catalog_store_on_both(backend: Backend, unique: str) -> None:
    """The API's catalog (service/catalog.py) writes ``P:{catalog}`` and its version key in one
    MULTI and one Lua script. On a cluster those two keys must share a slot."""
    from features.demo_catalog import demo_catalog
    from infra.catalog_store import CatalogStore

    layout = _layout(unique)
    offers = demo_catalog(start_ts=1_700_000_000.0, n_offers=5)

    async def main() -> tuple[int, int]:
        client = await open_client(backend.url, cluster=backend.cluster, timeout_ms=2000)
        try:
            cat = CatalogStore(client, layout)  # type: ignore[arg-type]
            await cat.seed_if_empty(offers[:3])
            version = await cat.put(offers[4])
            v2, got = await cat.read_all()
            assert version == v2
            return v2, len(got)
        finally:
            await client.aclose()

    if backend.cluster:
        assert len(_slots(backend, [layout.catalog_key, layout.catalog_version_key])) == 1
    _, n = asyncio.run(main())
    assert n == 4


def _slots(backend: Backend, keys: list[str]) -> set[int]:
    async def main() -> set[int]:
        r = aioredis.Redis.from_url(backend.node_urls[0])
        try:
            return {int(await r.cluster("KEYSLOT", k)) for k in keys}
        finally:
            await r.aclose()

    return asyncio.run(main())


def test_store_epoch_on_both(backend: Backend, unique: str) -> None:
    """The store epoch (infra/epoch_store.py): the worker reads the marker and the ``lost`` record in one
    pipelined round trip before each batch write. A Redis Cluster pipeline refuses multi-key commands
    (an MGET there stopped every worker on a cluster), so both keys share a slot and are read by GETs."""
    from infra.epoch_store import StoreEpoch

    layout = _layout(unique)

    async def main() -> list[tuple[str | None, str | None]]:
        client = await open_client(backend.url, cluster=backend.cluster, timeout_ms=2000)
        try:
            epoch = StoreEpoch(client, layout)
            seen = [await epoch.read()]
            token = await epoch.ensure()
            seen.append(await epoch.read())
            await epoch.mark_lost("test")
            seen.append(await epoch.read())
            assert seen[1][0] == token
            return seen
        finally:
            await client.aclose()

    epoch_keys = [f"{layout.prefix}:{{epoch}}", f"{layout.prefix}:{{epoch}}:lost"]
    if backend.cluster:
        assert len(_slots(backend, epoch_keys)) == 1
    seen = asyncio.run(main())
    assert seen[0] == (None, None)
    assert seen[1][0] is not None and seen[1][1] is None
    assert seen[2] == (seen[1][0], "test")
    # Both keys expire (a TTL on every key).
    ttls = {k: t for keys in node_keys(backend, f"{layout.prefix}:*").values() for k, t in keys.items()}
    assert len(ttls) == 2 and all(t > 0 for t in ttls.values()), ttls
