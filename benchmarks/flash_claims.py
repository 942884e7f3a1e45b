"""Claims inside the load test's flash sale: members race for a limited coupon while the storefront's
page views go on (``benefits loadtest --shape flash --claim-units 1000``).

Before the run :func:`create_coupon` puts a coupon with ``units`` units, a budget for exactly that many
claims and one claim per member through the admin API (the one write path). Locust then claims it on
``--claim-share`` of page views (by default only in the spike phases, where a flash sale's claims are),
alongside the recommend traffic. After the run :func:`check` reads the money state from Redis itself and
holds it against what the server said: units reserved == claims the server accepted, never more than
``units``; budget used <= budget; no member with two claims. Claim latency (client, from Locust's
timeline, and the server's own ``benefits_claim_seconds``) is reported beside the page views'.

The exact-count race on its own (20,000 members for 1,000 units, no page views) is ``benchmarks.claims``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import redis.asyncio as aioredis

from harness.scrape import Scrape, buckets, delta
from infra.money_store import MoneyStore
from infra.settings import Settings
from service.quantiles import histogram_quantile

OFFER_ID = "flash-coupon"
COST = 2.0
#: Claims go where a flash sale's claims are: into the spike.
DEFAULT_PHASES = ("spike_ramp", "spike")


def create_coupon(base: str, admin_key: str, units: int) -> dict[str, Any]:
    """The limited coupon of the sale, through the admin API; returns the offer as sent."""
    offer = {
        "offer_id": OFFER_ID, "kind": "coupon", "subtype": "limited", "title": "Flash sale",
        "value": 10.0, "cost": COST, "inventory": units, "budget": COST * units,
        "caps": {"max_claims_per_member": 1},
    }  # fmt: skip
    r = httpx.put(
        f"{base}/v1/admin/offers/{OFFER_ID}", json=offer, headers={"X-API-Key": admin_key}, timeout=10
    )
    r.raise_for_status()
    return offer


async def money_state(settings: Settings) -> dict[str, Any]:
    """The coupon's money state read from Redis itself (not from what the service says)."""
    assert settings.redis_url
    client = aioredis.Redis.from_url(settings.redis_url)
    try:
        money = MoneyStore(client, settings.redis_prefix)
        usage = (await money.usage([OFFER_ID]))[OFFER_ID]
        claims = await money.all_member_claims(OFFER_ID)
        return {
            "units_reserved": usage.units,
            "budget_used": usage.cost,
            "members_with_a_claim": len(claims),
            "max_claims_per_member": max((n for n, _ in claims.values()), default=0),
        }
    finally:
        await client.aclose()


def _server_claims(d: Scrape) -> dict[str, float]:
    """Claims of the coupon by outcome, as the server counted them (``benefits_offer_claims_total``)."""
    prefix = "benefits_offer_claims_total{"
    out: dict[str, float] = {}
    for key, value in d.items():
        if key.startswith(prefix) and f'offer_id="{OFFER_ID}"' in key:
            outcome = key.split('outcome="', 1)[1].split('"', 1)[0]
            out[outcome] = out.get(outcome, 0.0) + value
    return out


def check(settings: Settings, units: int, before: Scrape, after: Scrape) -> dict[str, Any]:
    """Money state from Redis held against the server's counts; the checks go into the run's budget."""
    money = asyncio.run(money_state(settings))
    d = delta(before, after)
    outcomes = _server_claims(d)
    accepted = outcomes.get("accepted", 0.0)
    server = buckets(d, "benefits_claim_seconds")
    latency = {
        q: round(v * 1000.0, 2) if (v := histogram_quantile(p, server)) is not None else None
        for q, p in (("p50", 0.5), ("p99", 0.99))
    }
    checks = [
        {"check": "claims: units reserved == claims accepted", "value": money["units_reserved"],
         "limit": accepted, "op": "==", "ok": money["units_reserved"] == accepted},
        {"check": "claims: units reserved <= units", "value": money["units_reserved"], "limit": units,
         "op": "<=", "ok": money["units_reserved"] <= units},
        {"check": "claims: budget used <= budget", "value": money["budget_used"], "limit": COST * units,
         "op": "<=", "ok": money["budget_used"] <= COST * units + 1e-9},
        {"check": "claims: no member over the cap of 1", "value": money["max_claims_per_member"],
         "limit": 1, "op": "<=", "ok": money["max_claims_per_member"] <= 1},
    ]  # fmt: skip
    return {
        "offer_id": OFFER_ID,
        "units": units,
        "budget": COST * units,
        "money": money,
        "server_outcomes": outcomes,
        "server_claim_ms": latency,
        "checks": checks,
    }
