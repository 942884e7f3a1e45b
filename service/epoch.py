"""Detects a Redis that lost its data while this process runs (the marker in ``infra.epoch_store``),
checked by a background poller once a second, never on the request path.

The flag is shared through Redis: the first process (API or stream worker) that finds the marker gone
or changed records ``lost`` there; every API process then reports ``state_lost`` (also one started
afterwards) until ``benefits replay`` has rebuilt the store and cleared the record, when the flag
clears by itself (no restart needed)."""

from __future__ import annotations

import logging

from infra.epoch_store import StoreEpoch
from service.metrics import Metrics
from service.recommend import Recommender

log = logging.getLogger(__name__)


class EpochWatch:
    def __init__(self, epoch: StoreEpoch, recommender: Recommender, metrics: Metrics) -> None:
        self.epoch = epoch
        self.recommender = recommender
        self.metrics = metrics
        #: The token seen at start (None until Redis was first reachable).
        self.known: str | None = None
        self.lost = False

    async def start(self) -> None:
        self.known = await self.epoch.ensure()
        pending = await self.epoch.lost()
        if pending is not None:
            self._set(True, f"the store is awaiting `benefits replay` ({pending})")

    async def check(self) -> None:
        """Compare the stored marker with the known one; raise the alarm when it vanished or changed,
        follow the shared ``lost`` record otherwise."""
        if self.known is None:
            await self.start()
            return
        token, pending = await self.epoch.read()
        if token != self.known:
            what, self.known = await self.epoch.report_lost("API", self.known, token)
            self._set(True, what)
        elif pending is not None and not self.lost:
            self._set(True, f"the store is awaiting `benefits replay` ({pending})")
        elif pending is None and self.lost:
            self._set(False, "")

    def _set(self, lost: bool, why: str) -> None:
        if lost == self.lost:
            return
        self.lost = lost
        self.recommender.state_lost = lost
        self.metrics.state_lost.set(1 if lost else 0)
        if lost:
            log.error(
                "%s: Redis lost its data; answers say degraded_cause=state_lost until member state is "
                "rebuilt with `benefits replay`",
                why,
            )
        else:
            log.warning("store rebuilt (`benefits replay` cleared the lost record): state_lost cleared")
