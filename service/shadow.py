"""Shadow scoring: the experiment's shadow model ranks a sampled share of live requests, off the answer.

On the request path :meth:`ShadowScorer.offer` only draws a random number and, for a sampled request,
appends a reference to what the live ranking already had (snapshot, state, context, time, the live
slate, and the eligible offers' feature rows) to a bounded deque: no scoring, no I/O. A background task
(:meth:`run`) takes items one at a time, ranks them with the shadow model (greedy: no exploration, so the
shadow slate is its policy's choice) and writes one JSON line beside the live slate::

    {"request_id", "ts", "arm", "live": {"model_version", "slate", "scores"},
     "shadow": {"model_version", "slate", "scores"}}

Every model the service loads runs the service's one feature specification, so when the live ranking
had feature rows the shadow reuses them: it recomputes neither eligibility nor rows nor reasons, only
its model's scores, the objective and the slate rules (about 0.15 ms at 200 candidates with compiled
trees, a fifth of a full ranking). A live answer without rows (a baseline arm) is ranked from scratch.
It still runs on the API process's event loop, between requests: a request arriving while it runs waits
for it (``benchmarks.ranking --shadow`` measures the cost on the tail). The task yields to the event
loop between items; when the deque is full a sampled request is skipped and counted
(``benefits_shadow_total{outcome="skipped"}``), never queued without bound.
``benefits shadow report --log FILE`` (``training.shadow_report``) reads the lines back.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import orjson

from features.projection import Context
from features.state import MemberState
from service.catalog import CatalogSnapshot
from service.metrics import Metrics
from service.model import LoadedModel
from service.ranking import Mode, Policy, rank, rescore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShadowItem:
    request_id: str
    ts: float
    arm: str | None
    snap: CatalogSnapshot
    state: MemberState
    context: Context
    limit: int
    mode: Mode
    model: LoadedModel
    live_version: str | None
    live_slate: list[str]
    live_scores: list[float]
    #: The live ranking's eligible offers and their feature rows (None: rank from scratch).
    eligible: np.ndarray | None = None
    x: np.ndarray | None = None


class ShadowScorer:
    def __init__(
        self, log_path: Path, queue_max: int, policy: Policy, metrics: Metrics, seed: int | None = None
    ):
        self.log_path = log_path
        self.policy = policy
        self.metrics = metrics
        self.queue: deque[ShadowItem] = deque()
        self.queue_max = queue_max
        self.rng = np.random.default_rng(seed)
        self._wake = asyncio.Event()
        self._file: IO[bytes] | None = None
        self.scored = 0

    def sampled(self, share: float) -> bool:
        return bool(self.rng.random() < share)

    def offer(self, item: ShadowItem) -> None:
        """Queue a sampled request for the shadow (request path: O(1), no scoring)."""
        if len(self.queue) >= self.queue_max:
            self.metrics.shadow.labels(outcome="skipped").inc()
            return
        self.queue.append(item)
        self._wake.set()

    async def score(self, item: ShadowItem) -> dict[str, Any]:
        if item.x is not None and item.eligible is not None:
            p = item.model.predict(item.x)
            picks = rescore(item.snap, item.eligible, p, item.ts, item.limit, self.policy)
        else:
            out = rank(
                item.snap, item.state, item.context, item.ts, item.limit,
                model=item.model, mode=item.mode, policy=self.policy,
            )  # fmt: skip
            picks = [(it.offer_id, it.score) for it in out.items]
        return {
            "request_id": item.request_id,
            "ts": item.ts,
            "arm": item.arm,
            "live": {
                "model_version": item.live_version,
                "slate": item.live_slate,
                "scores": item.live_scores,
            },
            "shadow": {
                "model_version": item.model.version,
                "slate": [oid for oid, _ in picks],
                "scores": [score for _, score in picks],
            },
        }

    def _write(self, record: dict[str, Any]) -> None:
        if self._file is None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.log_path.open("ab")
        self._file.write(orjson.dumps(record) + b"\n")

    async def run(self) -> None:
        """Drain the queue forever, one ranking per event-loop turn; flush the log when idle."""
        try:
            while True:
                if not self.queue:
                    if self._file is not None:
                        self._file.flush()
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                item = self.queue.popleft()
                try:
                    self._write(await self.score(item))
                    self.scored += 1
                    self.metrics.shadow.labels(outcome="scored").inc()
                except Exception:
                    self.metrics.shadow.labels(outcome="error").inc()
                    log.exception("shadow ranking failed (the live answer was not affected)")
                await asyncio.sleep(0)  # let requests in between two shadow rankings
        finally:
            if self._file is not None:
                self._file.close()
                self._file = None
