"""No loss and no double counting: SIGKILL the worker process at several points under load, restart it,
and the final Redis state equals one clean offline pass over the same events.

Kill points (one run, same topic and group):

1. mid-drain: the first worker is killed once it has written part of the backlog while the producer is
   still sending (so uncommitted, already-written batches get redelivered to the next worker);
2. right after progress resumes: the second worker is killed just after it wrote its first batches;
3. during start-up: the third worker is killed before it can have joined the group;
4. mid-batch, at a random instant under load: the fourth worker is killed after a random short delay.

A fifth worker drains the rest and is stopped cleanly. Every restart waits out the dead member's
session (6 s), which is what makes this test slow.

What shows that a kill landed mid-work: the events folded when it was killed lie strictly between none
and all of them (the worker had written part of the stream and had more to do). Redeliveries are not
required: a restarted worker resumes at the last record its predecessor recorded as written
(``stream/incarnation.py``), so a redelivery happens only when the kill falls between a batch's writes
and its mark, and those the fold's watermarks skip (reported, not gated on).
"""

from __future__ import annotations

import asyncio
import random
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from harness import stream_driver as h
from tests.stream.conftest import state_diff

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _progress(cfg: h.WorkerConfig, mids: list[str]) -> int:
    return asyncio.run(h.events_folded(cfg.redis_url, cfg.prefix, mids))


def _skipped(cfg: h.WorkerConfig) -> float:
    return h.scrape_metrics(cfg.metrics_port)[("benefits_stream_duplicates_skipped_total", ())]


def _wait_progress_beyond(cfg: h.WorkerConfig, mids: list[str], floor: int, timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        n = _progress(cfg, mids)
        if n > floor:
            return n
        time.sleep(0.1)
    raise AssertionError(f"no progress beyond {floor} events within {timeout_s}s")


def test_sigkill_at_several_points_loses_and_duplicates_nothing(
    worker_cfg: h.WorkerConfig, worker_log: Path
) -> None:
    cfg = worker_cfg
    # Small batches make each kill land between many more writes and commits.
    cfg.batch_max = 500
    events = h.synthetic_events(60_000, 1500, seed=31)
    mids = sorted({e.member_id for e in events})
    messages = h.keyed(events)
    producer = threading.Thread(
        target=lambda: asyncio.run(h.produce(cfg.bootstrap, cfg.events_topic, messages, rate_per_s=4000)),
        daemon=True,
    )
    producer.start()
    rng = random.Random(5)
    kills = 0

    # Events folded when each mid-work kill landed (read just after the kill).
    at_kill: list[int] = []

    def kill(p: Any) -> None:
        p.send_signal(signal.SIGKILL)
        p.wait()
        at_kill.append(_progress(cfg, mids))

    # 1. mid-drain, producer still sending
    proc = h.start_worker(cfg, worker_log)
    first = _wait_progress_beyond(cfg, mids, 2000, 60)
    kill(proc)
    kills += 1

    # 2. just after the restarted worker writes again
    proc = h.start_worker(cfg, worker_log)
    before = _progress(cfg, mids)
    _wait_progress_beyond(cfg, mids, before, 60)
    skipped = [_skipped(cfg)]
    kill(proc)
    kills += 1

    # 3. during start-up, before it can have joined the group
    proc = h.start_worker(cfg, worker_log)
    time.sleep(1.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    kills += 1

    # 4. at a random instant while it works through the backlog
    proc = h.start_worker(cfg, worker_log)
    _wait_progress_beyond(cfg, mids, _progress(cfg, mids), 60)
    time.sleep(rng.uniform(0.05, 0.5))
    skipped.append(_skipped(cfg))
    kill(proc)
    kills += 1

    producer.join(timeout=60)
    assert not producer.is_alive()
    # 5. a clean worker drains the rest
    with h.worker_process(cfg, worker_log):
        seen = asyncio.run(h.wait_folded(cfg.redis_url, cfg.prefix, mids, len(events), 90))
        # Anything beyond the expected count would be a double count: give it a moment to show up.
        time.sleep(1.0)
        seen = _progress(cfg, mids)
        skipped.append(_skipped(cfg))

    assert kills == 4 and first > 0
    # Evidence that the three mid-work kills landed mid-work: part of the stream folded, not all of it.
    # (Redeliveries skipped per restarted worker are printed for the record, not required.)
    print(f"events folded at each mid-work kill: {at_kill}; redeliveries skipped: {skipped}")
    assert all(0 < n < len(events) for n in at_kill), (at_kill, len(events))
    assert at_kill == sorted(at_kill), at_kill
    assert seen == len(events), f"folded {seen} of {len(events)}"
    reference = h.offline_fold(events)
    stored = asyncio.run(h.read_members(cfg.redis_url, cfg.prefix, mids))
    bad = [m for m in mids if stored[m].state != reference[m]]
    assert not bad, (
        f"{len(bad)} members differ, e.g. {bad[0]}: {state_diff(stored[bad[0]].state, reference[bad[0]])}"
    )
    assert asyncio.run(h.read_offer_stats(cfg.redis_url, cfg.prefix)) == h.offline_offer_stats(events)
