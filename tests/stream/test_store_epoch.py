"""The worker and the store epoch (stream/epoch.py): a real Redis restarted without its data under a
running ``benefits worker`` is noticed (metric, error log, the shared ``lost`` record), folding is held
(a worker started meanwhile holds too), and after ``benefits replay`` rebuilt the store the worker
resumes by itself: every event of the log folded exactly once, field for field."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
import redis as syncredis

from harness import stream_driver as h
from harness.embedded import restart_redis_empty, start_redis
from infra.settings import Settings
from stream import replay

pytestmark = [pytest.mark.integration]

N_MEMBERS = 40


def _lost_record(cfg: h.WorkerConfig) -> bytes | None:
    client = syncredis.Redis.from_url(cfg.redis_url)
    try:
        raw: bytes | None = client.get(f"{cfg.prefix}:{{epoch}}:lost")  # infra/epoch_store.py
        return raw
    finally:
        client.close()


def test_worker_holds_folding_after_redis_lost_its_data_until_replay(
    worker_cfg: h.WorkerConfig, worker_log: Path
) -> None:
    redis = start_redis()
    cfg = worker_cfg
    cfg.redis_url = redis.url
    first = h.synthetic_events(600, N_MEMBERS, seed=11, prefix="a", now_ts=True)
    second = h.synthetic_events(300, N_MEMBERS, seed=12, prefix="b", now_ts=True)
    third = h.synthetic_events(200, N_MEMBERS, seed=13, prefix="c", now_ts=True)
    mids = sorted({e.member_id for e in first + second + third})
    lost = lambda: h.worker_state_lost(cfg.metrics_port)  # noqa: E731
    worker = None
    try:
        asyncio.run(h.produce(cfg.bootstrap, cfg.events_topic, h.keyed(first)))
        worker = h.start_worker(cfg, worker_log)
        assert h.settle(cfg.redis_url, cfg.prefix, mids, len(first), 60) == len(first)
        assert lost() == 0.0

        redis = restart_redis_empty(redis)
        assert h.wait_metric(lost, 1.0, 20) == 1.0, worker_log.read_text()[-2000:]
        assert "Redis lost its data. Folding is held" in worker_log.read_text()
        assert _lost_record(cfg) is not None  # shared: the APIs report state_lost from it too

        # Held: new events wait in the topic; a worker started now reads the record and holds too.
        asyncio.run(h.produce(cfg.bootstrap, cfg.events_topic, h.keyed(second)))
        h.stop_worker(worker)
        worker = h.start_worker(cfg, worker_log)
        assert h.wait_metric(lost, 1.0, 30) == 1.0
        time.sleep(3.0)  # several checks and poll turns: anything it folded would be in Redis now
        assert asyncio.run(h.events_folded(cfg.redis_url, cfg.prefix, mids)) == 0

        # The documented recovery: `benefits replay` (its function) rebuilds from the topic and clears it.
        settings = Settings(
            environment="test",
            redis_url=cfg.redis_url,
            kafka_bootstrap=cfg.bootstrap,
            events_topic=cfg.events_topic,
            redis_prefix=cfg.prefix,
        )
        summary = asyncio.run(replay.run(settings, []))
        assert summary["events_folded"] == len(first) + len(second), summary
        assert summary["lost_record_cleared"] is True
        assert h.wait_metric(lost, 0.0, 20) == 0.0
        assert "folding resumes" in worker_log.read_text()

        asyncio.run(h.produce(cfg.bootstrap, cfg.events_topic, h.keyed(third)))
        everything = first + second + third
        assert h.settle(cfg.redis_url, cfg.prefix, mids, len(everything), 60) == len(everything)
        stored = asyncio.run(h.read_members(cfg.redis_url, cfg.prefix, mids))
        reference = h.offline_fold(everything)
        assert {m: s.state for m, s in stored.items()} == reference
        assert asyncio.run(h.read_offer_stats(cfg.redis_url, cfg.prefix)) == h.offline_offer_stats(everything)
    finally:
        if worker is not None:
            h.stop_worker(worker)
        redis.stop()
