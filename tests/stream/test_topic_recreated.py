"""Offsets with an identity: a broker that lost its topics (tansu memory storage) comes back, the topic
is created again and offsets restart at 0, while the member blobs hold the old topic's watermarks. Every
accepted event must still be folded exactly once, and the worker must raise its alarm.

Two shapes: the worker stays up through the outage and the new topic holds fewer records than the old
one (caught by the log end falling below the watermarks), and the worker is down during the outage and
the new topic holds more records than the old one (caught by the record at the watermark changing)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from harness import stream_driver as h
from harness.embedded import create_topics, recreate_broker, start_broker

pytestmark = [pytest.mark.integration]

N_MEMBERS = 40
FIRST = 600


def _topics(cfg: h.WorkerConfig) -> dict[str, int]:
    return {cfg.events_topic: cfg.partitions, cfg.dead_letter_topic: 1}


def _settle(cfg: h.WorkerConfig, mids: list[str], expected: int, timeout_s: float) -> int:
    return h.settle(cfg.redis_url, cfg.prefix, mids, expected, timeout_s)


@pytest.mark.parametrize(
    ("second_n", "worker_up", "reason"),
    [(300, True, "log_end_below_watermark"), (1200, False, "record_changed")],
    ids=["fewer-worker-up", "more-worker-down"],
)
def test_recreated_topic_is_folded_as_new_offsets_not_redeliveries(
    worker_cfg: h.WorkerConfig, worker_log: Path, second_n: int, worker_up: bool, reason: str
) -> None:
    broker = start_broker()
    cfg = worker_cfg
    cfg.bootstrap = broker.url
    try:
        asyncio.run(create_topics(broker.url, _topics(cfg)))
        first = h.synthetic_events(FIRST, N_MEMBERS, seed=5, prefix="a", now_ts=True)
        mids = sorted({e.member_id for e in first})
        second = h.synthetic_events(second_n, N_MEMBERS, seed=6, prefix="b", now_ts=True)
        assert sorted({e.member_id for e in second}) == mids  # the SAME members, new events
        asyncio.run(h.produce(broker.url, cfg.events_topic, h.keyed(first)))
        total = len(first) + len(second)
        worker = h.start_worker(cfg, worker_log)
        try:
            assert _settle(cfg, mids, len(first), 60) == len(first)
            assert h.offsets_backwards(cfg.metrics_port) == {}
            if not worker_up:
                h.stop_worker(worker)
            # The broker dies and comes back empty on the same address; the topic is created again.
            broker = recreate_broker(broker, _topics(cfg))
            asyncio.run(h.produce(broker.url, cfg.events_topic, h.keyed(second)))
            if not worker_up:
                worker = h.start_worker(cfg, worker_log)
            assert _settle(cfg, mids, total, 90) == total, worker_log.read_text()[-3000:]
            alarms = h.offsets_backwards(cfg.metrics_port)
            assert alarms.get(reason, 0) >= 1, alarms
        finally:
            h.stop_worker(worker)
        assert "offsets went backwards on partition" in worker_log.read_text()

        # A restarted worker on the new topic resumes at its marks: same incarnation, nothing twice.
        third = h.synthetic_events(200, N_MEMBERS, seed=7, prefix="c", now_ts=True)
        asyncio.run(h.produce(broker.url, cfg.events_topic, h.keyed(third)))
        with h.worker_process(cfg, worker_log):
            total += len(third)
            assert _settle(cfg, mids, total, 60) == total
            assert h.offsets_backwards(cfg.metrics_port) == {}
        # Offer statistics use the same incarnation check: every offer event of the three runs counted.
        stats = asyncio.run(h.read_offer_stats(cfg.redis_url, cfg.prefix))
        want = h.offline_offer_stats(first + second + third)
        assert {k: v.impressions for k, v in stats.items()} == {k: v.impressions for k, v in want.items()}
    finally:
        broker.stop()
