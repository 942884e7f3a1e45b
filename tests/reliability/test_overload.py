"""Overload: at three times the measured capacity the API sheds load at once (recommend gets the cached
degraded slate, a 200 flagged "overloaded"; other routes a fast 503) instead of queueing: no timeouts,
no 5xx for a page view. Latency figures are reported by ``benefits reliability``, not gated here."""

from __future__ import annotations

import pytest

from harness import reliability as rel

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_three_times_capacity_is_shed_not_queued() -> None:
    o = rel.overload(capacity_s=3.0, overload_s=5.0)
    n = o.numbers
    assert o.checks["API alive and answering after the overload"], n
    assert o.checks["no 5xx other than fast 503 shedding"], n
    assert o.checks["every request answered (no timeouts or resets)"], n
    assert o.checks["load was shed (degraded 200 or fast 503) rather than queued"], n
    assert o.checks["no recommend request refused with a 5xx: shed answers are degraded 200s"], n
    assert n["shed_degraded_200"] > 0, n
