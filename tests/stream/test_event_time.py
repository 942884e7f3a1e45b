"""The worker's batch path dead-letters events stamped too far in the future (always) or older than the
configured age, with the reason, and folds the rest (real Redis, no broker: the processor directly)."""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest

from harness.embedded import Service
from infra.redis_client import open_client
from infra.redis_layout import MemberStore, RedisLayout
from stream.batch import BatchProcessor
from stream.metrics import StreamMetrics
from stream.records import RawRecord, decode_dead_letter

pytestmark = pytest.mark.integration


def _record(offset: int, member_id: str, ts: float) -> RawRecord:
    value = orjson.dumps(
        {
            "type": "page_view",
            "event_id": f"e{offset}",
            "member_id": member_id,
            "event_ts": ts,
            "page_type": "home",
        }
    )
    return RawRecord(0, offset, member_id.encode(), value)


def test_out_of_bounds_event_times_are_dead_lettered_with_reason(redis_server: Service, unique: str) -> None:
    now = time.time()
    records = [
        _record(0, "ok", now - 10),
        _record(1, "future", now + 3600),
        _record(2, "y2100", 4102444799.0),
        _record(3, "old", now - 200 * 86400),
        _record(4, "ok", now),
    ]

    async def main() -> tuple[list[tuple[bytes | None, bytes]], int, list[object]]:
        client = await open_client(redis_server.url, cluster=False, timeout_ms=2000)
        try:
            store = MemberStore(client, RedisLayout(prefix=f"t{unique}"))
            proc = BatchProcessor(store, StreamMetrics(), "events", event_time_bounds=(300, 90 * 86400))
            out = await proc.process(records)
            return out.dead_letters, out.folded, await store.get_members(["ok", "future", "y2100", "old"])
        finally:
            await client.aclose()

    dead, folded, stored = asyncio.run(main())
    reasons = {k: decode_dead_letter(v).reason for k, v in dead}
    assert reasons == {b"future": "event_ts_future", b"y2100": "event_ts_future", b"old": "event_ts_expired"}
    assert folded == 2 and stored[0] is not None and stored[1:] == [None, None, None]
