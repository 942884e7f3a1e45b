"""Engine ``faust``: a Faust app whose agent batches with ``stream.take_events``.

Faust pushes each message through its conductor, channel and stream with several asyncio tasks per
message; a *no-op* ``take_events`` agent topped out at 10-12k messages/s on this 2-core machine and the
real one at ~7k/s, so it cannot reach the 20k events/s target. Kept, tested for parity, for deployments
that want Faust's tooling.

Hazards:

- Faust acks an event whose processing raised. So infrastructure errors (Redis down) are retried with
  backoff inside :class:`~stream.batch.BatchProcessor`, never raised into Faust; and a Faust batch
  interrupted by shutdown either finishes its write or the process exits hard, before ``take_events``
  can ack it (see :meth:`FaustRuntime.handle`).
- A rebalance waits for the batch in flight (``stream_wait_empty``), so two workers never fold the same
  partition at the same time in normal operation (the same unfenced frozen-worker case as the batch
  engine, see ``stream/kafka_engine.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import tempfile
import time
from typing import Any

import redis.asyncio as aioredis

from infra.catalog_store import CatalogStore
from infra.redis_client import connect
from infra.redis_layout import MemberStore
from infra.settings import Settings
from stream.batch import BatchProcessor, CostRefresher
from stream.metrics import StreamMetrics
from stream.records import RawRecord
from stream.timings import (
    BROKER_HEARTBEAT_INTERVAL_S,
    BROKER_REBALANCE_TIMEOUT_S,
    BROKER_SESSION_TIMEOUT_S,
    COMMIT_INTERVAL_S,
    SHUTDOWN_WRITE_GRACE_S,
    WORKER_REDIS_TIMEOUT_MS,
)

log = logging.getLogger(__name__)


def faust_broker_url(bootstrap: str) -> str:
    """``host1:9092,host2:9092`` -> Faust's ``kafka://host1:9092;kafka://host2:9092``."""
    return ";".join(f"kafka://{h.strip()}" for h in bootstrap.split(",") if h.strip())


class FaustRuntime:
    """Engine ``faust``: a Faust app whose agent batches with ``stream.take_events``.

    Kept because it is the framework the architecture names, and it is exactly-once in effect like the
    default engine. But Faust routes every message through its conductor, channel and stream (several
    tasks per message): a no-op ``take_events`` agent measured 10-12k messages/s on this 2-core box,
    so it cannot meet 20k events/s per process whatever the batch body does.
    """

    def __init__(self, settings: Settings, metrics: StreamMetrics | None = None) -> None:
        import faust  # imported here: the pure core and the tests' helpers need not pay for it

        if settings.kafka_bootstrap is None or settings.redis_url is None:
            raise ValueError("the worker needs BENEFITS_KAFKA_BOOTSTRAP and BENEFITS_REDIS_URL")
        self.settings = settings
        self.metrics = metrics or StreamMetrics()
        self.datadir = tempfile.mkdtemp(prefix="benefits-faust-")
        web_port = settings.worker_web_port
        self.app = faust.App(
            settings.consumer_group,
            broker=faust_broker_url(settings.kafka_bootstrap),
            value_serializer="raw",
            key_serializer="raw",
            autodiscover=False,
            datadir=self.datadir,
            store="memory://",
            web_enabled=web_port != 0,
            web_port=web_port or 6066,
            web_bind="127.0.0.1",
            topic_disable_leader=True,
            topic_partitions=settings.events_partitions,
            consumer_auto_offset_reset="earliest",
            broker_session_timeout=BROKER_SESSION_TIMEOUT_S,
            broker_rebalance_timeout=BROKER_REBALANCE_TIMEOUT_S,
            broker_heartbeat_interval=BROKER_HEARTBEAT_INTERVAL_S,
            broker_commit_interval=COMMIT_INTERVAL_S,
            # Faust's buffer between the fetcher and the stream; must hold at least one full batch.
            stream_buffer_maxsize=max(4096, 2 * settings.worker_batch_max),
            stream_wait_empty=True,
        )
        self.events_topic = self.app.topic(
            settings.events_topic, partitions=settings.events_partitions, value_type=bytes, key_type=bytes
        )
        self.dlq_topic = self.app.topic(settings.dead_letter_topic, value_type=bytes, key_type=bytes)
        self._redis: aioredis.Redis | aioredis.RedisCluster | None = None
        self._processor: BatchProcessor | None = None
        self._costs: CostRefresher | None = None
        self.app.agent(self.events_topic, name="fold-member-events")(self._agent)
        self.app.timer(interval=settings.catalog_poll_seconds)(self._on_catalog_timer)

    def processor(self) -> BatchProcessor:
        if self._processor is None:
            # Created lazily so the client binds to Faust's running event loop.
            assert self.settings.redis_url is not None
            self._redis = connect(
                self.settings.redis_url,
                cluster=self.settings.redis_cluster,
                timeout_ms=WORKER_REDIS_TIMEOUT_MS,
            )
            store = MemberStore(self._redis, self.settings.layout)
            s = self.settings
            self._processor = BatchProcessor(
                store,
                self.metrics,
                s.events_topic,
                event_time_bounds=(s.event_max_future_skew_seconds, s.worker_max_event_age_seconds),
            )
            self._costs = CostRefresher(CatalogStore(self._redis, self.settings.layout))
        return self._processor

    async def _on_catalog_timer(self) -> None:
        processor = self.processor()
        assert self._costs is not None
        await self._costs.refresh(processor)

    async def _agent(self, stream: Any) -> None:
        s = self.settings
        async for batch in stream.take_events(s.worker_batch_max, s.worker_batch_within_ms / 1000.0):
            records = [
                RawRecord(e.message.partition, e.message.offset, e.message.key, e.message.value)
                for e in batch
            ]
            await self.handle(records)

    async def handle(self, records: list[RawRecord]) -> None:
        """Process a batch so that it is fully written before ``take_events`` acks it.

        ``take_events`` acks the batch in a ``finally`` — even when the agent is cancelled at shutdown.
        So the write is shielded from cancellation; if it cannot finish in time, the process exits hard
        instead of returning, and the unacked batch is redelivered to the next owner.
        """
        task = asyncio.ensure_future(self._process_and_publish(records))
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            try:
                await asyncio.wait_for(asyncio.shield(task), SHUTDOWN_WRITE_GRACE_S)
            except BaseException:
                log.critical("batch write did not finish at shutdown; exiting so it is not acked")
                os._exit(70)
            raise
        except Exception:
            # Per-event errors are handled inside the processor; anything reaching here is a failed
            # write. Returning or raising would let take_events ack the batch: exit instead.
            log.critical("batch failed; exiting so it is not acked", exc_info=True)
            os._exit(70)

    async def _process_and_publish(self, records: list[RawRecord]) -> None:
        t0 = time.perf_counter()
        out = await self.processor().process(records)
        if out.dead_letters:
            futures = [await self.dlq_topic.send(key=k, value=v) for k, v in out.dead_letters]
            # Wait for the broker's ack so a dead letter is never lost once its source is acked.
            await asyncio.gather(*futures)
            log.info("dead-lettered %d events", len(out.dead_letters))
        self.metrics.batch_seconds.observe(time.perf_counter() - t0)
        self._update_lag(out.last_offsets)

    def _update_lag(self, last_offsets: dict[int, int]) -> None:
        from faust.types import TP

        consumer = self.app.consumer
        for partition, offset in last_offsets.items():
            with contextlib.suppress(Exception):  # highwater is unknown until the first fetch
                hw = consumer.highwater(TP(self.settings.events_topic, partition))
                if hw is not None:
                    self.metrics.lag.labels(str(partition)).set(max(0, hw - offset - 1))

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()

    def cleanup(self) -> None:
        shutil.rmtree(self.datadir, ignore_errors=True)
