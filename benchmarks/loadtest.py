"""``benefits loadtest``: storefront load against the recommend API, judged against a latency budget.

One run:

1. **Stack** (only when no target URL is given): an embedded Redis and broker
   (:func:`harness.stack.infrastructure`, never a shared Redis), a catalog of ``--offers`` demo offers
   written to a JSON seed file, a small model (simulate a few hundred members, train, promote) in a
   temporary registry, member states for the population ``lt-0 .. lt-{members-1}`` folded with the shared
   core (:func:`features.state.apply`) and written straight into Redis with
   :meth:`infra.redis_layout.MemberStore.put_members`, and ``--workers`` API processes
   (``benefits serve``, one uvicorn worker each, on their own ports; Locust spreads its users over them
   round-robin, there is no load balancer process in between). A short warm-up follows.
2. **Load**: ``python -m locust -f benchmarks/locustfile.py --headless`` as a subprocess with the chosen
   shape; it writes an HTML report and CSV stats under ``benchmarks/results/`` (not committed) and every
   request's latency per second to a private timeline file.
3. **Server view**: ``/metrics`` of every API process is scraped before, every half second during, and
   after the run; server-side p50/p99 per stage come from deltas of the
   ``benefits_recommend_stage_seconds`` histograms (summed over processes) over the same windows as the
   client-side figures (whole run, and per phase: flash sale before / spike / after). The server's
   histogram times the recommend handler only: time spent queued in the event loop or in HTTP parsing is
   in the client's figure, not the server's, so a saturated server shows a low server p99 and a high
   client p99.
4. **Budget**: p99 in ms and error rate, judged on the client's figures by default (``--budget-on
   server`` to judge the server's); a run that could not offer 95 % of the intended rate also fails, since
   it proves nothing. Exit code 1 when broken, 2 when the run itself failed.

``--capacity`` steps the offered rate instead (x1.5 until the budget breaks, then bisects) for each
configuration of API processes x catalog size and reports the highest rate within budget.

The summary JSON is the last line of stdout and is written to ``benchmarks/results/<name>.json``.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import httpx
import numpy as np
import orjson
from prometheus_client.parser import text_string_to_metric_families

from benchmarks._common import RESULTS_DIR, machine_info, write_result

log = logging.getLogger(__name__)

LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
STAGE_METRIC = "benefits_recommend_stage_seconds"
STAGES = ("state_read", "features", "model", "rerank", "total")
SCRAPE_INTERVAL_S = 0.5
#: A run that offers less than this share of the intended page views did not test the budget.
MIN_ACHIEVED_SHARE = 0.95
#: The capacity search does not go below this rate.
CAPACITY_FLOOR_RPS = 20.0

# -- histogram deltas and percentiles (pure) ---------------------------------------------------------------

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


def histogram_quantile(q: float, cumulative: Sequence[tuple[float, float]]) -> float | None:
    """The ``q`` quantile of a cumulative histogram, interpolated linearly inside the bucket that holds it
    (Prometheus' ``histogram_quantile``; the first bucket's lower bound is 0). None when it is empty.

    Hazard: the answer is only as fine as the buckets; a quantile in the +Inf bucket is reported as the
    highest finite bound (a lower limit of the truth).
    """
    if not cumulative:
        return None
    total = cumulative[-1][1]
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for upper, count in cumulative:
        if count >= rank:
            if math.isinf(upper):
                return lower
            in_bucket = count - below
            if in_bucket <= 0:
                return upper
            return lower + (upper - lower) * (rank - below) / in_bucket
        lower, below = upper, count
    return lower


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


def client_stats(latencies_ms: Sequence[float], failures: int, seconds: float) -> dict[str, Any]:
    """Client-side percentiles (exact, from every request) and achieved rate over ``seconds``."""
    n = len(latencies_ms)
    out: dict[str, Any] = {
        "requests": n + failures,
        "failures": failures,
        "rps": round((n + failures) / seconds, 1) if seconds > 0 else None,
    }
    if n:
        a = np.asarray(latencies_ms, dtype=np.float64)
        p50, p90, p99, p999 = np.percentile(a, [50, 90, 99, 99.9])
        out |= {
            "p50_ms": round(float(p50), 3),
            "p90_ms": round(float(p90), 3),
            "p99_ms": round(float(p99), 3),
            "p999_ms": round(float(p999), 3),
            "max_ms": round(float(a.max()), 3),
        }
    else:
        out |= {"p50_ms": None, "p90_ms": None, "p99_ms": None, "p999_ms": None, "max_ms": None}
    return out


# -- the run's timeline (written by the locustfile) ---------------------------------------------------------


@dataclass
class Timeline:
    t0_wall: float
    phases: list[dict[str, Any]]
    latencies_ms: dict[str, dict[int, list[float]]]
    failures: dict[str, dict[int, int]]
    errors: dict[str, int]

    @classmethod
    def load(cls, path: Path) -> Timeline:
        raw = orjson.loads(path.read_bytes())
        if raw.get("t0_wall") is None:
            raise RuntimeError("the load generator never started its shape (no requests were sent)")
        return cls(
            t0_wall=float(raw["t0_wall"]),
            phases=raw["phases"],
            latencies_ms={n: {int(s): v for s, v in per.items()} for n, per in raw["latencies_ms"].items()},
            failures={n: {int(s): c for s, c in per.items()} for n, per in raw["failures"].items()},
            errors=raw["errors"],
        )

    @property
    def duration_s(self) -> float:
        return max((p["end_s"] for p in self.phases), default=0.0)

    def offered(self, a: float, b: float) -> float:
        """Page views the shape intended to send in [a, b) (rate integrated over the phases)."""
        total = 0.0
        for p in self.phases:
            lo, hi = max(a, p["start_s"]), min(b, p["end_s"])
            if hi <= lo:
                continue
            span = p["end_s"] - p["start_s"]

            def rate(t: float, p: dict[str, Any] = p, span: float = span) -> float:
                f = (t - p["start_s"]) / span if span > 0 else 1.0
                return float(p["rps_from"] + f * (p["rps_to"] - p["rps_from"]))

            total += 0.5 * (rate(lo) + rate(hi)) * (hi - lo)
        return total

    def window(self, name: str, a: float, b: float) -> tuple[list[float], int]:
        """Latencies and failures of request ``name`` in seconds whose centre lies in [a, b)."""
        lat: list[float] = []
        for s, v in self.latencies_ms.get(name, {}).items():
            if a <= s + 0.5 < b:
                lat.extend(v)
        fails = sum(c for s, c in self.failures.get(name, {}).items() if a <= s + 0.5 < b)
        return lat, fails


# -- scraping /metrics while the load runs ------------------------------------------------------------------


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


# -- options ----------------------------------------------------------------------------------------------


@dataclass
class Options:
    """Everything ``benefits loadtest`` can be told (see ``benefits loadtest --help``)."""

    targets: list[str] = field(default_factory=list)
    api_key: str | None = None
    shape: Literal["steady", "ramp", "flash", "soak"] = "steady"
    rps: float = 500.0
    duration_s: float = 60.0
    spike_factor: float = 10.0
    spike_ramp_s: float = 2.0
    user_rps: float = 10.0
    arrivals: Literal["jittered", "poisson", "uniform"] = "jittered"
    offers: int = 200
    members: int = 10_000
    unknown_share: float = 0.1
    feedback_share: float = 0.1
    workers: int = 1
    p99_ms: float = 10.0
    spike_p99_ms: float = 25.0
    recover_s: float = 5.0
    max_error_rate: float = 0.0
    #: Judged only when set; the share is always reported.
    max_degraded_rate: float | None = None
    budget_on: Literal["client", "server"] = "client"
    #: With budget_on="server": the clients' p99 above this means the server is saturated.
    client_guard_ms: float = 50.0
    name: str | None = None
    registry: Path | None = None
    train_members: int = 300
    train_days: float = 3.0
    warmup_requests: int = 300
    capacity: bool = False
    capacity_offers: list[int] = field(default_factory=lambda: [50, 200, 500])
    capacity_workers: list[int] = field(default_factory=lambda: [1, 2])
    capacity_step_s: float = 15.0
    capacity_start_rps: float = 100.0
    capacity_max_rps: float = 4000.0
    seed: int = 1
    results_dir: Path = RESULTS_DIR
    keep_files: bool = False


# -- budget -----------------------------------------------------------------------------------------------


def _check(name: str, value: float | None, limit: float, ok_if: str = "<=") -> dict[str, Any]:
    ok = value is not None and (value <= limit if ok_if == "<=" else value >= limit)
    return {"check": name, "value": value, "limit": limit, "op": ok_if, "ok": ok}


def judge(summary: dict[str, Any], opts: Options) -> dict[str, Any]:
    """Budget checks of one run's summary: p99 (per phase for a flash sale), error rate, offered load."""
    view = opts.budget_on

    def p99(block: dict[str, Any]) -> float | None:
        if view == "client":
            v = block["client"]["recommend"]["p99_ms"]
        else:
            v = block["server"]["stages"]["total"]["p99_ms"] if block.get("server") else None
        return None if v is None else float(v)

    checks = []
    if summary["shape"] == "flash":
        ph = summary["phases"]
        checks.append(_check("p99_ms before spike", p99(ph["before"]), opts.p99_ms))
        checks.append(_check("p99_ms during spike", p99(ph["spike"]), opts.spike_p99_ms))
        checks.append(
            _check(f"p99_ms from {opts.recover_s:g}s after the spike", p99(ph["after_settled"]), opts.p99_ms)
        )
    else:
        checks.append(_check("p99_ms", p99(summary["overall"]), opts.p99_ms))
    checks.append(_check("error_rate", summary["overall"]["error_rate"], opts.max_error_rate))
    if view == "server":
        # The server's histogram cannot see requests queued in its event loop: a saturated server keeps a
        # low server p99 while its callers wait. The clients' p99 (Locust overhead included) guards that.
        client = summary["overall"]["client"]["recommend"]["p99_ms"]
        checks.append(_check("client p99_ms (saturation guard)", client, opts.client_guard_ms))
    if opts.max_degraded_rate is not None:
        share = summary["overall"].get("server", {}).get("degraded_share")
        checks.append(_check("degraded_share", share, opts.max_degraded_rate))
    checks.append(
        _check(
            "achieved share of offered page views",
            summary["overall"]["achieved_share"],
            MIN_ACHIEVED_SHARE,
            ">=",
        )
    )
    return {
        "on": view,
        "p99_ms": opts.p99_ms,
        "spike_p99_ms": opts.spike_p99_ms if summary["shape"] == "flash" else None,
        "max_error_rate": opts.max_error_rate,
        "max_degraded_rate": opts.max_degraded_rate,
        "client_guard_ms": opts.client_guard_ms if view == "server" else None,
        "checks": checks,
        "ok": all(c["ok"] for c in checks),
    }


# -- summarising one run ----------------------------------------------------------------------------------


def _block(tl: Timeline, scraper: Scraper | None, a: float, b: float) -> dict[str, Any]:
    """Client and server figures over [a, b) seconds of the shape."""
    secs = b - a
    rec, rec_fail = tl.window("recommend", a, b)
    fb, fb_fail = tl.window("feedback", a, b)
    out: dict[str, Any] = {
        "window_s": [round(a, 2), round(b, 2)],
        "offered_rps": round(tl.offered(a, b) / secs, 1) if secs > 0 else None,
        "client": {
            "recommend": client_stats(rec, rec_fail, secs),
            "feedback": client_stats(fb, fb_fail, secs),
        },
    }
    if scraper is not None:
        lo, hi = scraper.at(tl.t0_wall + a), scraper.at(tl.t0_wall + b)
        if lo is not None and hi is not None and hi[0] > lo[0]:
            d = delta(lo[1], hi[1])
            out["server"] = {
                "scrape_window_s": [round(lo[0] - tl.t0_wall, 2), round(hi[0] - tl.t0_wall, 2)],
                **server_view(d),
            }
    return out


def recovery_seconds(tl: Timeline, spike_end: float, end: float, limit_ms: float) -> float | None:
    """Seconds after ``spike_end`` from which every following second's client p99 is within ``limit_ms``."""
    start = math.floor(spike_end)
    per_second = []
    for s in range(start, math.ceil(end)):
        lat = tl.latencies_ms.get("recommend", {}).get(s, [])
        fails = tl.failures.get("recommend", {}).get(s, 0)
        bad = fails > 0 or (bool(lat) and float(np.percentile(lat, 99)) > limit_ms)
        per_second.append((s, bad))
    last_bad = max((s for s, bad in per_second if bad), default=None)
    if last_bad is None:
        return 0.0
    if last_bad >= math.ceil(end) - 1:
        return None  # never recovered within the run
    return round(last_bad + 1 - spike_end, 2)


def summarise(
    tl: Timeline,
    scraper: Scraper | None,
    before: Scrape | None,
    after: Scrape | None,
    opts: Options,
) -> dict[str, Any]:
    dur = tl.duration_s
    overall = _block(tl, None, 0.0, dur + 1.0)  # +1: requests still in flight at the last tick
    overall["offered_rps"] = round(tl.offered(0.0, dur) / dur, 1)
    rec = overall["client"]["recommend"]
    fb = overall["client"]["feedback"]
    requests = rec["requests"] + fb["requests"]
    overall["error_rate"] = round((rec["failures"] + fb["failures"]) / requests, 6) if requests else 1.0
    overall["achieved_share"] = round(rec["requests"] / tl.offered(0.0, dur), 3) if dur else 0.0
    overall["client"]["recommend"]["rps"] = round(rec["requests"] / dur, 1)
    overall["client"]["feedback"]["rps"] = round(fb["requests"] / dur, 1)
    if before is not None and after is not None:
        d = delta(before, after)
        overall["server"] = server_view(d)
    phases: dict[str, Any] = {}
    merged: dict[str, tuple[float, float]] = {}
    for p in tl.phases:
        # The flash sale's short ramp to the peak counts as part of the spike.
        name = "spike" if p["name"] == "spike_ramp" else p["name"]
        a, b = merged.get(name, (p["start_s"], p["end_s"]))
        merged[name] = (min(a, p["start_s"]), max(b, p["end_s"]))
    for name, (a, b) in merged.items():
        phases[name] = _block(tl, scraper, a, b)
    summary: dict[str, Any] = {"shape": opts.shape, "duration_s": dur, "overall": overall, "phases": phases}
    if opts.shape == "flash":
        spike_end = merged["spike"][1]
        phases["after_settled"] = _block(tl, scraper, spike_end + opts.recover_s, dur)
        summary["recovery_s"] = {
            "client_p99_within_budget_after_s": recovery_seconds(tl, spike_end, dur, opts.p99_ms),
            "limit_s": opts.recover_s,
        }
    summary["errors"] = tl.errors
    return summary


# -- the stack --------------------------------------------------------------------------------------------


@dataclass
class Stack:
    """What :func:`started_stack` built; ``procs`` are the API processes of the current configuration."""

    settings: Any
    workdir: Path
    model_version: str
    model_trees: int | None
    member_states: list[Any]
    procs: list[Any] = field(default_factory=list)

    def stop_apis(self) -> None:
        for p in self.procs:
            p.stop()
        self.procs.clear()


def _train(workdir: Path, opts: Options) -> tuple[Path, str, int | None]:
    from infra.registry import Registry
    from training.pipeline import run as train_run
    from training.simulate import simulate_to_dir

    if opts.registry is not None:
        reg = Registry(opts.registry)
        version = reg.promoted()
        if version is None:
            raise RuntimeError(f"no promoted model in {opts.registry}")
        return opts.registry, version, reg.metadata(version).get("best_iteration")
    sim = workdir / "sim"
    registry_dir = workdir / "registry"
    simulate_to_dir(
        sim, n_members=opts.train_members, days=opts.train_days, n_offers=200, seed=1, progress=False
    )
    out = train_run(registry_dir, sim, promote=False, progress=False)
    # A load test needs a model to serve, not a good one: promote whatever the small run produced.
    Registry(registry_dir).promote(out.version)
    return registry_dir, out.version, out.metadata.get("best_iteration")


def _member_states(n: int, seed: int) -> list[Any]:
    from benchmarks.ranking import simulate_member

    rng = np.random.default_rng(seed)
    now = time.time()
    return [simulate_member(f"lt-{i}", now, rng) for i in range(n)]


async def _write_members(settings: Any, states: list[Any]) -> None:
    from infra.redis_client import connect
    from infra.redis_layout import MemberStore, StoredMember

    client = connect(settings.redis_url, cluster=False, timeout_ms=2000)
    try:
        store = MemberStore(client, settings.layout)
        for i in range(0, len(states), 500):
            await store.put_members(StoredMember(state=s) for s in states[i : i + 500])
    finally:
        await client.aclose()


def _write_catalog(path: Path, n: int) -> None:
    from features.demo_catalog import demo_catalog

    now = time.time()
    offers = demo_catalog(start_ts=float(int(now // 86400) * 86400 - 86400), n_offers=n)
    path.write_bytes(orjson.dumps([o.model_dump(mode="json") for o in offers]))


@contextlib.contextmanager
def started_stack(base_settings: Any, opts: Options, workdir: Path) -> Iterator[Stack]:
    """Embedded Redis + broker, a trained and promoted model, the member population in Redis."""
    from harness import stack as st
    from harness.embedded import create_topics

    # Always private infrastructure: a load test must never write into a Redis it did not start.
    settings = base_settings.model_copy(
        update={"redis_url": None, "kafka_bootstrap": None, "redis_cluster": False}
    )
    with st.infrastructure(settings) as (settings, _started):
        assert settings.kafka_bootstrap is not None
        asyncio.run(
            create_topics(
                settings.kafka_bootstrap,
                {settings.events_topic: settings.events_partitions, settings.dead_letter_topic: 1},
            )
        )
        t = time.perf_counter()
        registry_dir, version, trees = _train(workdir, opts)
        log.info("model %s (%s trees) ready in %.1fs", version, trees, time.perf_counter() - t)
        t = time.perf_counter()
        states = _member_states(opts.members, opts.seed)
        log.info("%d member states folded in %.1fs", len(states), time.perf_counter() - t)
        settings = settings.model_copy(update={"registry_dir": registry_dir})
        stack = Stack(settings, workdir, version, trees, states)
        try:
            yield stack
        finally:
            stack.stop_apis()


def start_apis(stack: Stack, offers: int, workers: int) -> list[str]:
    """(Re)start ``workers`` API processes serving a catalog of ``offers``; return their base URLs."""
    from harness import stack as st

    stack.stop_apis()
    seed = stack.workdir / f"catalog-{offers}.json"
    _write_catalog(seed, offers)
    # A prefix per catalog size: the catalog is seeded only into an empty store.
    settings = stack.settings.model_copy(
        update={"redis_prefix": f"lt{offers}", "catalog_seed_path": seed, "log_level": "INFO"}
    )
    asyncio.run(_write_members(settings, stack.member_states))
    targets = []
    for i in range(workers):
        api = st.api_settings(settings)
        proc = st.start_api(api, stack.workdir / "logs", name=f"api-{offers}-{i}")
        stack.procs.append(proc)
        base = f"http://127.0.0.1:{api.port}"
        ready = st.wait_ready(base, proc)
        if ready.get("catalog_offers") != offers:
            raise RuntimeError(f"API serves {ready.get('catalog_offers')} offers, expected {offers}")
        targets.append(base)
    return targets


def warm_up(targets: Sequence[str], api_key: str, n: int) -> dict[str, Any]:
    """A few hundred sequential requests per target (first ONNX runs, connection pools, caches).

    Returns their client-side latency (second half only, one request at a time, httpx, no Locust): the
    round trip of an otherwise idle API on this machine, a reference for what Locust adds under load.
    """
    headers = {"X-API-Key": api_key}
    pages = ["home", "category", "product", "cart"]
    times: list[float] = []
    for t in targets:
        with httpx.Client(base_url=t, headers=headers, timeout=5.0) as c:
            for i in range(n):
                page = pages[i % len(pages)]
                ctx: dict[str, Any] = {"page_type": page}
                if page in ("category", "product"):
                    ctx["category"] = "baby"
                t0 = time.perf_counter()
                r = c.post("/v1/recommend", json={"member_id": f"lt-{i}", "context": ctx})
                r.raise_for_status()
                if i >= n // 2:
                    times.append((time.perf_counter() - t0) * 1e3)
    stats = client_stats(times, 0, 1.0)
    return {"requests": len(times), "p50_ms": stats["p50_ms"], "p99_ms": stats["p99_ms"]}


# -- one Locust run ---------------------------------------------------------------------------------------


def _locust_csv(prefix: Path) -> dict[str, Any]:
    """Locust's own numbers (its percentiles are whole milliseconds) from ``<prefix>_stats.csv``."""
    path = Path(f"{prefix}_stats.csv")
    if not path.exists():
        return {}
    out: dict[str, Any] = {}
    with path.open() as f:
        for row in csv.DictReader(f):
            out[row["Name"]] = {
                "requests": int(row["Request Count"]),
                "failures": int(row["Failure Count"]),
                "rps": round(float(row["Requests/s"]), 1),
                "p50_ms": float(row["50%"]) if row["50%"] not in ("", "N/A") else None,
                "p99_ms": float(row["99%"]) if row["99%"] not in ("", "N/A") else None,
                "max_ms": round(float(row["Max Response Time"]), 2),
            }
    return out


def run_locust(
    targets: Sequence[str], opts: Options, api_key: str, name: str, workdir: Path, keep_reports: bool = True
) -> dict[str, Any]:
    """Run Locust headless with ``opts``' shape; return the summary (client, server, budget)."""
    opts.results_dir.mkdir(parents=True, exist_ok=True)
    timeline_path = workdir / f"{name}-timeline.json"
    csv_prefix = (opts.results_dir if keep_reports else workdir) / name
    html = (opts.results_dir if keep_reports else workdir) / f"{name}.html"
    cmd = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--only-summary",
        "--host", targets[0], "--targets", ",".join(targets), "--api-key", api_key,
        "--shape", opts.shape, "--rps", str(opts.rps), "--duration-s", str(opts.duration_s),
        "--spike-factor", str(opts.spike_factor), "--spike-ramp-s", str(opts.spike_ramp_s),
        "--user-rps", str(opts.user_rps), "--arrivals", opts.arrivals, "--members", str(opts.members),
        "--unknown-share", str(opts.unknown_share), "--feedback-share", str(opts.feedback_share),
        "--seed", str(opts.seed), "--timeline-out", str(timeline_path),
        "--csv", str(csv_prefix), "--html", str(html), "--exit-code-on-error", "0", "--loglevel", "WARNING",
    ]  # fmt: skip
    scraper = Scraper(targets)
    before = scraper.scrape()
    load_before = os.getloadavg()
    scraper.start()
    locust_log = workdir / f"{name}-locust.log"
    t = time.time()
    try:
        with locust_log.open("wb") as out:
            rc = subprocess.run(
                cmd, stdout=out, stderr=subprocess.STDOUT, timeout=opts.duration_s + 120, check=False
            ).returncode
    finally:
        scraper.stop()
    wall = time.time() - t
    after = Scraper(targets).scrape()
    if rc != 0 or not timeline_path.exists():
        tail = "\n".join(locust_log.read_text(errors="replace").splitlines()[-30:])
        raise RuntimeError(f"locust exited with {rc}:\n{tail}")
    tl = Timeline.load(timeline_path)
    summary = summarise(tl, scraper, before, after, opts)
    summary["locust_reported"] = _locust_csv(csv_prefix)
    summary["load_average"] = {
        "before": [round(x, 2) for x in load_before],
        "after": [round(x, 2) for x in os.getloadavg()],
    }
    summary["wall_s"] = round(wall, 1)
    if keep_reports:
        summary["reports"] = {"html": _rel(html), "csv_prefix": _rel(csv_prefix)}
    summary["budget"] = judge(summary, opts)
    return summary


def _rel(p: Path) -> str:
    with contextlib.suppress(ValueError):
        return str(p.relative_to(Path.cwd()))
    return str(p)


# -- capacity ---------------------------------------------------------------------------------------------


def find_capacity(
    targets: Sequence[str], opts: Options, api_key: str, label: str, workdir: Path
) -> dict[str, Any]:
    """Highest offered rate whose steady run stays within budget: x1.5 steps (or halving when the first step
    fails), then bisection to within 10 %."""
    steps: list[dict[str, Any]] = []
    step_opts = replace(opts, shape="steady", duration_s=opts.capacity_step_s)

    def attempt(rps: float) -> bool:
        s = run_locust(targets, replace(step_opts, rps=rps), api_key, f"{label}-{int(rps)}", workdir, False)
        o = s["overall"]
        steps.append(
            {
                "offered_rps": rps,
                "achieved_rps": o["client"]["recommend"]["rps"],
                "client_p50_ms": o["client"]["recommend"]["p50_ms"],
                "client_p99_ms": o["client"]["recommend"]["p99_ms"],
                "server_total_p50_ms": o.get("server", {}).get("stages", {}).get("total", {}).get("p50_ms"),
                "server_total_p99_ms": o.get("server", {}).get("stages", {}).get("total", {}).get("p99_ms"),
                "error_rate": o["error_rate"],
                "load_average": s["load_average"],
                "ok": s["budget"]["ok"],
                "overall": o,
            }
        )
        log.info("%s at %.0f rps: %s", label, rps, "ok" if s["budget"]["ok"] else "over budget")
        return bool(s["budget"]["ok"])

    good, bad = 0.0, None
    rps = opts.capacity_start_rps
    if not attempt(rps):
        # Over budget already at the start: halve until a rate passes (or give up below the floor).
        bad = rps
        while rps / 2 >= CAPACITY_FLOOR_RPS:
            rps = round(rps / 2)
            if attempt(rps):
                good = rps
                break
            bad = rps
    else:
        good = rps
        while (rps := round(rps * 1.5)) <= opts.capacity_max_rps:
            if attempt(rps):
                good = rps
            else:
                bad = rps
                break
    while bad is not None and good > 0 and (bad - good) / good > 0.1:
        mid = round((good + bad) / 2)
        if attempt(mid):
            good = mid
        else:
            bad = mid
    best = max((s for s in steps if s["ok"]), key=lambda s: s["offered_rps"], default=None)
    return {
        "max_rps_within_budget": good or None,
        "first_rps_over_budget": bad,
        "at_max": best["overall"] if best else None,
        "steps": [{k: v for k, v in s.items() if k != "overall"} for s in steps],
    }


# -- the command ------------------------------------------------------------------------------------------


def _stack_info(stack: Stack | None, opts: Options) -> dict[str, Any]:
    if stack is None:
        return {"started_by_loadtest": False}
    return {
        "started_by_loadtest": True,
        "model_version": stack.model_version,
        "model_trees": stack.model_trees,
        "members_in_redis": opts.members,
        "infrastructure": "embedded Redis + tansu broker on loopback",
        "api_processes": "benefits serve (uvicorn, 1 worker process each), Locust round-robin per user",
        "api_settings": {
            k: getattr(stack.settings, k)
            for k in ("max_in_flight", "deadline_ms", "redis_timeout_ms", "log_level", "default_limit")
        },
        "code": _code_version(),
    }


def _code_version() -> dict[str, Any]:
    """The commit the API ran, and whether its packages had uncommitted changes (shared work tree)."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "service", "features", "benefits"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split("\n")
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None}
    return {"commit": head, "uncommitted": sorted(line[3:] for line in dirty if line.strip())}


def run_command(base_settings: Any, opts: Options) -> int:
    """Entry point of ``benefits loadtest``. Returns the exit code (0 ok, 1 budget broken, 2 run failed)."""
    api_key = opts.api_key or base_settings.storefront_api_keys[0].get_secret_value()
    workdir = Path(tempfile.mkdtemp(prefix="benefits-loadtest-"))
    name = opts.name or ("loadtest-capacity" if opts.capacity else f"loadtest-{opts.shape}")
    params = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(opts).items() if k != "api_key"}
    try:
        if opts.targets:
            if opts.capacity:
                raise ValueError("--capacity starts its own stack per configuration; drop --target")
            idle = warm_up(opts.targets, api_key, min(opts.warmup_requests, 50))
            summary = run_locust(opts.targets, opts, api_key, name, workdir)
            summary["sequential_round_trip_before_load"] = idle
            summary["stack"] = _stack_info(None, opts)
        else:
            with started_stack(base_settings, opts, workdir) as stack:
                if opts.capacity:
                    summary = _capacity(stack, opts, api_key, workdir)
                else:
                    targets = start_apis(stack, opts.offers, opts.workers)
                    idle = warm_up(targets, api_key, opts.warmup_requests)
                    summary = run_locust(targets, opts, api_key, name, workdir)
                    summary["sequential_round_trip_before_load"] = idle
                summary["stack"] = _stack_info(stack, opts)
    except (RuntimeError, ValueError, OSError, subprocess.SubprocessError, httpx.HTTPError) as exc:
        log.error("load test failed: %s (work files in %s)", exc, workdir)
        print(json.dumps({"error": str(exc), "workdir": str(workdir)}), flush=True)
        return 2
    summary = {"benchmark": name, "machine": machine_info(), "params": params, **summary}
    if opts.results_dir == RESULTS_DIR:
        write_result(name, summary)
    else:
        (opts.results_dir / f"{name}.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
        print(json.dumps(summary, sort_keys=True), flush=True)
    if opts.keep_files:
        log.info("API logs, Locust logs and timelines kept in %s", workdir)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    code = exit_code(summary)
    if code:
        broken = [c["check"] for c in summary["budget"]["checks"] if not c["ok"]]
        log.warning("budget broken: %s", ", ".join(broken))
    return code


def exit_code(summary: dict[str, Any]) -> int:
    """0 when every budget check passed (capacity runs always 0: they look for the break), else 1."""
    if summary.get("mode") == "capacity":
        return 0
    return 0 if summary["budget"]["ok"] else 1


def _capacity(stack: Stack, opts: Options, api_key: str, workdir: Path) -> dict[str, Any]:
    configs: dict[str, Any] = {}
    for offers in opts.capacity_offers:
        for workers in opts.capacity_workers:
            label = f"capacity-{workers}w-{offers}o"
            targets = start_apis(stack, offers, workers)
            idle = warm_up(targets, api_key, opts.warmup_requests)
            configs[f"{workers}_workers_{offers}_offers"] = {
                "workers": workers,
                "offers": offers,
                "sequential_round_trip_before_load": idle,
                **find_capacity(
                    targets, replace(opts, offers=offers, workers=workers), api_key, label, workdir
                ),
            }
            stack.stop_apis()
    return {
        "mode": "capacity",
        "budget": {
            "on": opts.budget_on,
            "client_guard_ms": opts.client_guard_ms if opts.budget_on == "server" else None,
            "p99_ms": opts.p99_ms,
            "max_error_rate": opts.max_error_rate,
            "min_achieved_share": MIN_ACHIEVED_SHARE,
        },
        "configs": configs,
    }
