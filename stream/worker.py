"""The stream worker: folds ``member-events`` into member state in Redis, exactly once in effect.

Two engines run the same :class:`BatchProcessor` (``run_worker(settings, engine=...)``):

- ``batch`` (default, what ``benefits worker`` runs): an aiokafka consumer-group member that takes
  whole fetched batches (``getmany``) and commits offsets itself, after the writes.
  Measured ~28k events/s per process here (``python -m benchmarks.stream``).
- ``faust``: a Faust app whose agent batches with ``stream.take_events``. Faust pushes each message
  through its conductor, channel and stream with several asyncio tasks per message; a *no-op*
  ``take_events`` agent topped out at 10-12k messages/s on this 2-core machine and the real one at
  ~7k/s, so it cannot reach the 20k events/s target. Kept, tested for parity, for deployments that
  want Faust's tooling.

Shape of one batch (up to ``worker_batch_max`` events, waiting at most ``worker_batch_within_ms``):

1. decode every raw message with :func:`features.events.decode` (msgspec, validated); anything that
   fails goes to the dead-letter topic with its reason and is counted, never stopping the worker;
2. group the good events by member, read every member blob and the touched partitions' offer-stat
   partials in **one** round trip (MGET; a pipeline on a cluster);
3. fold each member's events in offset order with the shared pure fold, skipping any offset at or
   below the watermark stored in the blob for that partition (a redelivery after a crash);
4. write every changed blob and partial in **one** round trip (one script call; a pipeline on a
   cluster), each with its TTL;
5. only then is the batch's offset committed (batch engine) or acked (Faust), so the committed consumer
   offset never passes an event whose state is not in Redis. With step 3: exactly-once in effect.

Hazards worth knowing:

- Faust acks an event whose processing raised. So infrastructure errors (Redis down) are retried with
  backoff in both engines, never raised into Faust; and a Faust batch interrupted by shutdown either
  finishes its write or the process exits hard, before ``take_events`` can ack it
  (see :meth:`FaustRuntime.handle`).
- The watermark check needs every message of a member on one partition: a message whose Kafka key is
  not its ``member_id`` is dead-lettered (``key_mismatch``) rather than folded.
- Offsets are compared as numbers: deleting and re-creating the topic with the same Redis prefix would
  make the worker skip the new topic's events. Use a new prefix (or erase the state) when you do.
- A rebalance waits for the batch in flight (the batch engine's revocation hook takes the batch lock
  and commits; Faust waits with ``stream_wait_empty``), so two workers never fold the same partition at
  the same time in normal operation. Not fenced: a worker frozen past its session timeout (SIGSTOP, a
  swap storm) that wakes mid-batch can still write its now-stale blobs once, over the new owner's.
  Closing that needs a write-time watermark check in Redis; doing it in Lua on the current blob format
  (cmsgpack unpack) measured ~27 us per key, which would cost more than the whole fold.

The batch logic lives in :class:`BatchProcessor`, which knows nothing of Faust, so the benchmark and
the tests drive the same code path.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import shutil
import signal
import tempfile
import time
from bisect import bisect_left
from collections import Counter as TallyCounter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from features import events as ev
from features.offer_stats import apply_offer_event
from features.state import apply, new_state
from infra.redis_client import connect, open_client
from infra.redis_layout import MemberStore, StoredMember, StoredOfferStats
from infra.settings import Settings

log = logging.getLogger(__name__)

#: Consumer-group timings. The client defaults (session 30-60 s) made a group take ~30 s to (re)join on
#: the embedded broker. The session timeout is also how long a SIGKILLed worker's partitions stay
#: unowned, so it bounds freshness after a crash: 6 s is Kafka's default minimum
#: (group.min.session.timeout.ms), heartbeats every second keep a busy worker well inside it.
BROKER_SESSION_TIMEOUT_S = 6.0
BROKER_REBALANCE_TIMEOUT_S = 10.0
BROKER_HEARTBEAT_INTERVAL_S = 1.0
#: How often Faust commits acked offsets. Shorter means less redelivery after a crash (harmless anyway).
COMMIT_INTERVAL_S = 1.0

#: Socket timeout of the worker's Redis calls. Far above the API's (no request waits on the worker), so a
#: slow Redis delays batches instead of failing them; failures are retried anyway (below).
WORKER_REDIS_TIMEOUT_MS = 5000

#: Retry policy when Redis fails mid-batch: the batch is retried, never dropped or acked.
REDIS_RETRY_MAX_BACKOFF_S = 5.0
#: At shutdown, how long an interrupted batch may take to finish its write before the process exits.
SHUTDOWN_WRITE_GRACE_S = 10.0

#: Event types that also update the per-offer aggregate counters.
OFFER_EVENT_TYPES = (
    ev.Impression,
    ev.Click,
    ev.Dismiss,
    ev.CouponClaim,
    ev.CouponRedeem,
    ev.BenefitUse,
    ev.ConsultBooked,
)

#: Freshness buckets (seconds) fine enough below 100 ms for p50/p99 read-outs from the histogram.
FRESHNESS_BUCKETS = (
    0.001,
    0.002,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.025,
    0.03,
    0.04,
    0.05,
    0.06,
    0.075,
    0.1,
    0.125,
    0.15,
    0.2,
    0.3,
    0.5,
    0.75,
    1.0,
    2.0,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    3600.0,
)
BATCH_SIZE_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2000, 5000, 10000, 50000)


class StreamMetrics:
    """Prometheus metrics of one worker, in their own registry (several workers may share a process)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.events = Counter(
            "benefits_stream_events_total", "Events folded into member state, by type.", ["type"], registry=r
        )
        self.dead_letters = Counter(
            "benefits_stream_dead_letters_total",
            "Events sent to the dead-letter topic.",
            ["reason"],
            registry=r,
        )
        self.duplicates = Counter(
            "benefits_stream_duplicates_skipped_total",
            "Redelivered events skipped because the stored watermark already covers them.",
            registry=r,
        )
        self.redis_errors = Counter(
            "benefits_stream_redis_errors_total", "Failed Redis round trips (retried).", registry=r
        )
        self.erasures = Counter(
            "benefits_stream_erasures_total", "Members erased by a tombstone (state deleted).", registry=r
        )
        self.lag = Gauge(
            "benefits_stream_consumer_lag",
            "Messages behind the partition's high watermark after the last batch.",
            ["partition"],
            registry=r,
        )
        self.freshness = Histogram(
            "benefits_stream_freshness_seconds",
            "Event time to the member state being written to Redis.",
            buckets=FRESHNESS_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "benefits_stream_batch_size", "Messages per batch.", buckets=BATCH_SIZE_BUCKETS, registry=r
        )
        self.batch_seconds = Histogram(
            "benefits_stream_batch_seconds",
            "Wall time to decode, read, fold and write one batch.",
            buckets=FRESHNESS_BUCKETS,
            registry=r,
        )


def observe_many(hist: Histogram, values: list[float]) -> None:
    """Observe many values at once: one increment per bucket instead of one locked call per value.

    ``Histogram.observe`` costs ~4 us, which is 10% of the budget at 20k events/s. This uses the
    client's (long-stable) internals when present and falls back to ``observe`` otherwise.
    Negative values (a producer clock ahead of ours) are clamped to 0.
    """
    bounds = getattr(hist, "_upper_bounds", None)
    buckets = getattr(hist, "_buckets", None)
    total = getattr(hist, "_sum", None)
    if not values:
        return
    if bounds is None or buckets is None or total is None:
        for v in values:
            hist.observe(max(0.0, v))
        return
    tally = TallyCounter(bisect_left(bounds, v) for v in values)
    for i, n in tally.items():
        buckets[min(i, len(buckets) - 1)].inc(n)
    total.inc(sum(v for v in values if v > 0.0))


class RawRecord(msgspec.Struct, array_like=True, gc=False):
    """One consumed message, as the broker gave it."""

    partition: int
    offset: int
    key: bytes | None
    #: None is a Kafka tombstone: the API publishes one per erased member (see service/feedback.py).
    value: bytes | None


class DeadLetter(msgspec.Struct, omit_defaults=True):
    """The JSON envelope on the dead-letter topic. ``payload_text`` when the payload is UTF-8, else
    ``payload_b64``; ``source_partition``/``source_offset`` identify it (a redelivery after a crash
    can dead-letter the same message twice: deduplicate on them)."""

    reason: str
    detail: str
    source_topic: str
    source_partition: int
    source_offset: int
    dead_lettered_ts: float
    key: str | None = None
    payload_text: str | None = None
    payload_b64: str | None = None
    payload_bytes: int = 0
    v: int = 1


_dl_encoder = msgspec.json.Encoder()
_dl_decoder = msgspec.json.Decoder(DeadLetter)


def decode_dead_letter(raw: bytes) -> DeadLetter:
    return _dl_decoder.decode(raw)


def _text_or_none(raw: bytes | None) -> str | None:
    if raw is None:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def make_dead_letter(rec: RawRecord, topic: str, reason: str, detail: str, now: float) -> DeadLetter:
    text = _text_or_none(rec.value)
    return DeadLetter(
        reason=reason,
        detail=detail[:1000],
        source_topic=topic,
        source_partition=rec.partition,
        source_offset=rec.offset,
        dead_lettered_ts=now,
        key=_text_or_none(rec.key) if rec.key is not None else None,
        payload_text=text,
        payload_b64=None
        if text is not None or rec.value is None
        else base64.b64encode(rec.value).decode("ascii"),
        payload_bytes=len(rec.value) if rec.value is not None else 0,
    )


@dataclass
class BatchOutcome:
    """What one batch did; dead letters are (key, JSON envelope) pairs for the adapter to publish."""

    folded: int = 0
    skipped: int = 0
    members_written: int = 0
    dead_letters: list[tuple[bytes | None, bytes]] = field(default_factory=list)
    #: partition -> last offset seen in the batch (for lag).
    last_offsets: dict[int, int] = field(default_factory=dict)


class BatchProcessor:
    """Decode, group, read, fold and write one batch. No Faust here: the benchmark and tests use it."""

    def __init__(
        self,
        store: MemberStore,
        metrics: StreamMetrics,
        topic: str,
        cost_of: dict[str, float] | None = None,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.topic = topic
        #: Offer id -> cost per claim, charged to the per-offer ``cost_used`` (refreshed from the catalog).
        self.cost_of = cost_of

    async def process(self, records: Sequence[RawRecord]) -> BatchOutcome:
        out = BatchOutcome()
        if not records:
            return out
        metrics = self.metrics
        decode = ev.decode
        by_member: dict[str, list[tuple[int, int, ev.Event]]] = {}
        offer_events: dict[int, list[tuple[int, ev.Event]]] = {}
        last_offsets = out.last_offsets
        now = time.time()
        dead_reasons: TallyCounter[str] = TallyCounter()

        #: member -> True for members erased by a tombstone in this batch (their stored blob is ignored).
        erased: dict[str, bool] = {}

        for rec in records:
            last_offsets[rec.partition] = rec.offset
            if rec.value is None:
                # An erasure tombstone (null value, key = member id). Everything the member did before it
                # is forgotten: drop the batch's earlier events of the member and start from nothing.
                # Redelivery after a crash replays the same prefix and the same tombstone, so the end
                # state is the same (exactly-once in effect holds across erasures).
                mid_raw = _text_or_none(rec.key)
                if not mid_raw:
                    self._dead_letter(
                        out, dead_reasons, rec, "malformed", "null value without a member key", now
                    )
                    continue
                erased[mid_raw] = True
                by_member[mid_raw] = []
                continue
            try:
                event = decode(rec.value)
                if rec.key is None or rec.key != event.member_id.encode():
                    # Folding it would break the one-partition-per-member rule the watermarks rely on.
                    raise ev.InvalidEvent("key_mismatch", f"message key {rec.key!r} != member_id")
            except ev.InvalidEvent as exc:
                self._dead_letter(out, dead_reasons, rec, exc.reason, exc.detail, now)
                continue
            except Exception as exc:  # a decoder bug must not stop the stream either
                self._dead_letter(out, dead_reasons, rec, "decode_error", repr(exc), now)
                continue
            items = by_member.get(event.member_id)
            if items is None:
                items = by_member[event.member_id] = []
            items.append((rec.partition, rec.offset, event))
            if isinstance(event, OFFER_EVENT_TYPES):
                per_p = offer_events.get(rec.partition)
                if per_p is None:
                    per_p = offer_events[rec.partition] = []
                per_p.append((rec.offset, event))

        member_ids = list(by_member)
        partitions = list(offer_events)
        stored_members, stored_stats = await self._retry(
            lambda: self.store.read_batch(member_ids, partitions)
        )

        to_write: list[StoredMember] = []
        to_delete: list[str] = []
        type_counts: TallyCounter[str] = TallyCounter()
        event_times: list[float] = []
        skipped = 0
        for mid, stored in zip(member_ids, stored_members, strict=True):
            if mid in erased:
                if not by_member[mid]:
                    to_delete.append(mid)
                    continue
                stored = None
            if stored is None:
                stored = StoredMember(state=new_state(mid))
            state = stored.state
            offsets = stored.offsets
            changed = False
            # Within a batch a member's events are in offset order (one partition, consumed in order),
            # which is the order the producer wrote them: the same order the offline fold uses.
            for partition, offset, event in by_member[mid]:
                if offset <= offsets.get(partition, -1):
                    skipped += 1
                    continue
                offsets[partition] = offset
                changed = True
                try:
                    apply(state, event)
                except Exception as exc:
                    # The fold is total over validated events; if it ever raises, the state may be
                    # partly updated. Keep going (never stop the stream) and leave a trace.
                    log.exception("fold failed for member %s at %s:%s", mid, partition, offset)
                    rec = RawRecord(partition, offset, mid.encode(), ev.encode(event))
                    self._dead_letter(out, dead_reasons, rec, "fold_error", repr(exc), now)
                    continue
                type_counts[ev.event_type(event)] += 1
                event_times.append(event.event_ts)
            if changed:
                to_write.append(stored)

        stats_to_write: list[StoredOfferStats] = []
        for partition, st in zip(partitions, stored_stats, strict=True):
            if st is None:
                st = StoredOfferStats(partition=partition, offset=-1, counters={})
            changed = False
            for offset, event in offer_events[partition]:
                if offset <= st.offset:
                    continue
                apply_offer_event(st.counters, event, self.cost_of)
                st.offset = offset
                changed = True
            if changed:
                stats_to_write.append(st)

        if to_write or stats_to_write:
            await self._retry(lambda: self.store.write_batch(to_write, stats_to_write))
        if to_delete:
            await self._retry(lambda: self.store.delete_members(to_delete))
            metrics.erasures.inc(len(to_delete))
        written = time.time()

        out.folded = sum(type_counts.values())
        out.skipped = skipped
        out.members_written = len(to_write)
        for kind, n in type_counts.items():
            metrics.events.labels(kind).inc(n)
        for reason, n in dead_reasons.items():
            metrics.dead_letters.labels(reason).inc(n)
        if skipped:
            metrics.duplicates.inc(skipped)
        observe_many(metrics.freshness, [written - ts for ts in event_times])
        metrics.batch_size.observe(len(records))
        return out

    def _dead_letter(
        self,
        out: BatchOutcome,
        tally: TallyCounter[str],
        rec: RawRecord,
        reason: str,
        detail: str,
        now: float,
    ) -> None:
        tally[reason] += 1
        envelope = make_dead_letter(rec, self.topic, reason, detail, now)
        out.dead_letters.append((rec.key, _dl_encoder.encode(envelope)))

    async def _retry(self, op: Any) -> Any:
        """Run a Redis round trip until it succeeds: dropping the batch would lose events."""
        backoff = 0.05
        while True:
            try:
                return await op()
            except (aioredis.ConnectionError, aioredis.TimeoutError, OSError) as exc:
                self.metrics.redis_errors.inc()
                log.warning("redis round trip failed (%r); retrying in %.2fs", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, REDIS_RETRY_MAX_BACKOFF_S)


class _CostOnly(msgspec.Struct):
    cost: float = 0.0


_cost_decoder = msgspec.json.Decoder(_CostOnly)


async def load_costs(store: MemberStore) -> dict[str, float]:
    """Offer id -> cost per claim from the live catalog hash (empty when there is no catalog)."""
    raw: dict[Any, Any] = await store.r.hgetall(store.layout.catalog_key)
    costs: dict[str, float] = {}
    for oid, blob in raw.items():
        try:
            key = oid.decode() if isinstance(oid, bytes) else str(oid)
            costs[key] = _cost_decoder.decode(blob).cost
        except (msgspec.DecodeError, UnicodeDecodeError):
            log.warning("catalog entry %r is not valid JSON; cost taken as 0", oid)
    return costs


def faust_broker_url(bootstrap: str) -> str:
    """``host1:9092,host2:9092`` -> Faust's ``kafka://host1:9092;kafka://host2:9092``."""
    return ";".join(f"kafka://{h.strip()}" for h in bootstrap.split(",") if h.strip())


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
                for tp in revoked:
                    # No longer ours: a stale lag figure would mislead whoever watches this worker.
                    with contextlib.suppress(KeyError):
                        worker.metrics.lag.remove(str(tp.partition))
                log.info("partitions revoked: %s", sorted(tp.partition for tp in revoked))

            async def on_partitions_assigned(self, assigned: Any) -> None:
                log.info("partitions assigned: %s", sorted(tp.partition for tp in assigned))

        redis_client = await open_client(
            s.redis_url, cluster=s.redis_cluster, timeout_ms=WORKER_REDIS_TIMEOUT_MS
        )
        store = MemberStore(redis_client, s.layout)
        processor = BatchProcessor(store, self.metrics, s.events_topic)
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
        catalog_version: bytes | None = None
        last_commit = time.monotonic()
        try:
            while not self.stop_event.is_set():
                if time.monotonic() >= costs_due:
                    costs_due = time.monotonic() + s.catalog_poll_seconds
                    catalog_version = await _refresh_costs(processor, catalog_version)
                fetched = await consumer.getmany(
                    timeout_ms=s.worker_batch_within_ms, max_records=s.worker_batch_max
                )
                if not fetched:
                    if self._to_commit and time.monotonic() - last_commit >= COMMIT_INTERVAL_S:
                        async with self._lock:
                            await self._commit()
                        last_commit = time.monotonic()
                    continue
                async with self._lock:
                    records = [
                        RawRecord(m.partition, m.offset, m.key, m.value)
                        for msgs in fetched.values()
                        for m in msgs
                    ]
                    t0 = time.perf_counter()
                    out = await processor.process(records)
                    if out.dead_letters:
                        futs = [
                            await producer.send(s.dead_letter_topic, value=v, key=k)
                            for k, v in out.dead_letters
                        ]
                        # Wait for the broker's ack: a dead letter must exist before its source commits.
                        await asyncio.gather(*futs)
                        log.info("dead-lettered %d events", len(out.dead_letters))
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


async def _refresh_costs(processor: BatchProcessor, version: bytes | None) -> bytes | None:
    """Reload offer costs from the catalog when its version changed; returns the version seen."""
    store = processor.store
    try:
        current: Any = await store.r.get(store.layout.catalog_version_key)
        if current != version or processor.cost_of is None:
            processor.cost_of = await load_costs(store)
        return current
    except (aioredis.ConnectionError, aioredis.TimeoutError, OSError) as exc:
        log.warning("catalog cost refresh failed: %r", exc)
        return version


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
        self._catalog_version: bytes | None = None
        self.app.agent(self.events_topic, name="fold-member-events")(self._agent)
        self.app.timer(interval=settings.catalog_poll_seconds)(self._refresh_costs)

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
            self._processor = BatchProcessor(store, self.metrics, self.settings.events_topic)
        return self._processor

    async def _refresh_costs(self) -> None:
        proc = self.processor()
        try:
            version: Any = await proc.store.r.get(proc.store.layout.catalog_version_key)
            if version != self._catalog_version or proc.cost_of is None:
                proc.cost_of = await load_costs(proc.store)
                self._catalog_version = version
        except (aioredis.ConnectionError, aioredis.TimeoutError, OSError) as exc:
            log.warning("catalog cost refresh failed: %r", exc)

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


ENGINES = ("batch", "faust")


def run_worker(settings: Settings, engine: str = "batch") -> None:
    """Run one stream worker until SIGTERM/SIGINT (blocking). Used by ``benefits worker``.

    ``engine="batch"`` (default) is the aiokafka batch consumer; ``"faust"`` the Faust app. Both fold
    through :class:`BatchProcessor` with the same exactly-once-in-effect guarantees.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}")
    metrics = StreamMetrics()
    if settings.worker_metrics_port:
        start_http_server(settings.worker_metrics_port, addr=settings.host, registry=metrics.registry)
        log.info("worker metrics on http://%s:%d/metrics", settings.host, settings.worker_metrics_port)
    log.info(
        "worker starting: engine=%s topic=%s group=%s batch_max=%d within_ms=%d",
        engine,
        settings.events_topic,
        settings.consumer_group,
        settings.worker_batch_max,
        settings.worker_batch_within_ms,
    )
    if engine == "faust":
        _run_faust(settings, metrics)
    else:
        asyncio.run(_run_batch(settings, metrics))


async def _run_batch(settings: Settings, metrics: StreamMetrics) -> None:
    worker = BatchConsumerWorker(settings, metrics)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.stop_event.set)
    await worker.run()


def _run_faust(settings: Settings, metrics: StreamMetrics) -> None:
    import faust

    runtime = FaustRuntime(settings, metrics)
    worker = faust.Worker(runtime.app, loglevel=settings.log_level, quiet=True, redirect_stdouts=False)
    try:
        worker.execute_from_commandline()
    finally:
        runtime.cleanup()
