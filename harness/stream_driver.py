"""Drive the stream worker from outside: synthetic events, a Kafka producer, worker subprocesses, and the
offline reference fold. Shared by the stream tests, ``benchmarks.stream`` and the Complete Journey
replay so that all three exercise the worker the same way (real broker, real process, real Redis).

Not used on any serving path.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import msgspec
import redis.asyncio as aioredis

from features import events as ev
from features.offer_stats import OfferCounters, apply_offer_event, merge_all
from features.state import MemberState, apply, new_state
from harness.embedded import stop_process
from infra.redis_layout import MemberStore, RedisLayout, StoredMember

#: Event-type mix of the synthetic stream (roughly what a storefront sends).
_MIX: tuple[tuple[str, float], ...] = (
    ("page_view", 0.40),
    ("search", 0.10),
    ("add_to_cart", 0.08),
    ("impression", 0.20),
    ("click", 0.05),
    ("dismiss", 0.02),
    ("order", 0.05),
    ("coupon_claim", 0.03),
    ("coupon_redeem", 0.02),
    ("benefit_use", 0.01),
    ("consult_booked", 0.01),
    ("tier_changed", 0.01),
    ("points_changed", 0.01),
    ("paid_membership_started", 0.005),
    ("consent_changed", 0.005),
)
_CATS = ("baby", "beauty", "fashion", "electronics", "grocery", "health", "home", "sports", "toys", "weird")


def synthetic_events(
    n_events: int,
    n_members: int,
    seed: int = 1,
    start_ts: float = 1_700_000_000.0,
    span_seconds: float = 7 * 86400.0,
    prefix: str = "e",
    now_ts: bool = False,
) -> list[ev.Event]:
    """A varied, valid event stream in event-time order (``now_ts``: stamp each event with the clock
    when it is created instead; the benchmark re-stamps at send time anyway)."""
    rng = random.Random(seed)
    # Lifecycle details (expiries, renewals, points lots) come from a second generator so that the main
    # one's draws, and so every earlier stream of a seed, stay as they were.
    life = random.Random(seed + 1_000_003)
    kinds = [k for k, _ in _MIX]
    weights = [w for _, w in _MIX]
    out: list[ev.Event] = []
    step = span_seconds / max(1, n_events)
    for i in range(n_events):
        mid = f"m{rng.randrange(n_members)}"
        ts = time.time() if now_ts else start_ts + i * step + rng.random() * step
        kind = rng.choices(kinds, weights)[0]
        fields: dict[str, object] = {
            "type": kind,
            "event_id": f"{prefix}{i}",
            "member_id": mid,
            "event_ts": ts,
        }
        cat = rng.choice(_CATS)
        offer = f"o{rng.randrange(40)}"
        match kind:
            case "page_view":
                fields.update(page_type=rng.choice(ev.PAGE_TYPES), category=cat)
            case "search":
                fields.update(category=cat, query_len=rng.randrange(30))
            case "add_to_cart":
                fields.update(category=cat, amount=round(rng.uniform(1, 300), 2))
            case "order":
                coupon = rng.random() < 0.3
                fields.update(
                    amount=round(rng.uniform(5, 500), 2),
                    categories=rng.sample(_CATS, rng.randrange(1, 4)),
                    items=rng.randrange(1, 9),
                    coupon_id=offer if coupon else None,
                    discount=round(rng.uniform(1, 30), 2) if coupon else 0.0,
                )
            case "impression":
                fields.update(request_id=f"r{i}", offer_id=offer, position=rng.randrange(10))
            case "click" | "dismiss":
                fields.update(request_id=f"r{i}", offer_id=offer)
            case "coupon_claim" | "benefit_use" | "consult_booked":
                fields.update(offer_id=offer)
            case "coupon_redeem":
                fields.update(offer_id=offer, discount=round(rng.uniform(1, 30), 2))
            case "tier_changed":
                fields.update(tier=rng.choice(ev.TIERS))
            case "points_changed":
                fields.update(points=rng.randrange(100_000))
                fields["expiring"] = [
                    {"points": life.randrange(1, 5000), "expires_at": ts + life.uniform(1, 90) * 86400}
                    for _ in range(life.randrange(3))
                ]
            case "paid_membership_started":
                r = life.random()
                if r < 0.3:
                    fields["type"] = "paid_membership_renewed"
                elif r < 0.45:
                    fields["type"] = "paid_membership_ended"
                if fields["type"] != "paid_membership_ended":
                    fields["expires_at"] = ts + life.uniform(5, 365) * 86400
                    fields["plan"] = life.choice(["PLUS", "88VIP"])
            case "consent_changed":
                fields.update(personalization=rng.random() < 0.8)
            case _:
                pass
        # convert() validates exactly as the worker's decoder will.
        e: ev.Event = msgspec.convert(fields, ev.Event)  # type: ignore[arg-type]
        out.append(e)
    return out


def keyed(events: Iterable[ev.Event]) -> list[tuple[bytes, bytes]]:
    """(Kafka key, value) pairs: key = member id, as every producer must."""
    return [(e.member_id.encode(), ev.encode(e)) for e in events]


def offline_fold(events: Iterable[ev.Event]) -> dict[str, MemberState]:
    """The reference: one clean pass of the shared fold over the log, per member in log order."""
    states: dict[str, MemberState] = {}
    for e in events:
        st = states.get(e.member_id)
        if st is None:
            st = states[e.member_id] = new_state(e.member_id)
        apply(st, e)
    return states


def offline_offer_stats(
    events: Iterable[ev.Event], cost_of: dict[str, float] | None = None
) -> dict[str, OfferCounters]:
    stats: dict[str, OfferCounters] = {}
    for e in events:
        apply_offer_event(stats, e, cost_of)
    return stats


# -- producing ----------------------------------------------------------------------------------------
async def produce(
    bootstrap: str,
    topic: str,
    messages: Sequence[tuple[bytes | None, bytes]],
    rate_per_s: float | None = None,
    chunk: int = 500,
) -> float:
    """Send (key, value) pairs and wait for the broker's acks; returns the seconds it took.

    ``rate_per_s`` paces the sending in chunks of ``chunk`` messages (None: as fast as possible).
    """
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, max_batch_size=256 * 1024)
    await producer.start()
    t0 = time.perf_counter()
    try:
        pending = []
        for i in range(0, len(messages), chunk):
            for key, value in messages[i : i + chunk]:
                pending.append(await producer.send(topic, value=value, key=key))
            if rate_per_s:
                due = t0 + (i + chunk) / rate_per_s
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            if len(pending) > 20_000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return time.perf_counter() - t0


async def consume_all(bootstrap: str, topic: str, expected: int, timeout_s: float = 30.0) -> list[bytes]:
    """Read a topic from the beginning until ``expected`` values arrived (or the timeout)."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    out: list[bytes] = []
    try:
        deadline = time.monotonic() + timeout_s
        while len(out) < expected and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                out.extend(r.value for r in records if r.value is not None)
    finally:
        await consumer.stop()
    return out


# -- reading back ---------------------------------------------------------------------------------------
async def read_members(redis_url: str, prefix: str, member_ids: Sequence[str]) -> dict[str, StoredMember]:
    client = aioredis.from_url(redis_url)
    try:
        store = MemberStore(client, RedisLayout(prefix=prefix))
        out: dict[str, StoredMember] = {}
        ids = list(member_ids)
        for i in range(0, len(ids), 2000):
            part = ids[i : i + 2000]
            for mid, stored in zip(part, await store.get_members(part), strict=True):
                if stored is not None:
                    out[mid] = stored
        return out
    finally:
        await client.aclose()


async def read_offer_stats(redis_url: str, prefix: str) -> dict[str, OfferCounters]:
    client = aioredis.from_url(redis_url)
    try:
        store = MemberStore(client, RedisLayout(prefix=prefix))
        return merge_all([s.counters for s in await store.all_offer_stats()])
    finally:
        await client.aclose()


async def events_folded(redis_url: str, prefix: str, member_ids: Sequence[str]) -> int:
    """Sum of ``events_folded`` over the members' stored states (progress probe)."""
    members = await read_members(redis_url, prefix, member_ids)
    return sum(m.state.events_folded for m in members.values())


async def wait_folded(
    redis_url: str,
    prefix: str,
    member_ids: Sequence[str],
    expected: int,
    timeout_s: float,
    poll_s: float = 0.25,
) -> int:
    """Poll until the stored states account for ``expected`` events; returns the last count seen."""
    deadline = time.monotonic() + timeout_s
    seen = -1
    while time.monotonic() < deadline:
        seen = await events_folded(redis_url, prefix, member_ids)
        if seen >= expected:
            return seen
        await asyncio.sleep(poll_s)
    return seen


def settle(redis_url: str, prefix: str, member_ids: Sequence[str], expected: int, timeout_s: float) -> int:
    """:func:`wait_folded`, then a few more batches' time: a double fold (over-count) shows by then.
    Returns the highest count seen."""
    seen = asyncio.run(wait_folded(redis_url, prefix, member_ids, expected, timeout_s))
    time.sleep(1.5)
    return max(seen, asyncio.run(events_folded(redis_url, prefix, member_ids)))


# -- worker processes ------------------------------------------------------------------------------------
@dataclass
class WorkerConfig:
    redis_url: str
    bootstrap: str
    events_topic: str
    dead_letter_topic: str
    prefix: str
    group: str
    partitions: int = 4
    metrics_port: int = 0
    batch_max: int = 2000
    batch_within_ms: int = 20
    log_level: str = "WARNING"
    #: ``batch`` runs ``benefits worker``; ``faust`` runs the Faust engine of the same module.
    engine: str = "batch"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BENEFITS_")}
        env.update(
            {
                "BENEFITS_ENVIRONMENT": "test",
                "BENEFITS_REDIS_URL": self.redis_url,
                "BENEFITS_KAFKA_BOOTSTRAP": self.bootstrap,
                "BENEFITS_EVENTS_TOPIC": self.events_topic,
                "BENEFITS_DEAD_LETTER_TOPIC": self.dead_letter_topic,
                "BENEFITS_EVENTS_PARTITIONS": str(self.partitions),
                "BENEFITS_REDIS_PREFIX": self.prefix,
                "BENEFITS_CONSUMER_GROUP": self.group,
                "BENEFITS_WORKER_METRICS_PORT": str(self.metrics_port),
                "BENEFITS_WORKER_BATCH_MAX": str(self.batch_max),
                "BENEFITS_WORKER_BATCH_WITHIN_MS": str(self.batch_within_ms),
                "BENEFITS_LOG_LEVEL": self.log_level,
                "PYTHONUNBUFFERED": "1",
            }
        )
        return env


def start_worker(cfg: WorkerConfig, log_path: Path | None = None) -> subprocess.Popen[bytes]:
    """Start ``benefits worker`` as a child process (its own process group, so a kill is clean)."""
    out = open(log_path, "ab") if log_path is not None else subprocess.DEVNULL  # noqa: SIM115
    if cfg.engine == "batch":
        argv = [sys.executable, "-m", "benefits.cli", "worker"]
    else:
        code = (
            "import logging; from infra.settings import Settings; from stream.worker import run_worker; "
            f"s = Settings(); logging.basicConfig(level=s.log_level); run_worker(s, engine={cfg.engine!r})"
        )
        argv = [sys.executable, "-c", code]
    return subprocess.Popen(
        argv,
        env=cfg.env(),
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def stop_worker(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout_s: float = 20.0) -> None:
    stop_process(proc, sig, timeout_s)


@contextlib.contextmanager
def worker_process(cfg: WorkerConfig, log_path: Path | None = None) -> Iterator[subprocess.Popen[bytes]]:
    proc = start_worker(cfg, log_path)
    try:
        yield proc
    finally:
        stop_worker(proc)


def scrape_metrics(
    port: int, host: str = "127.0.0.1"
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The worker's Prometheus samples: (sample name, sorted labels) -> value."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def metric_sum(port: int, name: str, by: str | None = None) -> dict[str, float]:
    """The worker's samples named ``name`` summed per value of label ``by`` (None: one total under "")."""
    out: dict[str, float] = {}
    for (sample, labels), v in scrape_metrics(port).items():
        if sample == name:
            k = dict(labels).get(by, "") if by else ""
            out[k] = out.get(k, 0.0) + v
    return out


def offsets_backwards(port: int) -> dict[str, float]:
    """The worker's ``benefits_stream_offsets_backwards_total`` by reason (empty: no alarm)."""
    return metric_sum(port, "benefits_stream_offsets_backwards_total", by="reason")


def worker_state_lost(port: int) -> float | None:
    """The worker's ``benefits_stream_state_lost`` gauge (None: not listening yet)."""
    try:
        return metric_sum(port, "benefits_stream_state_lost").get("")
    except OSError:
        return None


def wait_metric(read: Callable[[], float | None], expected: float, timeout_s: float) -> float | None:
    """Poll ``read`` until it returns ``expected``; returns the last value read."""
    deadline = time.monotonic() + timeout_s
    seen = read()
    while seen != expected and time.monotonic() < deadline:
        time.sleep(0.1)
        seen = read()
    return seen


def worker_events_folded(port: int) -> float:
    """Events the worker serving metrics on ``port`` has folded (its ``benefits_stream_events_total``)."""
    return sum(metric_sum(port, "benefits_stream_events_total").values())


def wait_worker_folded(port: int, expected: float, timeout_s: float, poll_s: float = 0.05) -> float:
    """Poll the worker's own count until it reaches ``expected``; a worker not listening yet counts as 0.
    Returns the last count seen (the Redis-side probe is :func:`wait_folded`)."""
    deadline = time.monotonic() + timeout_s
    seen = 0.0
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            seen = worker_events_folded(port)
        if seen >= expected:
            break
        time.sleep(poll_s)
    return seen
