"""Scale-out: two worker processes in one consumer group share the topic's partitions, and the final
state is exactly the offline fold (each member is folded by exactly one of them)."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path

import pytest

from benefits.embedded import free_port
from features import stream_harness as h
from tests.stream.conftest import state_diff

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _folded_by(port: int) -> float:
    m = h.scrape_metrics(port)
    return sum(v for (name, _), v in m.items() if name == "benefits_stream_events_total")


def test_two_workers_share_partitions(worker_cfg: h.WorkerConfig, tmp_path: Path) -> None:
    a = worker_cfg
    b = dataclasses.replace(worker_cfg, metrics_port=free_port())
    events = h.synthetic_events(30_000, 1200, seed=41)
    mids = sorted({e.member_id for e in events})
    with h.worker_process(a, tmp_path / "a.log"), h.worker_process(b, tmp_path / "b.log"):
        # Let both join before the load arrives, so the group settles on a split rather than one worker
        # draining everything while the other is still joining.
        deadline = time.monotonic() + 40
        logs = [tmp_path / "a.log", tmp_path / "b.log"]
        while time.monotonic() < deadline and not all(
            p.exists() and "partitions assigned: [" in p.read_text() and _owns_some(p) for p in logs
        ):
            time.sleep(0.2)
        asyncio.run(h.produce(a.bootstrap, a.events_topic, h.keyed(events), rate_per_s=15_000))
        seen = asyncio.run(h.wait_folded(a.redis_url, a.prefix, mids, len(events), 60))
        by_a, by_b = _folded_by(a.metrics_port), _folded_by(b.metrics_port)

    assert seen == len(events)
    assert by_a > 0 and by_b > 0, f"one worker did everything: a={by_a} b={by_b}"
    assert by_a + by_b == len(events)
    reference = h.offline_fold(events)
    stored = asyncio.run(h.read_members(a.redis_url, a.prefix, mids))
    bad = [m for m in mids if stored[m].state != reference[m]]
    assert not bad, (
        f"{len(bad)} members differ, e.g. {bad[0]}: {state_diff(stored[bad[0]].state, reference[bad[0]])}"
    )
    assert asyncio.run(h.read_offer_stats(a.redis_url, a.prefix)) == h.offline_offer_stats(events)


def _owns_some(log: Path) -> bool:
    """True when the worker's latest assignment is non-empty."""
    lines = [ln for ln in log.read_text().splitlines() if "partitions assigned: [" in ln]
    return bool(lines) and "partitions assigned: []" not in lines[-1]
