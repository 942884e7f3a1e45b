"""``python -m benchmarks.stream``: the stream worker through the real broker, worker process and Redis.

Two measurements, each against its own embedded Redis and broker started here:

1. **Throughput** per worker process: pre-load N events into a 4-partition topic, start one worker
   (``benefits worker``) and time it draining them, from its first folded event to its last (the group
   join is excluded). The worker's own ``benefits_stream_events_total`` counter is polled over HTTP so
   the probe adds almost no load. The worker's CPU seconds over the same span are recorded too:
   events per CPU-second is the steadier figure on a shared machine. The Faust engine is measured the
   same way on fewer events, for comparison.
2. **Freshness** at a steady rate (default 5k events/s): events are stamped with ``event_ts`` at send
   time; the worker's histogram ``benefits_stream_freshness_seconds`` (event time -> state written to
   Redis, so it includes producer batching, the broker and the fetch) is scraped before and after the
   steady phase and p50/p99 are interpolated inside the bucket that holds them.

3. **Real data**: The Complete Journey (all 2,469 households, 155,848 baskets by default) replayed as
   order events through a worker; the summary records whether the stored state equals the offline
   fold for every household (``harness.replay_cj.full_check``).

Prints the JSON summary as the last line and writes ``benchmarks/results/stream.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
import time
from pathlib import Path
from typing import Any

import msgspec
import psutil

from benchmarks._common import machine_info, write_result
from features import events as ev
from harness import stream_driver as h
from harness.embedded import Service, create_topics, free_port, start_broker, start_redis
from harness.replay_cj import full_check
from service.quantiles import histogram_quantile
from stream.worker import FRESHNESS_BUCKETS

log = logging.getLogger(__name__)


_folded = h.worker_events_folded


def _cpu_seconds(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return float(t.user + t.system)


#: Worker batching knobs for every run (``--batch-max``/``--within-ms``); recorded in the summary.
BATCH = {"batch_max": 2000, "batch_within_ms": 20}


def _config(redis: Service, broker: Service, tag: str, engine: str = "batch") -> h.WorkerConfig:
    return h.WorkerConfig(
        batch_max=BATCH["batch_max"],
        batch_within_ms=BATCH["batch_within_ms"],
        redis_url=redis.url,
        bootstrap=broker.url,
        events_topic=f"bench-events-{tag}",
        dead_letter_topic=f"bench-dlq-{tag}",
        prefix=f"b{tag}",
        group=f"bench-{tag}",
        metrics_port=free_port(),
        engine=engine,
        log_level="WARNING",
    )


def throughput(
    redis: Service, broker: Service, n_events: int, engine: str, workdir: Path, n_workers: int = 1
) -> dict[str, Any]:
    """Drain ``n_events`` pre-loaded events with ``n_workers`` worker processes in one consumer group."""
    cfg = _config(redis, broker, f"tp{engine}{n_workers}", engine)
    configs = [cfg] + [dataclasses.replace(cfg, metrics_port=free_port()) for _ in range(n_workers - 1)]
    asyncio.run(create_topics(broker.url, {cfg.events_topic: cfg.partitions, cfg.dead_letter_topic: 1}))
    events = h.synthetic_events(n_events, max(1000, n_events // 20), seed=3)
    asyncio.run(h.produce(broker.url, cfg.events_topic, h.keyed(events)))

    def folded() -> float:
        total = 0.0
        for c in configs:
            with contextlib.suppress(OSError):
                total += _folded(c.metrics_port)
        return total

    with contextlib.ExitStack() as stack:
        popens = [
            stack.enter_context(h.worker_process(c, workdir / f"worker-{engine}-{n_workers}-{i}.log"))
            for i, c in enumerate(configs)
        ]
        procs = [psutil.Process(p.pid) for p in popens]
        deadline = time.monotonic() + 120
        if n_workers > 1:
            # Time the group, not the join: wait until every worker holds partitions (has folded).
            while time.monotonic() < deadline and not all(_safe_folded(c.metrics_port) > 0 for c in configs):
                time.sleep(0.02)
        start_count = 0.0
        while time.monotonic() < deadline:
            start_count = folded()
            if start_count > 0:
                break
            time.sleep(0.02)
        t0, cpu0 = time.perf_counter(), sum(_cpu_seconds(p) for p in procs)
        count = start_count
        while count < n_events and time.monotonic() < deadline + 600:
            time.sleep(0.05)
            count = folded()
        t1, cpu1 = time.perf_counter(), sum(_cpu_seconds(p) for p in procs)
    drained = count - start_count
    wall = t1 - t0
    cpu = cpu1 - cpu0
    return {
        "engine": engine,
        "workers": n_workers,
        "events": n_events,
        "events_timed": int(drained),
        "wall_seconds": round(wall, 3),
        "events_per_second": round(drained / wall, 1) if wall > 0 else None,
        "worker_cpu_seconds": round(cpu, 3),
        "events_per_cpu_second": round(drained / cpu, 1) if cpu > 0 else None,
        "complete": count >= n_events,
    }


def _safe_folded(port: int) -> float:
    try:
        return _folded(port)
    except OSError:
        return 0.0


def _freshness_buckets(port: int) -> list[float]:
    m = h.scrape_metrics(port)
    out = []
    for b in [*FRESHNESS_BUCKETS, float("inf")]:
        le = "+Inf" if b == float("inf") else repr(float(b))
        out.append(m.get(("benefits_stream_freshness_seconds_bucket", (("le", le),)), 0.0))
    return out


async def _steady_produce(bootstrap: str, topic: str, events: list[ev.Event], rate: float) -> float:
    """Send at ``rate`` events/s in 5 ms ticks, stamping ``event_ts`` at send time; returns the
    achieved rate."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=2)
    await producer.start()
    tick = 0.005
    per_tick = max(1, round(rate * tick))
    pending = []
    t0 = time.perf_counter()
    sent = 0
    try:
        for i in range(0, len(events), per_tick):
            now = time.time()
            for e in events[i : i + per_tick]:
                stamped = msgspec.structs.replace(e, event_ts=now)
                pending.append(await producer.send(topic, value=ev.encode(stamped), key=e.member_id.encode()))
            sent += len(events[i : i + per_tick])
            delay = t0 + sent / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if len(pending) > 5000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return sent / (time.perf_counter() - t0)


def freshness(redis: Service, broker: Service, rate: float, seconds: float, workdir: Path) -> dict[str, Any]:
    cfg = _config(redis, broker, "fresh")
    asyncio.run(create_topics(broker.url, {cfg.events_topic: cfg.partitions, cfg.dead_letter_topic: 1}))
    n = int(rate * seconds)
    events = h.synthetic_events(n + 200, 20_000, seed=4)
    warm, steady = events[:200], events[200:]
    with h.worker_process(cfg, workdir / "worker-fresh.log") as popen:
        # Warm up: wait until the worker has joined and folded a first burst, so the join is not measured.
        asyncio.run(h.produce(broker.url, cfg.events_topic, h.keyed(warm)))
        h.wait_worker_folded(cfg.metrics_port, len(warm), 120)
        before = _freshness_buckets(cfg.metrics_port)
        proc = psutil.Process(popen.pid)
        cpu0 = _cpu_seconds(proc)
        achieved = asyncio.run(_steady_produce(broker.url, cfg.events_topic, steady, rate))
        time.sleep(1.0)
        after = _freshness_buckets(cfg.metrics_port)
        cpu = _cpu_seconds(proc) - cpu0
    bounds = [*FRESHNESS_BUCKETS, float("inf")]
    delta = [a - b for a, b in zip(after, before, strict=True)]
    cumulative = list(zip(bounds, delta, strict=True))
    p50 = histogram_quantile(0.50, cumulative)
    p99 = histogram_quantile(0.99, cumulative)
    return {
        "target_rate": rate,
        "achieved_rate": round(achieved, 1),
        "events": int(delta[-1]),
        "freshness_p50_ms": round(p50 * 1000, 2) if p50 is not None else None,
        "freshness_p99_ms": round(p99 * 1000, 2) if p99 is not None else None,
        "share_within_100ms": round(delta[FRESHNESS_BUCKETS.index(0.1)] / delta[-1], 4)
        if delta[-1]
        else None,
        "worker_cpu_share": round(cpu / seconds, 3),
        "method": "worker histogram deltas, linear interpolation within buckets (bounds in stream.worker)",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--events", type=int, default=200_000, help="events pre-loaded for the throughput run"
    )
    parser.add_argument(
        "--faust-events", type=int, default=50_000, help="events for the Faust engine run (0: skip)"
    )
    parser.add_argument("--rate", type=float, default=5000.0, help="steady rate for the freshness run")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the freshness run")
    parser.add_argument("--batch-max", type=int, default=2000, help="BENEFITS_WORKER_BATCH_MAX")
    parser.add_argument("--within-ms", type=int, default=20, help="BENEFITS_WORKER_BATCH_WITHIN_MS")
    parser.add_argument("--skip-throughput", action="store_true", help="only the freshness run")
    parser.add_argument(
        "--two-workers",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also drain the same load with two workers in one group",
    )
    parser.add_argument(
        "--cj-households", type=int, default=2469, help="Complete Journey households to replay (0: skip)"
    )
    args = parser.parse_args()
    BATCH.update(batch_max=args.batch_max, batch_within_ms=args.within_ms)
    logging.basicConfig(level=logging.WARNING)

    workdir = Path(os.environ.get("TMPDIR", "/tmp")) / f"benefits-bench-stream-{os.getpid()}"
    workdir.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    redis, broker = start_redis(), start_broker()
    try:
        runs = [] if args.skip_throughput else [throughput(redis, broker, args.events, "batch", workdir)]
        if args.two_workers and not args.skip_throughput:
            # Two processes in one group over the 4-partition topic. On this 2-core box they share the
            # cores with the broker and Redis, so this shows group scaling, not per-core capacity.
            runs.append(throughput(redis, broker, args.events, "batch", workdir, n_workers=2))
        if args.faust_events and not args.skip_throughput:
            runs.append(throughput(redis, broker, args.faust_events, "faust", workdir))
        fresh = freshness(redis, broker, args.rate, args.seconds, workdir)
    finally:
        redis.stop()
        broker.stop()
    cj = full_check(households=args.cj_households) if args.cj_households else None
    batch = runs[0] if runs else {"events_per_second": None}
    summary = {
        "benchmark": "stream",
        "machine": machine_info(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "note": "broker, Redis, producer and worker share this machine's cores with each other and with "
        "other jobs; see load averages",
        "throughput": runs,
        "freshness": fresh,
        "events_per_second_per_worker": batch["events_per_second"],
        "two_workers_vs_one": _ratio(runs),
        "freshness_p50_ms": fresh["freshness_p50_ms"],
        "freshness_p99_ms": fresh["freshness_p99_ms"],
        "worker_batching": dict(BATCH),
        "complete_journey_replay": cj,
        "targets": {"events_per_second_per_worker": 20_000, "freshness_p99_ms": 100},
        "meets_targets": bool(
            (batch["events_per_second"] or 0) >= 20_000 and fresh["freshness_p99_ms"] <= 100
        ),
        "worker_logs": str(workdir),
    }
    write_result("stream", summary)


def _ratio(runs: list[dict[str, Any]]) -> float | None:
    one = next((r for r in runs if r["engine"] == "batch" and r.get("workers") == 1), None)
    two = next((r for r in runs if r["engine"] == "batch" and r.get("workers") == 2), None)
    if not one or not two or not one["events_per_second"] or not two["events_per_second"]:
        return None
    return round(two["events_per_second"] / one["events_per_second"], 2)


if __name__ == "__main__":
    main()
