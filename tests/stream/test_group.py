"""Scale-out: two worker processes in one consumer group share the topic's partitions, and the final
state is exactly the offline fold (each event folded once, by whichever worker owned its partition).

The second worker joins while the first is busy, so the group rebalances under load: partitions move
from the first worker (which commits what it wrote when they are revoked) to the second (which resumes
from there, skipping anything already written).
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from pathlib import Path

import pytest

from harness import stream_driver as h
from harness.embedded import free_port
from tests.stream.conftest import state_diff

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _folded_by(port: int) -> float:
    m = h.scrape_metrics(port)
    return sum(v for (name, _), v in m.items() if name == "benefits_stream_events_total")


def _latest_assignment(log: Path) -> str:
    lines = (
        [ln for ln in log.read_text().splitlines() if "partitions assigned: [" in ln] if log.exists() else []
    )
    return lines[-1] if lines else ""


def test_two_workers_share_partitions(worker_cfg: h.WorkerConfig, tmp_path: Path) -> None:
    a = worker_cfg
    b = dataclasses.replace(worker_cfg, metrics_port=free_port())
    a_log, b_log = tmp_path / "a.log", tmp_path / "b.log"
    events = h.synthetic_events(40_000, 1200, seed=41)
    mids = sorted({e.member_id for e in events})
    producer = threading.Thread(
        target=lambda: asyncio.run(h.produce(a.bootstrap, a.events_topic, h.keyed(events), rate_per_s=4000)),
        daemon=True,
    )
    with h.worker_process(a, a_log):
        producer.start()
        assert asyncio.run(h.wait_folded(a.redis_url, a.prefix, mids, 1, 60)) > 0, a_log.read_text()[-2000:]
        with h.worker_process(b, b_log):
            deadline = time.monotonic() + 40
            while time.monotonic() < deadline and not (
                "[]" not in _latest_assignment(b_log) and _latest_assignment(b_log)
            ):
                time.sleep(0.2)
            producer.join(timeout=60)
            seen = asyncio.run(h.wait_folded(a.redis_url, a.prefix, mids, len(events), 60))
            by_a, by_b = _folded_by(a.metrics_port), _folded_by(b.metrics_port)

    assert seen == len(events)
    assert by_a > 0 and by_b > 0, f"one worker did everything: a={by_a} b={by_b}"
    # Nothing folded twice between them (a partition's events went to exactly one worker at a time).
    assert by_a + by_b == len(events)
    reference = h.offline_fold(events)
    stored = asyncio.run(h.read_members(a.redis_url, a.prefix, mids))
    bad = [m for m in mids if stored[m].state != reference[m]]
    assert not bad, (
        f"{len(bad)} members differ, e.g. {bad[0]}: {state_diff(stored[bad[0]].state, reference[bad[0]])}"
    )
    assert asyncio.run(h.read_offer_stats(a.redis_url, a.prefix)) == h.offline_offer_stats(events)


def test_a_worker_leaving_hands_its_partitions_over(worker_cfg: h.WorkerConfig, tmp_path: Path) -> None:
    """Scale-in: one of two workers is stopped (SIGTERM, as a rolling deploy does) mid-stream; the other
    takes its partitions over and the final state is still exactly the offline fold."""
    a = worker_cfg
    b = dataclasses.replace(worker_cfg, metrics_port=free_port())
    a_log, b_log = tmp_path / "a.log", tmp_path / "b.log"
    events = h.synthetic_events(30_000, 1000, seed=43)
    mids = sorted({e.member_id for e in events})
    producer = threading.Thread(
        target=lambda: asyncio.run(h.produce(a.bootstrap, a.events_topic, h.keyed(events), rate_per_s=4000)),
        daemon=True,
    )
    with h.worker_process(a, a_log):
        with h.worker_process(b, b_log):
            producer.start()
            deadline = time.monotonic() + 40
            while time.monotonic() < deadline and not (
                _safe(a.metrics_port) > 0 and _safe(b.metrics_port) > 0
            ):
                time.sleep(0.1)
            assert _safe(b.metrics_port) > 0, b_log.read_text()[-2000:]
        # b has left the group (graceful stop) while events are still arriving.
        producer.join(timeout=60)
        seen = asyncio.run(h.wait_folded(a.redis_url, a.prefix, mids, len(events), 60))

    assert seen == len(events)
    reference = h.offline_fold(events)
    stored = asyncio.run(h.read_members(a.redis_url, a.prefix, mids))
    bad = [m for m in mids if stored[m].state != reference[m]]
    assert not bad, (
        f"{len(bad)} members differ, e.g. {bad[0]}: {state_diff(stored[bad[0]].state, reference[bad[0]])}"
    )
    assert asyncio.run(h.read_offer_stats(a.redis_url, a.prefix)) == h.offline_offer_stats(events)


def _safe(port: int) -> float:
    try:
        return _folded_by(port)
    except OSError:
        return 0.0
