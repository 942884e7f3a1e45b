"""``benefits demo``: the whole system end to end on one machine, then everything it started is stopped.

1. start an embedded Redis and Kafka-protocol broker (unless BENEFITS_REDIS_URL / _KAFKA_BOOTSTRAP are set);
2. simulate members, offers, events and logged impressions; train LightGBM, export ONNX, promote;
3. start the stream worker and the API as real processes (``benefits worker``, ``benefits serve``);
4. stream the simulated history of a sample of members through the broker into Redis;
5. for a few members, print their top offers, send a burst of their own events (browsing a category they
   never looked at), and print the ranking again as soon as it changes, with the time it took;
6. three members whose lifecycle calls for a push (silent, paid membership ending, close to the next
   tier) get the wake-up coupon, the renewal offer and the tier nudge with their reasons
   (:mod:`benefits.demo_lifecycle`);
7. archive the topic, retrain on the archive, promote through the gate, watch the API swap
   (:mod:`benefits.demo_retrain`).
"""

from __future__ import annotations

import asyncio
import random
import shutil
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx
import msgspec
from rich.console import Console
from rich.table import Table

from features import events as ev
from harness import stack
from harness.embedded import create_topics, topic_configs
from harness.stream_driver import wait_folded
from infra.registry import Registry
from infra.settings import Settings

console = Console()

#: Category bursts shown in the demo: a member "starts browsing" products they never looked at.
BURST_CATEGORIES = ("baby", "health", "beauty", "pets", "sports")
SAMPLE_MEMBERS = 300


def run_demo(
    settings: Settings, n_members: int = 2000, days: float = 14.0, workdir: Path | None = None
) -> int:
    workdir = workdir or Path("var/demo")
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    settings = settings.model_copy(update={"registry_dir": workdir / "registry"})
    procs: list[stack.Proc] = []
    with stack.infrastructure(settings, redis_data_dir=workdir / "redis") as (settings, started):
        for svc in started:
            console.print(f"[dim]started embedded {svc.name} at {svc.url}[/dim]")
        try:
            return _run(settings, workdir, n_members, days, procs)
        finally:
            for p in procs:
                p.stop()
            console.print("[dim]stopped worker, API and embedded infrastructure[/dim]")


def _run(settings: Settings, workdir: Path, n_members: int, days: float, procs: list[stack.Proc]) -> int:
    from training.pipeline import train_command
    from training.simulate import simulate_to_dir

    assert settings.kafka_bootstrap is not None and settings.redis_url is not None
    asyncio.run(
        create_topics(
            settings.kafka_bootstrap,
            {settings.events_topic: settings.events_partitions, settings.dead_letter_topic: 1},
            configs=topic_configs(settings.events_topic, settings.events_retention_seconds),
        )
    )

    t = time.perf_counter()
    sim_dir = workdir / "sim"
    console.rule("1. simulate")
    simulate_to_dir(sim_dir, n_members=n_members, days=days, n_offers=200, seed=1)
    console.print(
        f"simulated {n_members} members x {days:.0f} days in {time.perf_counter() - t:.1f}s -> {sim_dir}"
    )

    console.rule("2. train, evaluate, export ONNX, promote")
    t = time.perf_counter()
    train_command(settings, data=sim_dir, events=None, promote=True)
    version = Registry(settings.registry_dir).promoted()
    if version is None:
        console.print("[red]training did not promote a model[/red]")
        return 1
    console.print(f"model {version} promoted in {time.perf_counter() - t:.1f}s")

    console.rule("3. start the stream worker and the API")
    api = stack.api_settings(settings)
    base = f"http://127.0.0.1:{api.port}"
    log_dir = workdir / "logs"
    procs.append(stack.start_worker(settings, log_dir))
    procs.append(stack.start_api(api, log_dir))
    ready = stack.wait_ready(base, procs[1])
    console.print(f"API ready at {base} ({ready}); worker and API logs in {log_dir}")

    console.rule("4. stream simulated history through the broker")
    events = _load_events(sim_dir / "events.jsonl")
    by_member: dict[str, list[ev.Event]] = defaultdict(list)
    for e in events:
        by_member[e.member_id].append(e)
    rng = random.Random(5)
    sample = rng.sample(sorted(by_member), min(SAMPLE_MEMBERS, len(by_member)))
    # Shift the simulated clock so that the history ends a minute ago: decayed features are "live".
    shift = time.time() - 60.0 - max(e.event_ts for e in events)
    to_send = sorted(
        (msgspec.structs.replace(e, event_ts=e.event_ts + shift) for m in sample for e in by_member[m]),
        key=lambda e: e.event_ts,
    )
    t = time.perf_counter()
    asyncio.run(_publish(settings, to_send))
    folded = asyncio.run(wait_folded(settings.redis_url, settings.redis_prefix, sample, len(to_send), 90.0))
    if folded < len(to_send):
        why = "" if procs[0].alive() else f"; the worker exited:\n{procs[0].tail()}"
        raise RuntimeError(f"only {folded}/{len(to_send)} events folded after 90s{why}")
    console.print(
        f"{len(to_send)} events of {len(sample)} members published and folded into Redis "
        f"in {time.perf_counter() - t:.1f}s"
    )

    console.rule("5. a member's own clicks change their offers")
    headers = {"X-API-Key": settings.storefront_api_keys[0].get_secret_value()}
    changed = 0
    shown = 0
    with httpx.Client(base_url=base, headers=headers, timeout=5.0) as client:
        for member_id in sample:
            if shown >= 3:
                break
            category = _unvisited_category(by_member[member_id])
            if category is None:
                continue
            shown += 1
            before = _recommend(client, member_id)
            burst = _burst(member_id, category)
            t0 = time.perf_counter()
            asyncio.run(_publish(settings, burst))
            after, elapsed = before, 0.0
            while time.perf_counter() - t0 < 5.0:
                after = _recommend(client, member_id)
                elapsed = time.perf_counter() - t0
                if _ids(after) != _ids(before):
                    break
                time.sleep(0.02)
            moved = _ids(after) != _ids(before)
            changed += moved
            _print_change(member_id, category, before, after, elapsed if moved else None)
    console.rule("6. lifecycle offers: wake-up, renewal, tier nudge")
    from benefits.demo_lifecycle import run_lifecycle

    if run_lifecycle(settings, base, procs[0], console) != 0:
        return 1
    console.rule("7. stream -> archive -> retrain -> promote")
    from benefits.demo_retrain import run_retrain

    if run_retrain(settings, workdir, sim_dir / "catalog.json", base, sample[0], console) != 0:
        return 1
    console.rule("done")
    if changed == 0:
        console.print("[red]no ranking changed after the members' own events[/red]")
        return 1
    console.print(f"[green]{changed} of {shown} members' rankings reacted to their own events[/green]")
    return 0


def _load_events(path: Path) -> list[ev.Event]:
    with open(path, "rb") as f:
        return [ev.decode(line) for line in f if line.strip()]


async def _publish(settings: Settings, events: list[ev.Event]) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, linger_ms=5, acks="all")
    await producer.start()
    try:
        futures = [
            await producer.send(settings.events_topic, ev.encode(e), key=e.member_id.encode()) for e in events
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def _unvisited_category(history: list[ev.Event]) -> str | None:
    seen = {getattr(e, "category", None) for e in history}
    for e in history:
        if isinstance(e, ev.Order):
            seen.update(e.categories)
    for c in BURST_CATEGORIES:
        if c not in seen:
            return c
    return None


def _burst(member_id: str, category: str) -> list[ev.Event]:
    now = time.time()
    out: list[ev.Event] = []
    for i in range(6):
        out.append(
            ev.PageView(
                event_id=f"demo-{member_id}-{i}",
                member_id=member_id,
                event_ts=now + i * 0.01,
                page_type="category",
                category=category,
            )
        )
    out.append(
        ev.Search(event_id=f"demo-{member_id}-s", member_id=member_id, event_ts=now + 0.1, category=category)
    )
    out.append(
        ev.AddToCart(
            event_id=f"demo-{member_id}-c",
            member_id=member_id,
            event_ts=now + 0.2,
            category=category,
            amount=39.0,
        )
    )
    return out


def _recommend(client: httpx.Client, member_id: str) -> dict[str, Any]:
    r = client.post(
        "/v1/recommend",
        json={"member_id": member_id, "context": {"page_type": "home", "channel": "app"}, "limit": 5},
    )
    r.raise_for_status()
    body: dict[str, Any] = r.json()
    return body


def _ids(resp: dict[str, Any]) -> list[str]:
    return [o["offer_id"] for o in resp.get("offers", [])]


def _print_change(
    member_id: str, category: str, before: dict[str, Any], after: dict[str, Any], elapsed: float | None
) -> None:
    table = Table(title=f"member {member_id}: browses {category!r}", show_lines=False)
    table.add_column("#")
    table.add_column("before")
    table.add_column("after")
    table.add_column("why (after)")
    b, a = before.get("offers", []), after.get("offers", [])
    for i in range(max(len(b), len(a))):
        bo = b[i] if i < len(b) else {}
        ao = a[i] if i < len(a) else {}
        reasons = " / ".join(r.get("text", r.get("code", "")) for r in ao.get("reasons", []))
        table.add_row(
            str(i + 1),
            f"{bo.get('title', '')} [{bo.get('kind', '')}] {bo.get('score', 0):.3f}" if bo else "",
            f"{ao.get('title', '')} [{ao.get('kind', '')}] {ao.get('score', 0):.3f}" if ao else "",
            reasons,
        )
    console.print(table)
    if elapsed is None:
        console.print("[yellow]ranking did not change within 5 s[/yellow]")
    else:
        console.print(
            f"ranking changed {elapsed * 1000:.0f} ms after the burst was published "
            f"(model {after.get('model_version')}, degraded={after.get('degraded')})"
        )
