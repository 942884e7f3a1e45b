"""``LAYOUT_VERSION`` is enforced on read, on both stores: a blob of another layout version is treated
as missing (and counted), never decoded as if it were the current format."""

from __future__ import annotations

import asyncio

import msgspec
import pytest

import infra.redis_layout as rl
from features.offer_stats import OfferCounters
from features.state import new_state
from infra.redis_client import open_client
from infra.redis_layout import (
    LAYOUT_VERSION,
    LayoutMismatch,
    MemberStore,
    RedisLayout,
    StoredMember,
    StoredOfferStats,
    decode_member,
    decode_offer_stats,
    encode_member,
)
from tests.cluster.conftest import Backend

OTHER = LAYOUT_VERSION + 1


def _other_member(mid: str) -> bytes:
    # Encoded directly: the store's encoder would stamp the current version.
    return msgspec.msgpack.encode(StoredMember(state=new_state(mid), offsets={0: 5}, layout=OTHER))


def _other_stats(partition: int) -> bytes:
    return msgspec.msgpack.encode(
        StoredOfferStats(partition=partition, offset=9, counters={"o": OfferCounters(clicks=3)}, layout=OTHER)
    )


def test_decoders_refuse_another_layout() -> None:
    with pytest.raises(LayoutMismatch):
        decode_member(_other_member("m"))
    with pytest.raises(LayoutMismatch):
        decode_offer_stats(_other_stats(0))
    # A caller that treats undecodable blobs as unusable (the recommend path) catches this too.
    assert issubclass(LayoutMismatch, msgspec.ValidationError)
    assert decode_member(encode_member(StoredMember(state=new_state("m")))).state.member_id == "m"


def test_unmarked_blob_is_not_taken_for_a_newer_layout(monkeypatch: pytest.MonkeyPatch) -> None:
    """Member blobs omit default fields, so today's blobs carry no ``layout``: after a bump they must
    read as the old version, not pass for the new one."""
    today = encode_member(StoredMember(state=new_state("m")))
    monkeypatch.setattr(rl, "LAYOUT_VERSION", LAYOUT_VERSION + 1)
    with pytest.raises(LayoutMismatch):
        decode_member(today)
    # And what the bumped code writes carries its version explicitly.
    assert decode_member(encode_member(StoredMember(state=new_state("m")))).layout == LAYOUT_VERSION + 1


@pytest.mark.integration
def test_store_reads_another_layout_as_missing(backend: Backend, unique: str) -> None:
    layout = RedisLayout(prefix=f"t{unique}", member_ttl_seconds=600, stats_ttl_seconds=600)

    async def main() -> None:
        client = await open_client(backend.url, cluster=backend.cluster, timeout_ms=2000)
        try:
            store = MemberStore(client, layout)
            await client.set(layout.member_key("old"), _other_member("old"), ex=600)
            await client.set(layout.offer_stats_key(3), _other_stats(3), ex=600)
            await store.put_members([StoredMember(state=new_state("new"))])
            assert await store.get_member("old") is None
            got = await store.get_members(["old", "new"])
            assert got[0] is None and got[1] is not None
            members, stats = await store.read_batch(["old", "new"], [3])
            assert members[0] is None and members[1] is not None
            assert stats == [None]
            assert await store.get_offer_stats(3) is None
            assert all(s.partition != 3 for s in await store.all_offer_stats())
            assert store.stale_layout_reads == 6
        finally:
            await client.aclose()

    asyncio.run(main())
