"""The worker treats a member blob of another layout version as missing: it folds the member from a
fresh state, writes the blob back in the current layout and counts it (never misreads the old one)."""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from features import events as ev
from features.state import new_state
from infra.redis_client import open_client
from infra.redis_layout import LAYOUT_VERSION, MemberStore, RedisLayout, StoredMember
from stream.batch import BatchProcessor
from stream.metrics import StreamMetrics
from stream.records import RawRecord
from tests.cluster.conftest import Backend

pytestmark = pytest.mark.integration

T0 = 1_760_000_000.0


def test_blob_of_another_layout_is_folded_from_fresh(backend: Backend, unique: str) -> None:
    layout = RedisLayout(prefix=f"t{unique}")
    old = new_state("m1")
    old.orders_total = 40
    # A watermark far ahead: misread, it would make the worker skip the new event.
    blob = msgspec.msgpack.encode(StoredMember(state=old, offsets={0: 10_000}, layout=LAYOUT_VERSION + 1))
    event = ev.PageView(event_id="e1", member_id="m1", event_ts=T0, page_type="home")

    async def main() -> tuple[StoredMember | None, float]:
        client = await open_client(backend.url, cluster=backend.cluster, timeout_ms=2000)
        try:
            await client.set(layout.member_key("m1"), blob, ex=600)
            metrics = StreamMetrics()
            proc = BatchProcessor(MemberStore(client, layout), metrics, "events")
            out = await proc.process([RawRecord(0, 7, b"m1", ev.encode(event))])
            assert out.folded == 1 and out.skipped == 0
            stale: float = metrics.stale_layout._value.get()  # type: ignore[attr-defined]
            return await MemberStore(client, layout).get_member("m1"), stale
        finally:
            await client.aclose()

    got, stale = asyncio.run(main())
    assert stale == 1
    assert got is not None and got.layout == LAYOUT_VERSION
    assert got.offsets == {0: 7}
    assert got.state.orders_total == 0 and got.state.events_total == 1
