"""One batch of ``member-events`` folded into Redis, exactly once in effect; no broker client here, so
both engines, the benchmark and the tests drive the same code path (:class:`BatchProcessor`).

Shape of one batch (up to ``worker_batch_max`` events, waiting at most ``worker_batch_within_ms``):

1. :meth:`~BatchProcessor.decode`: decode every raw message with :func:`features.events.decode`
   (msgspec, validated); anything that fails goes to the dead-letter topic with its reason and is
   counted, never stopping the worker;
2. group the good events by member (same step), then :meth:`~BatchProcessor.read` every member blob
   and the touched partitions' offer-stat partials in **one** round trip (MGET; a pipeline on a
   cluster);
3. :meth:`~BatchProcessor.fold_members` / :meth:`~BatchProcessor.fold_offer_stats`: fold each
   member's events in offset order with the shared pure fold, skipping any offset at or below the
   watermark stored in the blob for that partition (a redelivery after a crash);
4. :meth:`~BatchProcessor.write` every changed blob and partial in **one** round trip (one script
   call; a pipeline on a cluster), each with its TTL;
5. only then is the batch's offset committed (batch engine) or acked (Faust), so the committed consumer
   offset never passes an event whose state is not in Redis. With step 3: exactly-once in effect.

Hazards worth knowing:

- The watermark check needs every message of a member on one partition: a message whose Kafka key is
  not its ``member_id`` is dead-lettered (``key_mismatch``) rather than folded.
- Offsets are compared only within one incarnation of the topic: each watermark carries the
  incarnation it belongs to, and ``incarnations`` (kept by ``stream/incarnation.py``, which detects a
  recreated or truncated topic) says the current one per partition; a watermark of another incarnation
  reads as "nothing folded yet". True redeliveries are still caught by the fold's event-id window.
- Redis errors are retried with backoff inside the batch (:meth:`BatchProcessor.retry`), never raised:
  Faust would ack a batch whose processing raised. A Redis that failed may come back as another, empty
  store: with ``store_check`` set (the batch engine's store epoch, ``stream/epoch.py``) a round trip is
  retried only once the store reads as the same one again, and the check raises when it does not, so
  no batch is folded from or written into an emptied store; ``before_write`` reads the epoch marker
  right before each write for the restart the Redis client retried through on its own.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter as TallyCounter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import redis.asyncio as aioredis

from features import events as ev
from features.offer_stats import apply_offer_event
from features.state import already_applied, apply, new_state
from infra.catalog_store import CatalogStore
from infra.redis_layout import MemberStore, StoredMember, StoredOfferStats
from stream.metrics import StreamMetrics, observe_many
from stream.records import RawRecord, encode_dead_letter, make_dead_letter, text_or_none
from stream.timings import REDIS_RETRY_MAX_BACKOFF_S

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Errors of a Redis round trip that are worth retrying (the server or the network, not our data).
REDIS_ERRORS = (aioredis.ConnectionError, aioredis.TimeoutError, OSError)

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


@dataclass
class BatchOutcome:
    """What one batch did; dead letters are (key, JSON envelope) pairs for the adapter to publish."""

    folded: int = 0
    skipped: int = 0
    members_written: int = 0
    dead_letters: list[tuple[bytes | None, bytes]] = field(default_factory=list)
    #: partition -> last offset seen in the batch (for lag).
    last_offsets: dict[int, int] = field(default_factory=dict)


@dataclass
class Decoded:
    """Step 1's result: the batch's good events grouped by member and by partition."""

    #: member -> (partition, offset, event) in offset order; empty for a member erased in this batch
    #: with nothing after the tombstone.
    by_member: dict[str, list[tuple[int, int, ev.Event]]] = field(default_factory=dict)
    #: partition -> (offset, event) of the events that also count per offer.
    offer_events: dict[int, list[tuple[int, ev.Event]]] = field(default_factory=dict)
    #: Members erased by a tombstone in this batch (their stored blob is ignored).
    erased: set[str] = field(default_factory=set)


@dataclass
class FoldedMembers:
    """Step 3's result for members: blobs to write, members to delete, and what was folded."""

    to_write: list[StoredMember] = field(default_factory=list)
    to_delete: list[str] = field(default_factory=list)
    type_counts: TallyCounter[str] = field(default_factory=TallyCounter)
    event_times: list[float] = field(default_factory=list)
    skipped: int = 0
    #: (partition, offset) of events whose id the member had already (producer retries): not folded
    #: into the member, and so not into the offer statistics either.
    repeated: set[tuple[int, int]] = field(default_factory=set)


class BatchProcessor:
    """Decode, group, read, fold and write one batch. No Faust here: the benchmark and tests use it."""

    def __init__(
        self,
        store: MemberStore,
        metrics: StreamMetrics,
        topic: str,
        cost_of: dict[str, float] | None = None,
        event_time_bounds: tuple[float, float | None] | None = None,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.topic = topic
        #: (max future skew, max age or None) in seconds, against the wall clock: an event outside them
        #: is dead-lettered (``event_ts_future`` / ``event_ts_expired``); None accepts any valid time.
        self.event_time_bounds = event_time_bounds
        #: partition -> current topic incarnation ("" the original; absent means ""), shared with the
        #: engine's :class:`~stream.incarnation.IncarnationGuard`.
        self.incarnations: dict[int, str] = {}
        #: Offer id -> cost per claim, charged to the per-offer ``cost_used`` (refreshed from the catalog
        #: by :class:`CostRefresher`).
        self.cost_of = cost_of
        #: After a failed round trip, before retrying it: True when the store reads as the same one again,
        #: False while it cannot be read (wait and ask again); it raises to abandon the batch when the
        #: store came back as another one. None: retry at once (the Faust engine).
        self.store_check: Callable[[], Awaitable[bool]] | None = None
        #: Before each write: raises to abandon the batch when the store is no longer the one its reads
        #: came from (one round trip; a Redis client reconnects and retries by itself, so a restart is
        #: not always an error here). None: no check (the Faust engine).
        self.before_write: Callable[[], Awaitable[None]] | None = None

    async def process(self, records: Sequence[RawRecord]) -> BatchOutcome:
        """Fold ``records`` (one fetched batch, in offset order per partition) into Redis."""
        out = BatchOutcome()
        if not records:
            return out
        now = time.time()
        dead_reasons: TallyCounter[str] = TallyCounter()
        batch = self.decode(records, out, dead_reasons, now)
        member_ids = list(batch.by_member)
        partitions = list(batch.offer_events)
        stored_members, stored_stats = await self.read(member_ids, partitions)
        members = self.fold_members(batch, member_ids, stored_members, out, dead_reasons, now)
        stats = self.fold_offer_stats(batch, partitions, stored_stats, members.repeated)
        await self.write(members, stats)
        self._count(records, out, members, dead_reasons, written=time.time())
        return out

    # -- step 1: decode and group ------------------------------------------------------------------
    def decode(
        self, records: Sequence[RawRecord], out: BatchOutcome, dead_reasons: TallyCounter[str], now: float
    ) -> Decoded:
        """Decode and group the batch; bad messages become dead letters in ``out``."""
        batch = Decoded()
        by_member, offer_events, erased = batch.by_member, batch.offer_events, batch.erased
        last_offsets = out.last_offsets
        decode = ev.decode
        bounds = self.event_time_bounds
        for rec in records:
            last_offsets[rec.partition] = rec.offset
            if rec.value is None:
                # An erasure tombstone (null value, key = member id). Everything the member did before it
                # is forgotten: drop the batch's earlier events of the member and start from nothing.
                # Redelivery after a crash replays the same prefix and the same tombstone, so the end
                # state is the same (exactly-once in effect holds across erasures).
                mid_raw = text_or_none(rec.key)
                if not mid_raw:
                    self._dead_letter(
                        out, dead_reasons, rec, "malformed", "null value without a member key", now
                    )
                    continue
                erased.add(mid_raw)
                by_member[mid_raw] = []
                continue
            try:
                event = decode(rec.value)
                if rec.key is None or rec.key != event.member_id.encode():
                    # Folding it would break the one-partition-per-member rule the watermarks rely on.
                    raise ev.InvalidEvent("key_mismatch", f"message key {rec.key!r} != member_id")
                if bounds is not None:
                    ev.check_event_time(event.event_ts, now, bounds[0], bounds[1])
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
        return batch

    # -- step 2: one read round trip ---------------------------------------------------------------
    async def read(
        self, member_ids: list[str], partitions: list[int]
    ) -> tuple[list[StoredMember | None], list[StoredOfferStats | None]]:
        """Every member blob and offer-stat partial of the batch, in one round trip (retried)."""
        store = self.store
        stale_before = store.stale_layout_reads
        got = await self.retry(lambda: store.read_batch(member_ids, partitions))
        if store.stale_layout_reads > stale_before:
            # Blobs of another layout version read as missing (see infra/redis_layout.py): counted here.
            self.metrics.stale_layout.inc(store.stale_layout_reads - stale_before)
        return got

    # -- step 3: fold ------------------------------------------------------------------------------
    def fold_members(
        self,
        batch: Decoded,
        member_ids: list[str],
        stored_members: list[StoredMember | None],
        out: BatchOutcome,
        dead_reasons: TallyCounter[str],
        now: float,
    ) -> FoldedMembers:
        """Fold each member's events into their stored blob, skipping offsets at or below its watermark."""
        res = FoldedMembers()
        by_member, erased = batch.by_member, batch.erased
        type_counts, event_times = res.type_counts, res.event_times
        skipped = 0
        for mid, stored in zip(member_ids, stored_members, strict=True):
            if mid in erased:
                if not by_member[mid]:
                    res.to_delete.append(mid)
                    continue
                stored = None
            if stored is None:
                stored = StoredMember(state=new_state(mid))
            state = stored.state
            offsets = stored.offsets
            incarnations = stored.incarnations
            current = self.incarnations
            changed = False
            # Within a batch a member's events are in offset order (one partition, consumed in order),
            # which is the order the producer wrote them: the same order the offline fold uses.
            for partition, offset, event in by_member[mid]:
                inc = current.get(partition, "")
                if incarnations.get(partition, "") != inc:
                    # A watermark of an older incarnation of the topic: these offsets are new events.
                    offsets.pop(partition, None)
                    if inc:
                        incarnations[partition] = inc
                    else:
                        incarnations.pop(partition, None)
                if offset <= offsets.get(partition, -1):
                    skipped += 1
                    continue
                offsets[partition] = offset
                changed = True
                if already_applied(state, event):
                    res.repeated.add((partition, offset))
                    continue
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
                res.to_write.append(stored)
        res.skipped = skipped
        return res

    def fold_offer_stats(
        self,
        batch: Decoded,
        partitions: list[int],
        stored_stats: list[StoredOfferStats | None],
        repeated: set[tuple[int, int]] | None = None,
    ) -> list[StoredOfferStats]:
        """Fold offer events into each partition's partial, skipping offsets at or below its watermark
        and the ``repeated`` event ids the member fold skipped (a retried claim counts once)."""
        repeated = repeated or set()
        stats_to_write: list[StoredOfferStats] = []
        for partition, st in zip(partitions, stored_stats, strict=True):
            inc = self.incarnations.get(partition, "")
            if st is None:
                st = StoredOfferStats(partition=partition, offset=-1, counters={}, incarnation=inc)
            elif st.incarnation != inc:
                st.offset, st.incarnation = -1, inc  # an older incarnation's watermark: new offsets
            changed = False
            for offset, event in batch.offer_events[partition]:
                if offset <= st.offset:
                    continue
                if (partition, offset) not in repeated:
                    apply_offer_event(st.counters, event, self.cost_of)
                st.offset = offset
                changed = True
            if changed:
                stats_to_write.append(st)
        return stats_to_write

    # -- step 4: one write round trip --------------------------------------------------------------
    async def write(self, members: FoldedMembers, stats: list[StoredOfferStats]) -> None:
        """Write changed blobs and partials (one round trip), then delete erased members (retried)."""
        to_write, to_delete = members.to_write, members.to_delete
        if (to_write or stats or to_delete) and self.before_write is not None:
            await self.retry(self.before_write)
        if to_write or stats:
            await self.retry(lambda: self.store.write_batch(to_write, stats))
        if to_delete:
            await self.retry(lambda: self.store.delete_members(to_delete))
            self.metrics.erasures.inc(len(to_delete))

    def _count(
        self,
        records: Sequence[RawRecord],
        out: BatchOutcome,
        members: FoldedMembers,
        dead_reasons: TallyCounter[str],
        written: float,
    ) -> None:
        metrics = self.metrics
        out.folded = sum(members.type_counts.values())
        out.skipped = members.skipped
        out.members_written = len(members.to_write)
        for kind, n in members.type_counts.items():
            metrics.events.labels(kind).inc(n)
        for reason, n in dead_reasons.items():
            metrics.dead_letters.labels(reason).inc(n)
        if members.skipped:
            metrics.duplicates.inc(members.skipped)
        if members.repeated:
            metrics.repeated_ids.inc(len(members.repeated))
        observe_many(metrics.freshness, [written - ts for ts in members.event_times])
        metrics.batch_size.observe(len(records))

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
        out.dead_letters.append((rec.key, encode_dead_letter(envelope)))

    async def retry(self, op: Callable[[], Awaitable[T]]) -> T:
        """Run a Redis round trip until it succeeds: dropping the batch would lose events."""
        backoff = 0.05
        while True:
            try:
                return await op()
            except REDIS_ERRORS as exc:
                self.metrics.redis_errors.inc()
                log.warning("redis round trip failed (%r); retrying in %.2fs", exc, backoff)
            while True:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, REDIS_RETRY_MAX_BACKOFF_S)
                if self.store_check is None or await self.store_check():
                    break


class CostRefresher:
    """Keeps a processor's offer costs in step with the catalog (both engines call :meth:`refresh`)."""

    def __init__(self, catalog: CatalogStore) -> None:
        self.catalog = catalog
        #: The catalog version the processor's costs were loaded from (None: never loaded).
        self.version: int | None = None

    async def refresh(self, processor: BatchProcessor) -> None:
        """Reload the costs when the catalog version changed. A Redis failure keeps the old costs
        (logged): costs only weigh ``cost_used``, not worth stopping or delaying the stream for."""
        try:
            current = await self.catalog.version()
            if current != self.version or processor.cost_of is None:
                processor.cost_of = await self.catalog.costs()
                self.version = current
        except REDIS_ERRORS as exc:
            log.warning("catalog cost refresh failed: %r", exc)
