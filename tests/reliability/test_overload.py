"""Overload: at three times the measured capacity the API sheds load at once (recommend gets the cached
degraded slate, a 200 flagged "overloaded"; other routes a fast 503) instead of queueing: no timeouts,
no 5xx for a page view. Latency figures are reported by ``benefits reliability``, not gated here.

The in-flight limit is set low (8) for this test: the behaviour under test is what happens past the
limit, and on a two-core box shared with the load generator the generator cannot always offer enough
load to pass the default limit of 32 (the generator, not the server, then sets the pace and nothing is
shed, which says nothing about shedding)."""

from __future__ import annotations

import pytest

from harness import reliability as rel

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_three_times_capacity_is_shed_not_queued() -> None:
    o = rel.overload(capacity_s=3.0, overload_s=5.0, max_in_flight=8)
    n = o.numbers
    behaviour = {name: ok for name, ok in o.checks.items() if name not in o.timing}
    failed = [name for name, ok in behaviour.items() if not ok]
    assert not failed, f"failed: {failed}; numbers: {n}"
    assert n["shed_degraded_200"] > 0, n
