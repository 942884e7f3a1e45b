"""Flash-sale claim race: N members race for a limited coupon over real HTTP.

    python -m benchmarks.claims --members 20000 --units 1000 --concurrency 200

Starts its own stack (embedded Redis and broker, one ``benefits serve`` process), creates a coupon with
``--units`` units, a budget for exactly that many claims and one claim per member, then every member
claims once with an ``Idempotency-Key`` (a 503 is retried with the same key, as a storefront must).
Checks, from Redis itself: units reserved == accepted == ``--units``, budget used == budget, no member
with two claims. Reports client latency percentiles (ms, from the load generator on the same box) and
the server's own claim latency histogram (``benefits_claim_seconds``), plus the load average.

Writes ``benchmarks/results/claims-flash.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from benchmarks._common import machine_info, write_result
from benchmarks.flash_claims import COST, OFFER_ID, money_state
from harness import stack
from harness.scrape import buckets, delta, read_metrics
from harness.testmodel import build_registry
from infra.settings import Settings
from service.quantiles import histogram_quantile


async def race(base: str, key: str, members: int, concurrency: int) -> dict[str, Any]:
    headers = {"X-API-Key": key, "Content-Type": "application/json"}
    statuses: Counter[int] = Counter()
    reasons: Counter[str] = Counter()
    latencies: list[float] = []
    retries = 0
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(members):
        queue.put_nowait(i)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, timeout=30.0, limits=limits) as client:

        async def worker() -> None:
            nonlocal retries
            while True:
                try:
                    i = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                body = {"type": "claim", "member_id": f"fs-{i}", "offer_id": OFFER_ID, "request_id": f"r{i}"}
                h = {**headers, "Idempotency-Key": f"flash-{i}"}
                while True:
                    t0 = time.perf_counter()
                    r = await client.post("/v1/feedback", json=body, headers=h)
                    latencies.append((time.perf_counter() - t0) * 1000.0)
                    if r.status_code != 503:
                        break
                    retries += 1  # shed or outcome unknown: retry with the same key
                    await asyncio.sleep(0.05)
                statuses[r.status_code] += 1
                if r.status_code == 409:
                    reasons[r.json().get("reason", "?")] += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
    lat = np.array(latencies)
    return {
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "refusal_reasons": dict(reasons),
        "retries_after_503": retries,
        "elapsed_s": round(elapsed, 2),
        "claims_per_s": round(members / elapsed, 1),
        "client_latency_ms": {
            "p50": round(float(np.percentile(lat, 50)), 2),
            "p90": round(float(np.percentile(lat, 90)), 2),
            "p99": round(float(np.percentile(lat, 99)), 2),
            "max": round(float(lat.max()), 2),
        },
    }


def run(tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    registry = build_registry(tmp / "registry")  # a small promoted model, so that the API is ready
    base_settings = Settings(
        environment="test", redis_prefix="flash", max_in_flight=256, registry_dir=registry.root
    )
    with stack.embedded_stack(base_settings, tmp) as st:
        settings = stack.api_settings(st.settings)
        base, _ = st.add_api(settings)
        admin = {"X-API-Key": "dev-admin-key"}
        offer = {"offer_id": OFFER_ID, "kind": "coupon", "subtype": "limited", "title": "Flash sale",
                 "value": 10.0, "cost": COST, "inventory": args.units, "budget": COST * args.units,
                 "caps": {"max_claims_per_member": 1}}  # fmt: skip
        r = httpx.put(f"{base}/v1/admin/offers/{OFFER_ID}", json=offer, headers=admin, timeout=10.0)
        r.raise_for_status()
        before = read_metrics(base)
        out = asyncio.run(race(base, "dev-storefront-key", args.members, args.concurrency))
        after = read_metrics(base)
        server = buckets(delta(before, after), "benefits_claim_seconds")
        out["server_claim_ms"] = {
            q: round(v * 1000.0, 2) if (v := histogram_quantile(p, server)) is not None else None
            for q, p in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))
        }
        out["money"] = asyncio.run(money_state(settings))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--members", type=int, default=20_000)
    ap.add_argument("--units", type=int, default=1_000)
    ap.add_argument("--concurrency", type=int, default=200)
    args = ap.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="benefits-claims-") as tmp:
        out = run(Path(tmp), args)
    load_after = os.getloadavg()
    accepted = out["statuses"].get("202", 0)
    m = out["money"]
    out["exact"] = (
        accepted == args.units == m["units_reserved"]
        and m["budget_used"] == COST * args.units
        and m["max_claims_per_member"] == 1
    )
    summary = {
        "benchmark": "claims-flash",
        "members": args.members,
        "units": args.units,
        "budget": COST * args.units,
        "concurrency": args.concurrency,
        **out,
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in load_after],
        "machine": machine_info(),
        "command": f"python -m benchmarks.claims --members {args.members} --units {args.units} "
        f"--concurrency {args.concurrency}",
    }
    write_result("claims-flash", summary)
    if not out["exact"]:
        raise SystemExit("claim counts are not exact")


if __name__ == "__main__":
    main()
