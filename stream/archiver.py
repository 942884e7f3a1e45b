"""``benefits archive``: the member-events topic into the Parquet archive that training reads.

Its own consumer group (``archive_consumer_group``), independent of the feature workers. Where to
resume is the archive's own record (:meth:`infra.archive.ArchiveWriter.next_offsets`), not the group's
committed offsets: on every assignment the consumer seeks there, so a crash anywhere (before or after
a file is renamed into place, before or after offsets are committed to Kafka) neither loses nor
doubles a record. Kafka offsets are committed too, after each write, so consumer lag is observable.

Records are decoded with the event schema; a record that does not decode is not archived (the
feature worker dead-letters it with its reason) and is counted. A tombstone (null value, key = member
id, published by the erasure API) first flushes what is buffered, then removes the member from every
archive file. Run one archiver per archive directory (the manifests use one replica).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from features import events as ev
from infra.archive import ArchiveWriter, Record
from infra.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class ArchiveStats:
    archived: int = 0
    invalid: int = 0
    erased: int = 0
    files: int = 0
    partitions: set[int] = field(default_factory=set)


class Archiver:
    """Buffers decoded records and writes them in batches (pure apart from the writer's files)."""

    def __init__(self, writer: ArchiveWriter, batch_max: int) -> None:
        self.writer = writer
        self.batch_max = batch_max
        self.buffer: list[Record] = []
        self.pending_next: dict[int, int] = {}
        self.stats = ArchiveStats()

    def add(self, partition: int, offset: int, key: bytes | None, value: bytes | None) -> None:
        self.stats.partitions.add(partition)
        if value is None:
            # Erasure: what came before the tombstone is written (and then erased with the rest).
            self.flush()
            member = key.decode(errors="replace") if key is not None else ""
            if member:
                self.writer.erase_member(member)
                self.stats.erased += 1
            self.pending_next[partition] = offset + 1
            self.flush(force_offsets=True)
            return
        try:
            event = ev.decode(value)
        except ev.InvalidEvent:
            self.stats.invalid += 1
        else:
            self.buffer.append(Record(partition, offset, value, event))
        self.pending_next[partition] = offset + 1
        if len(self.buffer) >= self.batch_max:
            self.flush()

    def flush(self, force_offsets: bool = False) -> None:
        if not self.buffer and not (force_offsets and self.pending_next):
            return
        written = self.writer.write(self.buffer, dict(self.pending_next))
        self.stats.archived += len(self.buffer)
        self.stats.files += len(written)
        self.buffer = []


async def run_archiver(
    settings: Settings,
    out: Path,
    *,
    idle_exit_seconds: float | None = None,
    stop: asyncio.Event | None = None,
) -> ArchiveStats:
    """Consume ``settings.events_topic`` into ``out`` until stopped (or idle that long, when given)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.abc import ConsumerRebalanceListener

    assert settings.kafka_bootstrap is not None
    writer = ArchiveWriter(out, settings.events_topic)
    archiver = Archiver(writer, settings.archive_batch_max)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=settings.archive_consumer_group,
        client_id=f"benefits-archiver-{os.getpid()}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=10_000,
        rebalance_timeout_ms=10_000,
        heartbeat_interval_ms=3_000,
        max_poll_records=settings.archive_batch_max,
    )

    class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
        async def on_partitions_revoked(self, revoked: Any) -> None:
            archiver.flush(force_offsets=True)

        async def on_partitions_assigned(self, assigned: Any) -> None:
            nxt = writer.next_offsets()
            for tp in assigned:
                if tp.partition in nxt:
                    consumer.seek(tp, nxt[tp.partition])
            log.info("archiver assigned %s; resuming at %s", sorted(tp.partition for tp in assigned), nxt)

    stop = stop or asyncio.Event()
    consumer.subscribe([settings.events_topic], listener=_Listener())
    await consumer.start()
    log.info("archiver started: topic=%s group=%s out=%s", settings.events_topic, consumer._group_id, out)
    last_data = time.monotonic()
    last_flush = time.monotonic()
    try:
        while not stop.is_set():
            fetched = await consumer.getmany(timeout_ms=500, max_records=settings.archive_batch_max)
            got = False
            for tp, msgs in fetched.items():
                for m in msgs:
                    archiver.add(tp.partition, m.offset, m.key, m.value)
                    got = True
            now = time.monotonic()
            if got:
                last_data = now
            if archiver.buffer and (now - last_flush >= settings.archive_flush_seconds or not got):
                archiver.flush()
                last_flush = now
                offsets = {
                    TopicPartition(settings.events_topic, p): o for p, o in archiver.pending_next.items()
                }
                try:
                    await consumer.commit(offsets)
                except Exception as exc:  # the archive's own record is what resumption trusts
                    log.warning("archiver offset commit failed (%r): lag metrics may lag", exc)
            if idle_exit_seconds is not None and now - last_data >= idle_exit_seconds:
                break
    finally:
        archiver.flush(force_offsets=True)
        await consumer.stop()
    s = archiver.stats
    log.info(
        "archiver stopped: %d archived, %d invalid skipped, %d erasures", s.archived, s.invalid, s.erased
    )
    return s
