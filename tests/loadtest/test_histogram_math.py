"""The server-side percentile math of the load test: histogram deltas, sums over replicas, quantiles."""

from __future__ import annotations

import math

import numpy as np
import pytest

from benchmarks.loadtest import Options, exit_code, judge
from harness.scrape import (
    STAGE_METRIC,
    add_scrapes,
    buckets,
    delta,
    parse_metrics,
    server_stages,
    server_view,
)
from harness.timeline import Timeline, recovery_seconds
from service.metrics import Metrics
from service.quantiles import histogram_quantile

INF = math.inf


@pytest.mark.parametrize(
    ("q", "cumulative", "expected"),
    [
        # 100 observations, all in (1, 2]: the median is interpolated half-way into that bucket.
        (0.5, [(1.0, 0), (2.0, 100), (INF, 100)], 1.5),
        # first bucket's lower bound is 0
        (0.5, [(1.0, 10), (2.0, 10), (INF, 10)], 0.5),
        # the rank falls exactly on a bucket edge
        (0.5, [(1.0, 50), (2.0, 100), (INF, 100)], 1.0),
        (0.99, [(1.0, 50), (2.0, 100), (INF, 100)], 1.98),
        # in the +Inf bucket: the highest finite bound (a lower limit)
        (0.99, [(1.0, 50), (2.0, 90), (INF, 100)], 2.0),
        # empty
        (0.5, [(1.0, 0), (INF, 0)], None),
        (0.5, [], None),
    ],
)
def test_histogram_quantile(q: float, cumulative: list[tuple[float, float]], expected: float | None) -> None:
    got = histogram_quantile(q, cumulative)
    if expected is None:
        assert got is None
    else:
        assert got == pytest.approx(expected)


def _render(values_ms: dict[str, list[float]]) -> str:
    m = Metrics()
    for stage, vs in values_ms.items():
        for v in vs:
            m.observe_stage(stage, v)
    return m.render().decode()


def test_delta_of_real_exposition_matches_numpy_within_a_bucket() -> None:
    rng = np.random.default_rng(3)
    first = rng.lognormal(0.0, 0.3, 2000).tolist()  # around 1 ms
    later = rng.lognormal(1.5, 0.3, 3000).tolist()  # around 4.5 ms
    before = parse_metrics(_render({"total": first}))
    after = parse_metrics(_render({"total": first + later}))
    d = delta(before, after)
    b = buckets(d, STAGE_METRIC, stage="total")
    assert b[-1] == (INF, 3000.0)
    stats = server_stages(d)["total"]
    assert stats["count"] == 3000
    # Only the later observations are in the delta: compare with their exact percentiles; the
    # interpolated answer lies in the same bucket (bounds 3, 5, 7.5 ms around these values).
    bounds = [0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 7.5, 10, 25]
    for name, q in (("p50_ms", 50), ("p99_ms", 99)):
        exact = float(np.percentile(later, q))
        lo = max([x for x in bounds if x < exact], default=0.0)
        hi = min(x for x in bounds if x >= exact)
        got = stats[name]
        assert got is not None and lo <= got <= hi, (name, exact, got)
    assert stats["mean_ms"] == pytest.approx(float(np.mean(later)), abs=1e-3)
    assert server_stages(d)["model"]["count"] == 0


def test_replicas_add_up() -> None:
    a = parse_metrics(_render({"total": [0.2] * 10}))
    b = parse_metrics(_render({"total": [8.0] * 30}))
    both = add_scrapes([a, b])
    stats = server_stages(both)["total"]
    assert stats["count"] == 40
    # 25 % of observations at 0.2 ms, 75 % at 8 ms: the median is in the (7.5, 10] ms bucket
    p50, p99 = stats["p50_ms"], stats["p99_ms"]
    assert p50 is not None and p99 is not None
    assert 7.5 <= p50 <= 10.0
    assert p99 <= 10.0


def _timeline() -> Timeline:
    phases = [
        {"name": "before", "start_s": 0.0, "end_s": 10.0, "rps_from": 10.0, "rps_to": 10.0},
        {"name": "spike_ramp", "start_s": 10.0, "end_s": 12.0, "rps_from": 10.0, "rps_to": 100.0},
        {"name": "spike", "start_s": 12.0, "end_s": 20.0, "rps_from": 100.0, "rps_to": 100.0},
        {"name": "after", "start_s": 20.0, "end_s": 30.0, "rps_from": 10.0, "rps_to": 10.0},
    ]
    lat = {s: [1.0] * 10 for s in range(30)}
    for s in range(20, 23):
        lat[s] = [1.0] * 8 + [50.0, 60.0]  # slow for three seconds after the spike
    return Timeline(0.0, phases, {"recommend": lat}, {"recommend": {}}, {})


def test_offered_integrates_the_ramp() -> None:
    tl = _timeline()
    assert tl.offered(0, 10) == pytest.approx(100.0)
    assert tl.offered(10, 12) == pytest.approx(110.0)  # linear 10 -> 100 over 2 s
    assert tl.offered(0, 30) == pytest.approx(100 + 110 + 800 + 100)


def test_recovery_seconds() -> None:
    tl = _timeline()
    assert recovery_seconds(tl, 20.0, 30.0, limit_ms=10.0) == pytest.approx(3.0)
    assert recovery_seconds(tl, 20.0, 30.0, limit_ms=100.0) == 0.0


def _summary(p99: float | None, errors: float, share: float) -> dict[str, object]:
    block = {
        "client": {"recommend": {"p99_ms": p99}},
        "server": {"stages": {"total": {"p99_ms": 1.0}}},
        "error_rate": errors,
        "achieved_share": share,
    }
    return {"shape": "steady", "overall": block, "phases": {}}


@pytest.mark.parametrize(
    ("p99", "errors", "share", "code"),
    [
        (5.0, 0.0, 1.0, 0),
        (12.0, 0.0, 1.0, 1),  # too slow
        (5.0, 0.001, 1.0, 1),  # errors
        (5.0, 0.0, 0.5, 1),  # the load was never offered
        (None, 0.0, 1.0, 1),  # no successful request at all
    ],
)
def test_budget_and_exit_code(p99: float | None, errors: float, share: float, code: int) -> None:
    s = _summary(p99, errors, share)
    s["budget"] = judge(s, Options(p99_ms=10.0, max_error_rate=0.0))
    assert exit_code(s) == code


def test_degraded_share_is_judged_only_when_asked() -> None:
    s = _summary(5.0, 0.0, 1.0)
    s["overall"]["server"]["degraded_share"] = 0.07  # type: ignore[index]
    s["budget"] = judge(s, Options(p99_ms=10.0))
    assert exit_code(s) == 0
    s["budget"] = judge(s, Options(p99_ms=10.0, max_degraded_rate=0.01))
    assert exit_code(s) == 1


def test_server_view_counts_degraded_answers() -> None:
    m = Metrics()
    for _ in range(8):
        m.observe_stage("total", 1.0)
    m.degraded.labels(cause="state_timeout").inc(2)
    view = server_view(parse_metrics(m.render().decode()))
    assert view["degraded_answers"] == 2 and view["degraded_share"] == 0.25


def test_budget_on_server_view() -> None:
    s = _summary(40.0, 0.0, 1.0)
    s["budget"] = judge(s, Options(p99_ms=10.0, budget_on="server"))
    assert exit_code(s) == 0
    # A saturated server: its own p99 is fine, its callers wait (queueing it cannot see).
    s = _summary(400.0, 0.0, 1.0)
    s["budget"] = judge(s, Options(p99_ms=10.0, budget_on="server", client_guard_ms=50.0))
    assert exit_code(s) == 1
