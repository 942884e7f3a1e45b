"""Erasure tombstones (null value, key = member id) in the worker's batch path, on a real Redis.

A tombstone forgets everything the member did before it: the blob is deleted, or restarted from the
events after the tombstone. Replaying the same records after a crash ends in the same state.
"""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from features import events as ev
from features.state import fold
from harness.embedded import Service
from infra.redis_layout import MemberStore, RedisLayout, StoredMember
from stream.batch import BatchProcessor
from stream.metrics import StreamMetrics
from stream.records import RawRecord
from tests.core.test_fold import assert_states_equal

pytestmark = pytest.mark.integration

T0 = 1_760_000_000.0


def _view(i: int, member: str) -> ev.Event:
    return ev.PageView(event_id=f"{member}-{i}", member_id=member, event_ts=T0 + i, page_type="home")


def _rec(offset: int, member: str, event: ev.Event | None) -> RawRecord:
    return RawRecord(0, offset, member.encode(), ev.encode(event) if event is not None else None)


def test_tombstone_deletes_or_restarts_the_member(redis_server: Service, unique: str) -> None:
    before = [_view(i, "gone") for i in range(3)]
    after = [_view(10 + i, "again") for i in range(2)]
    records = [_rec(i, "gone", e) for i, e in enumerate(before)]
    records += [_rec(3 + i, "again", _view(i, "again")) for i in range(3)]
    records += [_rec(6, "gone", None), _rec(7, "again", None)]
    records += [_rec(8 + i, "again", e) for i, e in enumerate(after)]
    records += [_rec(10, "kept", _view(0, "kept"))]

    async def main() -> dict[str, StoredMember | None]:
        client = aioredis.Redis.from_url(redis_server.url)
        try:
            store = MemberStore(client, RedisLayout(prefix=f"t{unique}"))
            metrics = StreamMetrics()
            proc = BatchProcessor(store, metrics, "events")
            await proc.process(records[:6])  # the pre-erasure state is written first
            await proc.process(records[6:])
            names = ["gone", "again", "kept"]
            first = dict(zip(names, await store.get_members(names), strict=True))
            # A crash before the commit: the whole range is delivered again, in one batch.
            await proc.process(records)
            second = dict(zip(names, await store.get_members(names), strict=True))
            assert {k: v is None for k, v in first.items()} == {k: v is None for k, v in second.items()}
            assert metrics.erasures._value.get() >= 1  # type: ignore[attr-defined]
            return second
        finally:
            await client.aclose()

    got = asyncio.run(main())
    assert got["gone"] is None
    assert got["again"] is not None
    assert_states_equal(got["again"].state, fold(list(after)))
    assert got["kept"] is not None and got["kept"].state.events_total == 1
