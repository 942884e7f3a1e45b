"""Capacity search for ``benefits loadtest --capacity``: the highest offered rate within budget per
configuration (catalogue size x API processes), each step a fresh steady Locust run."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from benchmarks.loadtest import (
    CAPACITY_FLOOR_RPS,
    MIN_ACHIEVED_SHARE,
    Options,
    Stack,
    run_locust,
    start_apis,
    warm_up,
)

log = logging.getLogger(__name__)


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


def capacity_search(stack: Stack, opts: Options, api_key: str, workdir: Path) -> dict[str, Any]:
    """Every configuration of ``opts.capacity_offers`` x ``opts.capacity_workers``, each searched with
    :func:`find_capacity` on freshly started API processes."""
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
