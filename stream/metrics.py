"""The worker's Prometheus metrics, in their own registry, and a cheap way to observe many values."""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter as TallyCounter

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

#: Freshness buckets (seconds) fine enough below 100 ms for p50/p99 read-outs from the histogram.
FRESHNESS_BUCKETS = (
    0.001,
    0.002,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.025,
    0.03,
    0.04,
    0.05,
    0.06,
    0.075,
    0.1,
    0.125,
    0.15,
    0.2,
    0.3,
    0.5,
    0.75,
    1.0,
    2.0,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    3600.0,
)
BATCH_SIZE_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2000, 5000, 10000, 50000)


class StreamMetrics:
    """Prometheus metrics of one worker, in their own registry (several workers may share a process)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.events = Counter(
            "benefits_stream_events_total", "Events folded into member state, by type.", ["type"], registry=r
        )
        self.dead_letters = Counter(
            "benefits_stream_dead_letters_total",
            "Events sent to the dead-letter topic.",
            ["reason"],
            registry=r,
        )
        self.duplicates = Counter(
            "benefits_stream_duplicates_skipped_total",
            "Redelivered events skipped because the stored watermark already covers them.",
            registry=r,
        )
        self.offsets_backwards = Counter(
            "benefits_stream_offsets_backwards_total",
            "Partitions whose offsets went backwards (topic recreated or truncated): an alarm; the "
            "worker started a new incarnation and folds the new events.",
            ["partition", "reason"],
            registry=r,
        )
        self.repeated_ids = Counter(
            "benefits_stream_repeated_event_ids_total",
            "Events skipped because the member already had an event with that id (producer retries).",
            registry=r,
        )
        self.redis_errors = Counter(
            "benefits_stream_redis_errors_total", "Failed Redis round trips (retried).", registry=r
        )
        self.erasures = Counter(
            "benefits_stream_erasures_total", "Members erased by a tombstone (state deleted).", registry=r
        )
        self.stale_layout = Counter(
            "benefits_stream_stale_layout_total",
            "Stored blobs of another layout version, treated as missing (folded from a fresh state).",
            registry=r,
        )
        self.state_lost = Gauge(
            "benefits_stream_state_lost",
            "1 while the worker holds folding because Redis lost its data (the store epoch marker "
            "vanished or changed); cleared when `benefits replay` has rebuilt the store.",
            registry=r,
        )
        self.lag = Gauge(
            "benefits_stream_consumer_lag",
            "Messages behind the partition's high watermark after the last batch.",
            ["partition"],
            registry=r,
        )
        self.freshness = Histogram(
            "benefits_stream_freshness_seconds",
            "Event time to the member state being written to Redis.",
            buckets=FRESHNESS_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "benefits_stream_batch_size", "Messages per batch.", buckets=BATCH_SIZE_BUCKETS, registry=r
        )
        self.batch_seconds = Histogram(
            "benefits_stream_batch_seconds",
            "Wall time to decode, read, fold and write one batch.",
            buckets=FRESHNESS_BUCKETS,
            registry=r,
        )


def observe_many(hist: Histogram, values: list[float]) -> None:
    """Observe many values at once: one increment per bucket instead of one locked call per value.

    ``Histogram.observe`` costs ~4 us, which is 10% of the budget at 20k events/s. This uses the
    client's (long-stable) internals when present and falls back to ``observe`` otherwise.
    Negative values (a producer clock ahead of ours) are clamped to 0.
    """
    bounds = getattr(hist, "_upper_bounds", None)
    buckets = getattr(hist, "_buckets", None)
    total = getattr(hist, "_sum", None)
    if not values:
        return
    if bounds is None or buckets is None or total is None:
        for v in values:
            hist.observe(max(0.0, v))
        return
    tally = TallyCounter(bisect_left(bounds, v) for v in values)
    for i, n in tally.items():
        buckets[min(i, len(buckets) - 1)].inc(n)
    total.inc(sum(v for v in values if v > 0.0))
