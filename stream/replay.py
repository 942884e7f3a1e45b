"""``benefits replay``: rebuild what Redis knows from the event log after a data loss.

Rebuilt from the log, through the same fold as the stream worker (``features.state.apply``,
``features.offer_stats.apply_offer_event``):

- every member's state blob, with the per-partition offset watermarks the worker would have written
  (so a worker resuming its consumer group skips what the replay folded);
- the per-partition offer statistics partials (impressions, clicks, claims, ``cost_used``), same rule;
- the money state of each offer (``infra.money_store``): units reserved, budget used, per-member claims
  and last claim times, and the idempotency records of accepted claims still within their TTL.

Sources: the topic from the beginning (aiokafka, up to the end offsets seen when the replay starts), or
a JSONL event log (one event per line, as training reads it; no offsets, so members get no watermarks
and the statistics go to partition 0's partial: replay a JSONL log only into an empty store whose worker
will not refold the same events).

Which claims are money: claim events that carry ``cost`` (the budget charged). The claim service
always sets it; producers outside it (an order system, simulated data) do not, and their claims count
in member state and statistics but reserve no stock, as live. A claim event id is counted once per
member and offer however often it was published (a retry republishes it). Event ids must be unique per
member (the event contract): one ``event_id`` sent for claims of two offers reserves on both (the
script's records are per offer) but is folded once into the member's state. The ``Idempotency-Key``
header cannot do that: its event id is derived from member, offer and key.

When it has written everything it deletes the store epoch's ``lost`` record (``infra/epoch_store.py``):
stream workers holding their folding since the loss resume where they stopped, and the APIs clear
``state_lost``.

Erasure tombstones (null value) in the topic reset the member's state, as the worker does; the
member's past claims stay in the money state (stock and budget were spent).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from features import events as ev
from features.offer_stats import OfferCounters, apply_offer_event, merge_all
from features.offers import Offer
from features.state import already_applied, apply, new_state
from infra.epoch_store import StoreEpoch
from infra.money_store import ClaimLimits, MoneyStore, RebuiltOffer, to_milli
from infra.redis_client import open_client
from infra.redis_layout import MemberStore, StoredMember, StoredOfferStats
from infra.settings import Settings

log = logging.getLogger(__name__)

CLAIM_TYPES = (ev.CouponClaim, ev.BenefitUse, ev.ConsultBooked)
OFFER_EVENT_TYPES = (ev.Impression, ev.Click, ev.Dismiss, ev.CouponRedeem, *CLAIM_TYPES)


class LogRecord(NamedTuple):
    """One record of the event log; ``partition``/``offset`` are None for a JSONL line."""

    partition: int | None
    offset: int | None
    key: bytes | None
    value: bytes | None


@dataclass
class Rebuilt:
    members: dict[str, StoredMember] = field(default_factory=dict)
    stats: dict[int, StoredOfferStats] = field(default_factory=dict)
    money: dict[str, RebuiltOffer] = field(default_factory=dict)
    erased: set[str] = field(default_factory=set)
    events: int = 0
    duplicates: int = 0
    invalid: int = 0


def read_jsonl(path: Path) -> Iterator[LogRecord]:
    with Path(path).open("rb") as f:
        for line in f:
            line = line.strip()
            if line:
                yield LogRecord(None, None, None, line)


async def read_topic(bootstrap: str, topic: str, timeout_s: float = 60.0) -> list[LogRecord]:
    """Every record of ``topic`` from the beginning up to the log ends at the start of the call, in
    offset order per partition.

    The end of a partition is the larger of the ListOffsets answer and the high watermark of the first
    fetch response: the embedded broker (tansu, memory storage) answers ListOffsets with 0 or 1 whatever
    the log holds, which read only the first record of each partition."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
    await consumer.start()
    out: list[LogRecord] = []
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        if not partitions:
            await consumer.force_metadata_update()
            partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        known: set[TopicPartition] = set()  # partitions whose first fetch answered (end settled)
        pending = set(tps)
        async with asyncio.timeout(timeout_s):
            while pending:
                batch = await consumer.getmany(*pending, timeout_ms=500)
                for tp in pending - known:
                    hw = consumer.highwater(tp)
                    if hw is not None:
                        end[tp] = max(end[tp], hw)
                        known.add(tp)
                for tp, records in batch.items():
                    out.extend(
                        LogRecord(tp.partition, r.offset, r.key, r.value)
                        for r in records
                        if r.offset < end[tp]
                    )
                for tp in known & pending:
                    if await consumer.position(tp) >= end[tp]:
                        pending.discard(tp)
    finally:
        await consumer.stop()
    return out


def rebuild(records: Iterable[LogRecord], offers: Iterable[Offer], retention_seconds: int) -> Rebuilt:
    """Fold the log (pure). Records of one partition must come in offset order."""
    out = Rebuilt()
    members, stats = out.members, out.stats
    claims: dict[str, dict[tuple[str, str], tuple[float, int]]] = {}
    for rec in records:
        if rec.value is None:
            if rec.key:
                mid = rec.key.decode()
                members[mid] = StoredMember(state=new_state(mid))
                out.erased.add(mid)
            continue
        try:
            event = ev.decode(rec.value)
        except ev.InvalidEvent:
            out.invalid += 1  # the worker dead-lettered it: it changed nothing then either
            continue
        stored = members.get(event.member_id)
        if stored is None:
            stored = members[event.member_id] = StoredMember(state=new_state(event.member_id))
        if rec.partition is not None and rec.offset is not None:
            stored.offsets[rec.partition] = rec.offset
        if isinstance(event, CLAIM_TYPES) and event.cost is not None:
            # Counted per (offer, member, event id) like the claim script's idempotency records, before
            # the member fold's own duplicate check (which is per member and id, within a window).
            per = claims.setdefault(event.offer_id, {})
            per.setdefault((event.member_id, event.event_id), (event.event_ts, to_milli(event.cost)))
        if already_applied(stored.state, event):
            out.duplicates += 1
            continue
        apply(stored.state, event)
        out.events += 1
        if isinstance(event, OFFER_EVENT_TYPES):
            p = rec.partition if rec.partition is not None else 0
            st = stats.get(p)
            if st is None:
                st = stats[p] = StoredOfferStats(partition=p, offset=-1, counters={})
            apply_offer_event(st.counters, event)
            if rec.offset is not None:
                st.offset = rec.offset
    for mid in out.erased:
        if members[mid].state.events_folded == 0:
            del members[mid]  # erased and silent since: the worker deletes the blob, so no blob
    known = {o.offer_id: o for o in offers}
    for offer_id, per in claims.items():
        offer = known.get(offer_id)
        expire_at = ClaimLimits.of(offer, retention_seconds).expire_at if offer is not None else 0
        units = cost = 0
        by_member: dict[str, tuple[int, float]] = {}
        accepted = []
        for (mid, eid), (ts, charged) in sorted(per.items(), key=lambda kv: (kv[1][0], kv[0])):
            units += 1
            cost += charged
            n, last = by_member.get(mid, (0, 0.0))
            by_member[mid] = (n + 1, max(last, ts))
            accepted.append((mid, eid, ts, units, cost, charged))
        out.money[offer_id] = RebuiltOffer(offer_id, units, cost, by_member, accepted, expire_at)
    return out


async def write(rebuilt: Rebuilt, members: MemberStore, money: MoneyStore, batch: int = 500) -> None:
    """Write everything rebuilt (member blobs and statistics pipelined in batches; money per offer)."""
    gone = [mid for mid in rebuilt.erased if mid not in rebuilt.members]
    if gone:
        await members.delete_members(gone)
    items = list(rebuilt.members.values())
    for i in range(0, len(items), batch):
        await members.write_batch(items[i : i + batch], [])
    for st in rebuilt.stats.values():
        await members.put_offer_stats(st)
    for offer in rebuilt.money.values():
        await money.restore(offer)


def summary(rebuilt: Rebuilt) -> dict[str, object]:
    return {
        "members": len(rebuilt.members),
        "events_folded": rebuilt.events,
        "duplicates_skipped": rebuilt.duplicates,
        "invalid_skipped": rebuilt.invalid,
        "erased_members": len(rebuilt.erased),
        "offer_stats_partitions": len(rebuilt.stats),
        "offers_with_claims": len(rebuilt.money),
        "claims": sum(o.units for o in rebuilt.money.values()),
    }


def merged_counters(rebuilt: Rebuilt) -> dict[str, OfferCounters]:
    return merge_all([st.counters for st in rebuilt.stats.values()])


async def run(settings: Settings, offers: list[Offer], events_path: Path | None = None) -> dict[str, object]:
    """Read the log (``events_path`` JSONL, else the events topic from the beginning), rebuild, write
    into the Redis of ``settings``; returns :func:`summary`."""
    if events_path is not None:
        records: list[LogRecord] = list(read_jsonl(events_path))
    else:
        if settings.kafka_bootstrap is None:
            raise ValueError("replay needs BENEFITS_KAFKA_BOOTSTRAP (or an --events JSONL file)")
        records = await read_topic(settings.kafka_bootstrap, settings.events_topic)
    rebuilt = rebuild(records, offers, settings.money_retention_seconds)
    if settings.redis_url is None:
        raise ValueError("replay needs BENEFITS_REDIS_URL")
    client = await open_client(settings.redis_url, cluster=settings.redis_cluster, timeout_ms=5000)
    try:
        money = MoneyStore(
            client, settings.redis_prefix, settings.idempotency_ttl_seconds, settings.money_retention_seconds
        )
        await write(rebuilt, MemberStore(client, settings.layout), money)
        # The store is whole again: clear the "lost" record (infra/epoch_store.py), so held workers
        # resume folding and the APIs stop reporting state_lost.
        cleared = await StoreEpoch(client, settings.layout).rebuilt()
    finally:
        await client.aclose()
    out = summary(rebuilt)
    out["lost_record_cleared"] = cleared
    log.info("replay: %s", out)
    return out
