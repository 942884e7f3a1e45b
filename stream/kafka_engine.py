"""Engine ``batch`` (the default, what ``benefits worker`` runs): an aiokafka consumer-group member.

Measured ~28k events/s per process here (``python -m benchmarks.stream``): ``getmany`` hands over
whole fetched batches, so the per-message cost is a tuple, not a chain of tasks as in a Faust stream.

Hazard: a rebalance waits for the batch in flight (the revocation hook takes the batch lock and
commits), so two workers never fold the same partition at the same time in normal operation. Not
fenced: a worker frozen past its session timeout (SIGSTOP, a swap storm) that wakes mid-batch can still
write its now-stale blobs once, over the new owner's. Closing that needs a write-time watermark check in
Redis; doing it in Lua on the current blob format (cmsgpack unpack) measured ~27 us per key, which would
cost more than the whole fold.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from typing import Any

from infra.catalog_store import CatalogStore
from infra.epoch_store import StoreEpoch
from infra.redis_client import open_client
from infra.redis_layout import MemberStore
from infra.settings import Settings
from infra.topic_incarnation import TopicIncarnations
from stream.batch import BatchProcessor, CostRefresher
from stream.epoch import EpochHold, StoreLost
from stream.incarnation import Fetched, IncarnationGuard
from stream.metrics import StreamMetrics
from stream.records import RawRecord
from stream.timings import (
    BROKER_HEARTBEAT_INTERVAL_S,
    BROKER_REBALANCE_TIMEOUT_S,
    BROKER_SESSION_TIMEOUT_S,
    COMMIT_INTERVAL_S,
    WORKER_REDIS_TIMEOUT_MS,
)

log = logging.getLogger(__name__)


class BatchConsumerWorker:
    """Engine ``batch`` (the default): an aiokafka consumer-group member that fetches whole batches.

    ``getmany`` hands over everything fetched (up to ``worker_batch_max``) in one call, so the per-message
    cost is a tuple, not a chain of tasks as in a Faust stream; the batch then goes through the same
    :class:`BatchProcessor`. Offsets are committed manually, only for batches already written:

    - every ``COMMIT_INTERVAL_S`` (committing less often only means more redelivery after a crash, which
      the watermarks make harmless);
    - when partitions are revoked in a rebalance, after waiting for the in-flight batch (the batch lock),
      so the next owner starts exactly after what this worker wrote;
    - at shutdown (SIGTERM/SIGINT), after the last batch.
    """

    def __init__(self, settings: Settings, metrics: StreamMetrics | None = None) -> None:
        if settings.kafka_bootstrap is None or settings.redis_url is None:
            raise ValueError("the worker needs BENEFITS_KAFKA_BOOTSTRAP and BENEFITS_REDIS_URL")
        self.settings = settings
        self.metrics = metrics or StreamMetrics()
        self.stop_event = asyncio.Event()
        self._lock = asyncio.Lock()
        #: TopicPartition -> next offset to commit (last written + 1), not yet committed.
        self._to_commit: dict[Any, int] = {}
        self._consumer: Any = None

    async def run(self) -> None:
        from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
        from aiokafka.abc import ConsumerRebalanceListener

        s = self.settings
        assert s.kafka_bootstrap is not None and s.redis_url is not None
        worker = self

        class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
            async def on_partitions_revoked(self, revoked: Any) -> None:
                # Wait for the batch in flight, then commit: the next owner resumes after our writes.
                async with worker._lock:
                    await worker._commit()
                guard.revoked([tp.partition for tp in revoked])
                for tp in revoked:
                    # No longer ours: a stale lag figure would mislead whoever watches this worker.
                    with contextlib.suppress(KeyError):
                        worker.metrics.lag.remove(str(tp.partition))
                log.info("partitions revoked: %s", sorted(tp.partition for tp in revoked))

            async def on_partitions_assigned(self, assigned: Any) -> None:
                log.info("partitions assigned: %s", sorted(tp.partition for tp in assigned))
                # Resume at the last record written, to check it is still the same record (the same
                # incarnation of the topic); see stream/incarnation.py.
                by_partition = {tp.partition: tp for tp in assigned}
                seeks = await guard.assigned(sorted(by_partition))
                for p, offset in seeks.items():
                    worker._consumer.seek(by_partition[p], offset)

        redis_client = await open_client(
            s.redis_url, cluster=s.redis_cluster, timeout_ms=WORKER_REDIS_TIMEOUT_MS
        )
        store = MemberStore(redis_client, s.layout)
        processor = BatchProcessor(
            store,
            self.metrics,
            s.events_topic,
            event_time_bounds=(s.event_max_future_skew_seconds, s.worker_max_event_age_seconds),
        )
        costs = CostRefresher(CatalogStore(redis_client, s.layout))
        guard = IncarnationGuard(
            TopicIncarnations(redis_client, s.layout, s.events_topic), self.metrics, processor.retry
        )
        processor.incarnations = guard.current
        hold = EpochHold(StoreEpoch(redis_client, s.layout), self.metrics)
        await hold.start()
        processor.store_check = hold.confirm
        processor.before_write = hold.verify
        consumer = AIOKafkaConsumer(
            bootstrap_servers=s.kafka_bootstrap,
            group_id=s.consumer_group,
            client_id=f"benefits-worker-{os.getpid()}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=int(BROKER_SESSION_TIMEOUT_S * 1000),
            rebalance_timeout_ms=int(BROKER_REBALANCE_TIMEOUT_S * 1000),
            heartbeat_interval_ms=int(BROKER_HEARTBEAT_INTERVAL_S * 1000),
            max_poll_records=s.worker_batch_max,
            fetch_max_wait_ms=s.worker_batch_within_ms,
            max_partition_fetch_bytes=4 * 1024 * 1024,
        )
        producer = AIOKafkaProducer(bootstrap_servers=s.kafka_bootstrap, linger_ms=5, acks="all")
        self._consumer = consumer
        consumer.subscribe([s.events_topic], listener=_Listener())
        await producer.start()
        await consumer.start()
        log.info("worker started: topic=%s group=%s", s.events_topic, s.consumer_group)
        costs_due = 0.0
        last_commit = time.monotonic()
        held = False
        try:
            while not self.stop_event.is_set():
                if await hold.check():
                    # Redis lost its data: fold nothing until `benefits replay` rebuilt it (stream/epoch.py).
                    held = True
                    await self._held(consumer)
                    continue
                if held:
                    held = False
                    consumer.resume(*consumer.assignment())
                    guard.store_rebuilt()
                if time.monotonic() >= costs_due:
                    costs_due = time.monotonic() + s.catalog_poll_seconds
                    await costs.refresh(processor)
                fetched = await consumer.getmany(
                    timeout_ms=s.worker_batch_within_ms, max_records=s.worker_batch_max
                )
                assigned = {tp.partition: tp for tp in consumer.assignment()}
                drop: set[int] = set()
                try:
                    restarted = await guard.check_highwaters(
                        {p: consumer.highwater(tp) for p, tp in assigned.items()}
                    )
                    if fetched:
                        drop, changed = await guard.check(
                            {tp.partition: _fetched(msgs[0]) for tp, msgs in fetched.items()}
                        )
                        restarted += changed
                except StoreLost:
                    _put_back(consumer, fetched)
                    continue
                if restarted:
                    # A new incarnation is read from its beginning; what was fetched is fetched again,
                    # and an old incarnation's offset must never be committed on the new one.
                    for p in restarted:
                        self._to_commit.pop(assigned[p], None)
                    fetched = {tp: msgs for tp, msgs in fetched.items() if tp.partition not in restarted}
                    await consumer.seek_to_beginning(*(assigned[p] for p in restarted))
                if not fetched:
                    if self._to_commit and time.monotonic() - last_commit >= COMMIT_INTERVAL_S:
                        async with self._lock:
                            await self._commit()
                        last_commit = time.monotonic()
                    continue
                async with self._lock:
                    records = [
                        RawRecord(m.partition, m.offset, m.key, m.value)
                        for tp, msgs in fetched.items()
                        for m in (msgs[1:] if tp.partition in drop else msgs)
                    ]
                    t0 = time.perf_counter()
                    try:
                        out = await processor.process(records)
                        if out.dead_letters:
                            futs = [
                                await producer.send(s.dead_letter_topic, value=v, key=k)
                                for k, v in out.dead_letters
                            ]
                            # Wait for the broker's ack: a dead letter must exist before its source commits.
                            await asyncio.gather(*futs)
                            log.info("dead-lettered %d events", len(out.dead_letters))
                        await guard.written([_fetched(msgs[-1]) for msgs in fetched.values()])
                    except StoreLost:
                        # Redis came back empty mid-batch: nothing of it is committed; fetch it again
                        # after the replay (its watermarks skip whatever the replay already folded).
                        _put_back(consumer, fetched)
                        continue
                    for tp, msgs in fetched.items():
                        self._to_commit[tp] = msgs[-1].offset + 1
                    self.metrics.batch_seconds.observe(time.perf_counter() - t0)
                    if time.monotonic() - last_commit >= COMMIT_INTERVAL_S:
                        await self._commit()
                        last_commit = time.monotonic()
                for tp, msgs in fetched.items():
                    hw = consumer.highwater(tp)
                    if hw is not None:
                        self.metrics.lag.labels(str(tp.partition)).set(max(0, hw - msgs[-1].offset - 1))
        finally:
            try:
                async with self._lock:
                    await self._commit()
            finally:
                await consumer.stop()
                await producer.stop()
                await redis_client.aclose()
                log.info("worker stopped")

    async def _held(self, consumer: Any) -> None:
        """One turn of the loop while folding is held: partitions paused (also ones assigned since),
        still polling so the group keeps this member, anything fetched anyway put back unread."""
        consumer.pause(*consumer.assignment())
        _put_back(consumer, await consumer.getmany(timeout_ms=0))
        if self._to_commit:
            async with self._lock:
                await self._commit()  # batches written before the loss was seen; the replay covers them
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop_event.wait(), 0.5)

    async def _commit(self) -> None:
        if not self._to_commit or self._consumer is None:
            return
        from aiokafka.errors import CommitFailedError, IllegalStateError

        pending, self._to_commit = self._to_commit, {}
        assigned = self._consumer.assignment()
        offsets = {tp: off for tp, off in pending.items() if tp in assigned}
        if not offsets:
            return
        try:
            await self._consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError) as exc:
            # The group moved on (we were too slow or are leaving). Harmless: the next owner re-reads
            # from the last committed offset and the watermarks skip what we already wrote.
            log.warning("offset commit failed (%r); events will be redelivered and skipped", exc)


def _fetched(m: Any) -> Fetched:
    return Fetched(m.partition, m.offset, m.timestamp, m.key, m.value)


def _put_back(consumer: Any, fetched: dict[Any, list[Any]]) -> None:
    """Move each partition back to the first record of ``fetched``: fetched again, never skipped."""
    for tp, msgs in fetched.items():
        if msgs:
            consumer.seek(tp, msgs[0].offset)
