"""The worker's batch path on both stores (single Redis and a three-master Redis Cluster): one-round-trip
batch read/write with TTLs, and the processor's exactly-once-in-effect rule, driven directly (no broker):
replaying batches that were already written, or replaying from an earlier offset, must change nothing.
"""

from __future__ import annotations

import asyncio
import zlib

import pytest

from features.state import new_state
from harness import stream_driver as h
from infra.redis_client import open_client
from infra.redis_layout import MemberStore, RedisLayout, StoredMember, StoredOfferStats
from stream.batch import BatchProcessor
from stream.metrics import StreamMetrics
from stream.records import RawRecord
from tests.cluster.conftest import Backend
from tests.cluster.test_store_contract import node_keys

pytestmark = pytest.mark.integration


def _records(n: int, partitions: int = 4) -> tuple[list, list[RawRecord]]:
    events = h.synthetic_events(n, 300, seed=51)
    per_partition: dict[int, int] = {}
    records = []
    for key, value in h.keyed(events):
        p = zlib.crc32(key) % partitions
        off = per_partition.get(p, 0)
        per_partition[p] = off + 1
        records.append(RawRecord(p, off, key, value))
    return events, records


def test_batch_write_and_read_round_trip_with_ttls(backend: Backend, unique: str) -> None:
    layout = RedisLayout(prefix=f"t{unique}", member_ttl_seconds=3600, stats_ttl_seconds=1800)
    members = [StoredMember(state=new_state(f"m{i}"), offsets={i % 4: i}) for i in range(60)]
    stats = [StoredOfferStats(partition=p, offset=p * 10, counters={}) for p in range(3)]

    async def main() -> tuple[list, list]:
        client = await open_client(backend.url, cluster=backend.cluster, timeout_ms=2000)
        try:
            store = MemberStore(client, layout)
            assert await store.write_batch(members, stats) == 63
            return await store.read_batch([m.state.member_id for m in members] + ["nobody"], [0, 1, 2, 9])
        finally:
            await client.aclose()

    got_members, got_stats = asyncio.run(main())
    assert got_members == [*members, None]
    assert got_stats == [*stats, None]
    ttls = {k: t for keys in node_keys(backend, f"t{unique}:*").values() for k, t in keys.items()}
    assert len(ttls) == 63 and all(0 < t <= 3600 for t in ttls.values())


def test_processor_replays_change_nothing(backend: Backend, unique: str) -> None:
    events, records = _records(6000)
    layout = RedisLayout(prefix=f"t{unique}")

    async def main() -> tuple[dict[str, StoredMember], StreamMetrics]:
        client = await open_client(backend.url, cluster=backend.cluster, timeout_ms=5000)
        try:
            store = MemberStore(client, layout)
            metrics = StreamMetrics()
            proc = BatchProcessor(store, metrics, "events")
            for i in range(0, len(records), 700):
                await proc.process(records[i : i + 700])
            # A crash before the commit: everything from the start is delivered again, in other batches.
            for i in range(0, len(records), 1100):
                out = await proc.process(records[i : i + 1100])
                assert out.folded == 0 and out.members_written == 0
            mids = sorted({e.member_id for e in events})
            stored = dict(zip(mids, await store.get_members(mids), strict=True))
            return {k: v for k, v in stored.items() if v is not None}, metrics
        finally:
            await client.aclose()

    stored, metrics = asyncio.run(main())
    reference = h.offline_fold(events)
    assert {m: s.state for m, s in stored.items()} == reference
    assert metrics.registry.get_sample_value("benefits_stream_duplicates_skipped_total") == len(records)
