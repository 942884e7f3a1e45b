"""Parity: what a real worker process writes to Redis equals one offline pass of the shared fold over
the same event log, field for field (member state) and counter for counter (offer statistics).

Real broker, real Redis, real ``benefits worker`` process; nothing mocked.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from harness import stream_driver as h
from tests.stream.conftest import state_diff

pytestmark = pytest.mark.integration


def _check_parity(cfg: h.WorkerConfig, events: list, log: Path, timeout_s: float = 60.0) -> None:
    mids = sorted({e.member_id for e in events})
    asyncio.run(h.produce(cfg.bootstrap, cfg.events_topic, h.keyed(events)))
    with h.worker_process(cfg, log) as proc:
        seen = asyncio.run(h.wait_folded(cfg.redis_url, cfg.prefix, mids, len(events), timeout_s))
        assert proc.poll() is None, log.read_text()[-3000:]
        assert seen == len(events), f"worker folded {seen} of {len(events)}\n{log.read_text()[-3000:]}"
        metrics = h.scrape_metrics(cfg.metrics_port)
    folded = sum(v for (name, _), v in metrics.items() if name == "benefits_stream_events_total")
    assert folded == len(events)
    assert metrics[("benefits_stream_freshness_seconds_count", ())] == len(events)
    assert metrics[("benefits_stream_batch_size_sum", ())] == len(events)
    lags = {
        dict(lb)["partition"]: v
        for (name, lb), v in metrics.items()
        if name == "benefits_stream_consumer_lag"
    }
    assert lags == {str(p): 0.0 for p in range(cfg.partitions)}, "drained: no lag on any partition"

    reference = h.offline_fold(events)
    stored = asyncio.run(h.read_members(cfg.redis_url, cfg.prefix, mids))
    assert set(stored) == set(reference)
    bad = [m for m in mids if stored[m].state != reference[m]]
    assert not bad, (
        f"{len(bad)} members differ, e.g. {bad[0]}: {state_diff(stored[bad[0]].state, reference[bad[0]])}"
    )
    assert asyncio.run(h.read_offer_stats(cfg.redis_url, cfg.prefix)) == h.offline_offer_stats(events)


def test_worker_state_equals_offline_fold(worker_cfg: h.WorkerConfig, worker_log: Path) -> None:
    _check_parity(worker_cfg, h.synthetic_events(20_000, 800, seed=11), worker_log)


@pytest.mark.slow
def test_faust_engine_state_equals_offline_fold(worker_cfg: h.WorkerConfig, worker_log: Path) -> None:
    worker_cfg.engine = "faust"
    _check_parity(worker_cfg, h.synthetic_events(5_000, 300, seed=12), worker_log)
