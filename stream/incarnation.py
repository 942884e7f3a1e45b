"""The worker's side of topic incarnations (``infra/topic_incarnation.py``): detect offsets going
backwards and start a new incarnation, so that a recreated topic's events are folded, never skipped.

Rule, per partition, with the mark recorded after the last batch written (offset ``w``, fingerprint of
the record at ``w``):

- on assignment the consumer is moved to ``w`` (everything up to ``w`` is already in Redis, so nothing
  is skipped), and the first record fetched must be the same record at ``w``: same fingerprint -> the
  same topic, the record is dropped (already folded) and folding resumes after it;
- a first record at ``w`` with another fingerprint, or any record below ``w`` (the broker reset the
  position to the start of a shorter log, or a truncated log) -> the offsets restarted: an alarm
  (``benefits_stream_offsets_backwards_total``, an error log line) and a new incarnation token for the
  partition. Watermarks of the old incarnation then read as "nothing folded", so the new events are
  folded; a true redelivery of an already-folded event is still caught by the fold's event-id window.
- a first record above ``w`` (retention removed ``w``) is the same topic, moving forward;
- a high watermark (log end) at or below ``w`` -> the log is shorter than what was folded: the same
  alarm and a new incarnation, and the consumer goes back to the beginning of the partition.

Limitation: the check needs the record at ``w`` or a position below it. A recreated topic that already
holds more than ``w`` records *and* a record at ``w`` with the same timestamp, key and value as the old
one would pass as the old topic (practically impossible: timestamps are in milliseconds).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from infra.topic_incarnation import PartitionMark, TopicIncarnations, new_incarnation, record_fingerprint
from stream.epoch import StoreLost
from stream.metrics import StreamMetrics

log = logging.getLogger(__name__)


@dataclass
class Fetched:
    """One fetched record as the guard needs it."""

    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None


class IncarnationGuard:
    """Keeps ``current`` (partition -> incarnation token, shared with the BatchProcessor) right."""

    def __init__(
        self,
        store: TopicIncarnations,
        metrics: StreamMetrics,
        retry: Callable[[Callable[[], Awaitable[None]]], Awaitable[None]],
    ) -> None:
        self.store = store
        self.metrics = metrics
        #: Runs a Redis round trip until it succeeds (the batch processor's retry with backoff).
        self.retry = retry
        #: partition -> the incarnation the batch's watermarks must belong to.
        self.current: dict[int, str] = {}
        #: partition -> the last record processed and written (as recorded in Redis).
        self.marks: dict[int, PartitionMark] = {}

    async def assigned(self, partitions: list[int]) -> dict[int, int]:
        """Load the marks of newly assigned partitions; returns partition -> offset to seek to."""
        marks: dict[int, PartitionMark] = {}

        async def read() -> None:
            marks.update(await self.store.read(partitions))

        try:
            await self.retry(read)
        except StoreLost:
            pass  # an emptied store has no marks; the engine holds folding until the replay

        seeks: dict[int, int] = {}
        for p in partitions:
            mark = marks.get(p)
            if mark is None:
                self.marks.pop(p, None)
                self.current[p] = ""
                continue
            self.marks[p] = mark
            self.current[p] = mark.incarnation
            if mark.offset >= 0:
                seeks[p] = mark.offset
        return seeks

    def revoked(self, partitions: list[int]) -> None:
        for p in partitions:
            self.marks.pop(p, None)

    async def check(self, first: dict[int, Fetched]) -> tuple[set[int], set[int]]:
        """Check each partition's first fetched record of a batch against its mark. Returns the
        partitions whose first record is the already-folded record at the mark (the caller drops it)
        and the partitions restarted as a new incarnation (the caller drops their records and seeks
        them to the beginning: the new incarnation's earlier records were not fetched)."""
        drop: set[int] = set()
        restarted: dict[int, PartitionMark] = {}
        for p, rec in first.items():
            mark = self.marks.get(p)
            if mark is None or rec.offset > mark.offset:
                continue
            if rec.offset == mark.offset:
                if record_fingerprint(rec.timestamp, rec.key, rec.value) == mark.fingerprint:
                    drop.add(p)
                    continue
                reason = "record_changed"
            else:
                reason = "offset_below_watermark"
            restarted[p] = self._restart(p, reason, rec.offset)
        if restarted:
            await self.retry(lambda: self.store.write(restarted))
        return drop, set(restarted)

    async def check_highwaters(self, highwaters: dict[int, int | None]) -> list[int]:
        """Partitions whose log now ends at or below the last offset folded there (the broker came back
        without the topic, or truncated it): restarted as a new incarnation; the caller seeks them to
        the beginning. A broker may answer a position past the end with an empty fetch, not an error,
        so this is what catches a recreated topic with fewer records than the old one."""
        restarted: dict[int, PartitionMark] = {}
        for p, hw in highwaters.items():
            mark = self.marks.get(p)
            if hw is not None and mark is not None and hw <= mark.offset:
                restarted[p] = self._restart(p, "log_end_below_watermark", hw)
        if restarted:
            await self.retry(lambda: self.store.write(restarted))
        return sorted(restarted)

    def _restart(self, p: int, reason: str, seen: int) -> PartitionMark:
        mark = self.marks[p]
        token = new_incarnation()
        self.metrics.offsets_backwards.labels(str(p), reason).inc()
        log.error(
            "offsets went backwards on partition %d (%s): saw offset %d, last folded offset %d of "
            "incarnation %r; the topic was recreated or truncated. Starting incarnation %r: its events "
            "are folded as new, not skipped as redeliveries",
            p,
            reason,
            seen,
            mark.offset,
            mark.incarnation or "original",
            token,
        )
        self.current[p] = token
        self.marks[p] = new = PartitionMark(token, -1, "")
        return new

    def store_rebuilt(self) -> None:
        """``benefits replay`` rebuilt an emptied store (``stream/epoch.py``): the incarnation record
        went with the data and the replay wrote every watermark in the original incarnation "" (it
        read the topic as it is now). Continue in "" with the marks kept, so the watermarks compare."""
        for p in self.current:
            self.current[p] = ""
        for p, m in self.marks.items():
            self.marks[p] = PartitionMark("", m.offset, m.fingerprint)

    async def written(self, last: Sequence[Fetched]) -> None:
        """Record the last record of each partition of a batch already written to Redis."""
        marks = {
            rec.partition: PartitionMark(
                self.current.get(rec.partition, ""),
                rec.offset,
                record_fingerprint(rec.timestamp, rec.key, rec.value),
            )
            for rec in last
        }
        self.marks.update(marks)
        await self.retry(lambda: self.store.write(marks))
