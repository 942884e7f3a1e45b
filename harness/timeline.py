"""A load run's timeline and its figures: what the load generator saw per second (latencies, failures,
the shape's phases, written by ``benchmarks/locustfile.py``), client-side percentiles per window, and the
server's figures from ``/metrics`` scrapes (:mod:`harness.scrape`) over the same windows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from harness.scrape import Scrape, Scraper, delta, server_view


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


def window_figures(tl: Timeline, scraper: Scraper | None, a: float, b: float) -> dict[str, Any]:
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
    if "claim" in tl.latencies_ms or "claim" in tl.failures:  # a flash sale with claims
        cl, cl_fail = tl.window("claim", a, b)
        out["client"]["claim"] = client_stats(cl, cl_fail, secs)
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
    shape: str,
    recover_s: float,
    p99_ms: float,
) -> dict[str, Any]:
    """Client figures of the whole run and of each phase (the flash sale's ramp counts as spike), with
    the server's figures from the scrapes nearest each window; for a flash sale, the seconds until every
    second's client p99 is within ``p99_ms`` again."""
    dur = tl.duration_s
    overall = window_figures(tl, None, 0.0, dur + 1.0)  # +1: requests still in flight at the last tick
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
        phases[name] = window_figures(tl, scraper, a, b)
    summary: dict[str, Any] = {"shape": shape, "duration_s": dur, "overall": overall, "phases": phases}
    if shape == "flash":
        spike_end = merged["spike"][1]
        phases["after_settled"] = window_figures(tl, scraper, spike_end + recover_s, dur)
        summary["recovery_s"] = {
            "client_p99_within_budget_after_s": recovery_seconds(tl, spike_end, dur, p99_ms),
            "limit_s": recover_s,
        }
    summary["errors"] = tl.errors
    return summary
