"""Overload: at three times the measured capacity the API sheds with fast 503s and keeps the latency of
what it accepts bounded (no unbounded queueing, no timeouts)."""

from __future__ import annotations

import pytest

from benefits import reliability as rel

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_three_times_capacity_is_shed_not_queued() -> None:
    o = rel.overload(capacity_s=3.0, overload_s=5.0)
    n = o.numbers
    assert o.checks["API alive and answering after the overload"], n
    assert o.checks["no 5xx other than fast 503 shedding"], n
    assert o.checks["every request answered (no timeouts or resets)"], n
    assert n["shed_503"] > 0, n
    # Generous for a shared 2-core box where the load generator runs beside the API and other work
    # (client-side p99 measured 0.25-1.5 s between runs); with the old default of 256 in flight it was
    # 4-5 s with client timeouts. The server's own histogram is the steadier figure.
    assert n["accepted_p99_ms"] is not None and n["accepted_p99_ms"] < 2000, n
    assert n["server_total_p99_ms_bucket"] is not None and n["server_total_p99_ms_bucket"] <= 250, n
