"""Prometheus scrapes of running processes and the pure maths on them: flattened samples, sums over
replicas, deltas between two scrapes, one histogram's buckets, and per-stage percentiles of the API's
``benefits_recommend_stage_seconds`` histograms (via :func:`harness.quantiles.histogram_quantile`).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Sequence
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from service.quantiles import histogram_quantile

STAGE_METRIC = "benefits_recommend_stage_seconds"
STAGES = ("state_read", "features", "model", "rerank", "total")
SCRAPE_INTERVAL_S = 0.5

#: One scrape: sample key -> value, where a key is ``name{label="v",...}`` with labels sorted.
Scrape = dict[str, float]


def sample_key(name: str, labels: dict[str, str]) -> str:
    if not labels:
        return name
    return name + "{" + ",".join(f'{k}="{labels[k]}"' for k in sorted(labels)) + "}"


def parse_metrics(text: str) -> Scrape:
    """Every sample of a Prometheus text exposition, flattened to ``{key: value}``."""
    out: Scrape = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[sample_key(s.name, dict(s.labels))] = float(s.value)
    return out


def add_scrapes(scrapes: Sequence[Scrape]) -> Scrape:
    """Sum of several processes' scrapes (counters and histogram buckets add up across replicas)."""
    total: Scrape = {}
    for s in scrapes:
        for k, v in s.items():
            total[k] = total.get(k, 0.0) + v
    return total


def delta(before: Scrape, after: Scrape) -> Scrape:
    """``after - before`` per key (a key missing before counts from zero)."""
    return {k: v - before.get(k, 0.0) for k, v in after.items()}


def buckets(scrape: Scrape, metric: str, **labels: str) -> list[tuple[float, float]]:
    """Cumulative ``(upper bound in the metric's unit, count)`` of one histogram series, sorted, +Inf last."""
    prefix = metric + "_bucket{"
    out: list[tuple[float, float]] = []
    for key, value in scrape.items():
        if not key.startswith(prefix):
            continue
        parts = dict(p.split("=", 1) for p in key[len(prefix) : -1].split(","))
        parts = {k: v.strip('"') for k, v in parts.items()}
        if any(parts.get(k) != v for k, v in labels.items()):
            continue
        out.append((float(parts["le"]), value))
    out.sort()
    return out


def server_stages(d: Scrape) -> dict[str, dict[str, float | int | None]]:
    """Per stage: count, p50/p90/p99 and mean in ms from a histogram delta."""
    out: dict[str, dict[str, float | int | None]] = {}
    for stage in STAGES:
        b = buckets(d, STAGE_METRIC, stage=stage)
        count = round(b[-1][1]) if b else 0
        total_s = d.get(sample_key(STAGE_METRIC + "_sum", {"stage": stage}), 0.0)
        row: dict[str, float | int | None] = {"count": count}
        for name, q in (("p50_ms", 0.5), ("p90_ms", 0.9), ("p99_ms", 0.99)):
            v = histogram_quantile(q, b)
            row[name] = None if v is None else round(v * 1e3, 3)
        row["mean_ms"] = round(total_s / count * 1e3, 3) if count else None
        out[stage] = row
    return out


def server_counters(d: Scrape) -> dict[str, float]:
    """Counters worth reading beside latency: degraded answers, deadline misses, refusals, feedback."""
    keep = (
        "benefits_recommend_degraded_total",
        "benefits_recommend_deadline_exceeded_total",
        "benefits_http_rejected_total",
        "benefits_recommend_total",
        "benefits_feedback_total",
    )
    return {k: round(v, 3) for k, v in sorted(d.items()) if k.startswith(keep) and v}


def server_view(d: Scrape) -> dict[str, Any]:
    """Stages, counters and the share of degraded (non-personalised fallback) answers of a delta.

    A degraded answer is a 200, not an error, but it is not personalised either (Redis read over the
    deadline, or the breaker open after such reads): the share is reported beside latency.
    """
    stages = server_stages(d)
    answers = stages["total"]["count"] or 0
    degraded = sum(v for k, v in d.items() if k.startswith("benefits_recommend_degraded_total"))
    return {
        "stages": stages,
        "degraded_answers": int(degraded),
        "degraded_share": round(degraded / answers, 4) if answers else None,
        "counters": server_counters(d),
    }


def read_metrics(base: str, timeout_s: float = 5.0) -> Scrape:
    """One scrape of ``{base}/metrics``."""
    r = httpx.get(f"{base}/metrics", timeout=timeout_s)
    r.raise_for_status()
    return parse_metrics(r.text)


class Scraper:
    """Scrapes ``/metrics`` of every target every ``interval_s`` in a thread; sums over targets."""

    def __init__(self, targets: Sequence[str], interval_s: float = SCRAPE_INTERVAL_S) -> None:
        self.targets = list(targets)
        self.interval_s = interval_s
        self.series: list[tuple[float, Scrape]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client = httpx.Client(timeout=2.0)

    def scrape(self) -> Scrape:
        texts = []
        for t in self.targets:
            r = self._client.get(f"{t}/metrics")
            r.raise_for_status()
            texts.append(parse_metrics(r.text))
        return add_scrapes(texts)

    def _loop(self) -> None:
        while not self._stop.is_set():
            t = time.time()
            with contextlib.suppress(httpx.HTTPError):
                self.series.append((t, self.scrape()))
            self._stop.wait(max(0.0, self.interval_s - (time.time() - t)))

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="metrics-scraper", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        self._client.close()

    def at(self, wall: float) -> tuple[float, Scrape] | None:
        """The scrape nearest to wall-clock time ``wall``."""
        if not self.series:
            return None
        return min(self.series, key=lambda ts: abs(ts[0] - wall))
