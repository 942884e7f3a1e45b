"""The worker's side of the store epoch (``infra/epoch_store.py``): notice a Redis that came back empty
and hold folding until ``benefits replay`` has rebuilt it.

Checked at start and then once every ``EPOCH_CHECK_INTERVAL_S`` (one pipelined round trip, not per
batch). When the marker is gone or changed, or another process recorded the loss: an error log line,
``benefits_stream_state_lost`` 1, the ``lost`` record written, and folding held (the engine pauses its
partitions, keeps its group membership and commits nothing new) until the record is cleared by
``benefits replay``. Then folding resumes where it stopped; the replay's watermarks skip what it
already rebuilt.

Why hold rather than keep folding:

- folding into the emptied store writes members' states from the few events since the loss, which the
  API then serves as ``personalised`` (the loss would be hidden member by member);
- ``benefits replay`` reads the log up to the end offsets it sees when it starts and overwrites each
  member's blob. An event a still-folding worker wrote past that end would be overwritten by the
  replay's older blob while the worker has already committed past it: lost for good. Held, the worker's
  position stays at or before the replay's end, so nothing is skipped or counted twice.

A Redis that restarts drops the worker's connections: the batch in flight fails, and it is retried only
after the marker reads as before (:meth:`EpochHold.confirm`); and right before each batch is written the
marker is read once more (:meth:`EpochHold.verify`, one round trip per batch: the Redis client may
reconnect and retry through a restart by itself). So nothing is written into a restarted or flushed
store, unless it loses its data between that read and the write itself (under a millisecond; the replay
overwrites those members). The periodic check raises the alarm while no batch comes. What holding costs:
freshness (the consumer lag grows during the outage; the topic keeps the events and the worker catches
up after the replay). Batch engine only; the Faust engine does not check the epoch yet.
"""

from __future__ import annotations

import logging
import time

from redis.exceptions import RedisError

from infra.epoch_store import StoreEpoch
from stream.metrics import StreamMetrics
from stream.timings import EPOCH_CHECK_INTERVAL_S

log = logging.getLogger(__name__)


class StoreLost(Exception):
    """The store came back as another one in the middle of a batch: abandon the batch unwritten (the
    engine puts its records back and holds)."""


class EpochHold:
    """Tells the engine whether to fold (``await hold.check()`` is True while folding must wait)."""

    def __init__(self, epoch: StoreEpoch, metrics: StreamMetrics) -> None:
        self.epoch = epoch
        self.metrics = metrics
        #: The marker token this worker's state belongs to (None until Redis was first reachable).
        self.known: str | None = None
        self.holding = False
        self._due = 0.0

    async def start(self) -> None:
        """At start: take the current marker (creating it in a fresh store); hold at once if the store
        is awaiting a replay. A Redis error leaves it to the periodic check."""
        try:
            self.known = await self.epoch.ensure()
            pending = await self.epoch.lost()
        except (RedisError, OSError) as exc:
            log.warning("store epoch unreadable at start (%s): checked again once Redis answers", exc)
            return
        if pending is not None:
            self._hold(f"the store is awaiting `benefits replay` ({pending})")

    async def check(self) -> bool:
        """True while folding must be held. Reads Redis at most once per interval; a Redis error keeps
        the previous answer (a batch write would fail and retry anyway)."""
        now = time.monotonic()
        if now < self._due:
            return self.holding
        self._due = now + EPOCH_CHECK_INTERVAL_S
        try:
            if self.known is None:
                await self.start()
                return self.holding
            if await self._observe() and self.holding:
                self.holding = False
                self.metrics.state_lost.set(0)
                log.warning("store rebuilt (`benefits replay` cleared the lost record): folding resumes")
        except (RedisError, OSError) as exc:
            log.debug("store epoch check failed (%s)", exc)
        return self.holding

    async def confirm(self) -> bool:
        """After a failed Redis round trip, before it is retried (``BatchProcessor.store_check``): True
        when the store reads as the same one again, False while Redis cannot be read; raises
        :class:`StoreLost` when Redis came back as another store (restarted without its data), so the
        batch is neither folded from nor written into it. A restart is how a store usually loses its
        data, so this catches it before the first write rather than at the next periodic check."""
        try:
            if self.known is None:
                await self.start()
            else:
                await self._observe()
        except (RedisError, OSError):
            return False
        if self.holding:
            raise StoreLost("the store lost its data")
        return self.known is not None

    async def verify(self) -> None:
        """Before a batch is written (``BatchProcessor.before_write``): raise :class:`StoreLost` when the
        marker is not the known one, so a batch read from the old store is never written into a new,
        empty one. One round trip per batch; a Redis error propagates (the write's retry handles it)."""
        if self.known is None:
            return
        await self._observe()
        if self.holding:
            raise StoreLost("the store lost its data")

    async def _observe(self) -> bool:
        """Read the marker and the ``lost`` record (one round trip); hold when the store is not the known
        one (recorded as lost, the new marker known from now on) or awaits a replay. True: neither."""
        assert self.known is not None  # start() ran: the callers check
        token, pending = await self.epoch.read()
        if token != self.known:
            what, self.known = await self.epoch.report_lost("worker", self.known, token)
            self._hold(what)
            return False
        if pending is not None:
            self._hold(f"the store is awaiting `benefits replay` ({pending})")
            return False
        return True

    def _hold(self, why: str) -> None:
        if self.holding:
            return
        self.holding = True
        self.metrics.state_lost.set(1)
        log.error(
            "%s: Redis lost its data. Folding is held (events wait in the topic) until `benefits replay` "
            "rebuilds member state from the event log; the worker then resumes by itself",
            why,
        )
