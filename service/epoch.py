"""Detects a Redis that lost its data while this process runs (the marker in ``infra.epoch_store``),
checked by a background poller once a second, never on the request path."""

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

    async def check(self) -> None:
        """Compare the stored marker with the known one; raise the alarm once when it vanished."""
        if self.known is None:
            self.known = await self.epoch.ensure()
            return
        current = await self.epoch.current()
        if current == self.known or self.lost:
            return
        self.lost = True
        self.recommender.state_lost = True
        self.metrics.state_lost.set(1)
        log.error(
            "store epoch marker %s (was %s): Redis lost its data; answers say degraded_cause=state_lost "
            "until member state is rebuilt with `benefits replay` and the API restarted",
            "vanished" if current is None else f"changed to {current}",
            self.known,
        )
        if current is None:
            await self.epoch.ensure()  # so that every other replica notices too
